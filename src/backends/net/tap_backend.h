// TapBackend: a Linux tap device (/dev/net/tun, IFF_TAP | IFF_NO_PI). The interface is created if
// it does not exist (root or CAP_NET_ADMIN); configuring it on the host is the user's business.
#pragma once

#include "sandbox/syscalls.h"

#include <string>

#include "backends/net/net_backend.h"
#include "base/fd.h"

namespace keel {

class TapBackend : public NetBackend {
 public:
  // Throws Error naming the interface when it cannot be opened.
  explicit TapBackend(const std::string& ifname);
  // The system calls of the tap fd's use on the network thread (seccomp).
  static sandbox::AllowList syscalls();

  std::string name() const override { return "tap:" + ifname_; }
  const std::string& ifname() const { return ifname_; }
  void send(std::span<const uint8_t> frame) override;
  void fill_pollfds(std::vector<pollfd>& fds, int& timeout_ms, bool can_receive) override;
  void dispatch(const std::vector<pollfd>& fds, size_t first) override;

 private:
  std::string ifname_;
  UniqueFd fd_;
  bool watched_ = false;
};

}  // namespace keel
