// NetBackend: where a virtio-net device's Ethernet frames go on the host (libslirp user
// networking, a tap device, a test).
//
// A backend is driven by its device's network thread only (never concurrently): before each
// poll() the thread asks the backend which fds to watch and how long it may sleep; after poll() it
// hands the results back; frames for the guest come out through the receiver callback, on that
// same thread (possibly from inside send(), as slirp answers ARP and DHCP at once).
#pragma once

#include "sandbox/syscalls.h"

#include <poll.h>

#include <cstdint>
#include <functional>
#include <span>
#include <string>
#include <vector>

namespace keel {

class NetBackend {
 public:
  using Receiver = std::function<void(std::span<const uint8_t> frame)>;

  virtual ~NetBackend() = default;
  virtual std::string name() const = 0;

  // Set once by the device before polling starts.
  void set_receiver(Receiver receiver) { receiver_ = std::move(receiver); }

  // One frame from the guest (without the virtio-net header).
  virtual void send(std::span<const uint8_t> frame) = 0;

  // Appends this backend's fds to `fds` and lowers `timeout_ms` (-1: infinite) to when it next
  // needs attention. `can_receive` false: the guest has no room, do not read frames now.
  virtual void fill_pollfds(std::vector<pollfd>& fds, int& timeout_ms, bool can_receive) = 0;
  // After poll(): fds[first..] are the entries fill_pollfds() appended.
  virtual void dispatch(const std::vector<pollfd>& fds, size_t first) = 0;

 protected:
  void deliver(std::span<const uint8_t> frame) {
    if (receiver_) receiver_(frame);
  }

 private:
  Receiver receiver_;
};

}  // namespace keel
