#include "backends/net/tap_backend.h"

#include <fcntl.h>
#include <linux/if.h>
#include <linux/if_tun.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include <cstring>

#include "base/error.h"
#include "base/log.h"

namespace keel {

TapBackend::TapBackend(const std::string& ifname) : ifname_(ifname) {
  if (ifname.empty() || ifname.size() >= IFNAMSIZ)
    throw UsageError("tap interface name '" + ifname + "' is empty or too long");
  fd_.reset(::open("/dev/net/tun", O_RDWR | O_NONBLOCK | O_CLOEXEC));
  if (!fd_) throw_errno("tap " + ifname + ": open /dev/net/tun");
  ifreq ifr{};
  ifr.ifr_flags = IFF_TAP | IFF_NO_PI;
  std::strncpy(ifr.ifr_name, ifname.c_str(), IFNAMSIZ - 1);
  if (::ioctl(fd_.get(), TUNSETIFF, &ifr) != 0)
    throw_errno("tap " + ifname + ": TUNSETIFF (needs root or CAP_NET_ADMIN)");
}

void TapBackend::send(std::span<const uint8_t> frame) {
  // A full tap queue drops the frame, as a real NIC would; TCP recovers.
  if (::write(fd_.get(), frame.data(), frame.size()) < 0 && errno != EAGAIN)
    log::debug("tap {}: write: {}", ifname_, std::strerror(errno));
}

void TapBackend::fill_pollfds(std::vector<pollfd>& fds, int&, bool can_receive) {
  watched_ = can_receive;
  if (can_receive) fds.push_back({fd_.get(), POLLIN, 0});
}

void TapBackend::dispatch(const std::vector<pollfd>& fds, size_t first) {
  if (!watched_ || first >= fds.size() || !(fds[first].revents & POLLIN)) return;
  uint8_t frame[65536];
  for (int i = 0; i < 64; ++i) {  // bounded, so the guest's transmit side gets its turn
    ssize_t n = ::read(fd_.get(), frame, sizeof frame);
    if (n <= 0) break;
    deliver({frame, static_cast<size_t>(n)});
  }
}

sandbox::AllowList TapBackend::syscalls() {
  return {{"read"}, {"readv"}, {"write"}, {"writev"}};
}

}  // namespace keel
