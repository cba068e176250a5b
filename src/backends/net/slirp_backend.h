// SlirpBackend: user-mode networking through libslirp, as QEMU's `-netdev user`: the guest is
// 10.0.2.15 (DHCP), the host is reachable as 10.0.2.2, DNS at 10.0.2.3; outbound TCP/UDP become
// ordinary host sockets, and host forwards (hostfwd) listen on host ports for the guest.
#pragma once

#include <netinet/in.h>

#include <cstdint>
#include <string>
#include <vector>

#include "backends/net/net_backend.h"

struct Slirp;

namespace keel {

struct HostForward {
  bool udp = false;
  in_addr host_addr{};  // INADDR_ANY unless given
  uint16_t host_port = 0;
  uint16_t guest_port = 0;
};

// Parses QEMU's hostfwd syntax: "tcp:HOSTPORT-:GUESTPORT", "tcp::HOSTPORT-:GUESTPORT",
// "tcp:HOSTADDR:HOSTPORT-:GUESTPORT", "udp:..."; the guest address, if given, must be 10.0.2.15.
// Throws UsageError naming the bad part.
HostForward parse_host_forward(const std::string& spec);

class SlirpBackend : public NetBackend {
 public:
  static constexpr const char* kGuestAddress = "10.0.2.15";

  // Throws Error when a forward cannot be set up (port in use), naming it.
  explicit SlirpBackend(const std::vector<HostForward>& forwards = {});
  ~SlirpBackend() override;
  SlirpBackend(const SlirpBackend&) = delete;
  SlirpBackend& operator=(const SlirpBackend&) = delete;

  std::string name() const override { return "user"; }
  void send(std::span<const uint8_t> frame) override;
  void fill_pollfds(std::vector<pollfd>& fds, int& timeout_ms, bool can_receive) override;
  void dispatch(const std::vector<pollfd>& fds, size_t first) override;

  // libslirp callbacks (C linkage trampolines call these).
  struct Timer {
    int id;
    void* cb_opaque;
    int64_t expire_ms;  // -1: not armed
  };
  void on_packet(const void* buf, size_t len);
  Timer* new_timer(int id, void* cb_opaque);
  void free_timer(Timer* t);
  std::vector<pollfd>* poll_fds_ = nullptr;  // valid during fill/dispatch

 private:
  void run_timers();

  Slirp* slirp_ = nullptr;
  std::vector<Timer*> timers_;
};

}  // namespace keel
