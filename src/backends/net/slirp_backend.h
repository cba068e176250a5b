// SlirpBackend: user-mode networking through libslirp, as QEMU's `-netdev user`: the guest is
// 10.0.2.15 (DHCP), the gateway 10.0.2.2, DNS at 10.0.2.3; outbound TCP/UDP become ordinary host
// sockets, and host forwards (hostfwd) listen on host ports for the guest.
//
// The host's loopback is not the guest's to reach: services bound to 127.0.0.1 trust that only
// local users connect. Unless `host_loopback` is set, libslirp's mapping of 10.0.2.2 to the host's
// 127.0.0.1 is off, and frames the guest addresses to 127.0.0.0/8 itself are dropped. hostfwd
// listens on 127.0.0.1 unless the rule names an address (tcp:0.0.0.0:8080-:80 for every one).
#pragma once

#include <netinet/in.h>

#include <atomic>
#include <cstdint>
#include <string>
#include <vector>

#include "backends/net/net_backend.h"

struct Slirp;

namespace keel {

struct HostForward {
  bool udp = false;
  in_addr host_addr{};  // INADDR_LOOPBACK unless given
  uint16_t host_port = 0;
  uint16_t guest_port = 0;
};

// Parses QEMU's hostfwd syntax: "tcp:HOSTPORT-:GUESTPORT", "tcp::HOSTPORT-:GUESTPORT",
// "tcp:HOSTADDR:HOSTPORT-:GUESTPORT", "udp:..."; the guest address, if given, must be 10.0.2.15.
// Without a host address the forward listens on 127.0.0.1 (QEMU's listens on every interface).
// Throws UsageError naming the bad part.
HostForward parse_host_forward(const std::string& spec);

class SlirpBackend : public NetBackend {
 public:
  static constexpr const char* kGuestAddress = "10.0.2.15";

  // Throws Error when a forward cannot be set up (port in use), naming it.
  explicit SlirpBackend(const std::vector<HostForward>& forwards = {}, bool host_loopback = false);
  ~SlirpBackend() override;
  SlirpBackend(const SlirpBackend&) = delete;
  SlirpBackend& operator=(const SlirpBackend&) = delete;

  std::string name() const override { return "user"; }
  // What libslirp does on the network thread (seccomp): host sockets for the guest's
  // connections, IPv4 and IPv6 only, and reading the host's resolver list for DNS.
  static sandbox::AllowList syscalls();
  void send(std::span<const uint8_t> frame) override;
  // Frames to the host's loopback dropped so far (host_loopback off).
  uint64_t loopback_dropped() const { return loopback_dropped_; }
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
  bool host_loopback_;
  std::atomic<uint64_t> loopback_dropped_{0};
};

}  // namespace keel
