#include "backends/net/slirp_backend.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <sys/ioctl.h>
#include <slirp/libslirp.h>

#include <algorithm>
#include <climits>
#include <ctime>

#include "base/error.h"
#include "base/log.h"

namespace keel {

namespace {

int64_t now_ns() {
  timespec ts;
  ::clock_gettime(CLOCK_MONOTONIC, &ts);
  return int64_t{ts.tv_sec} * 1'000'000'000 + ts.tv_nsec;
}

SlirpBackend* self(void* opaque) { return static_cast<SlirpBackend*>(opaque); }

ssize_t send_packet_cb(const void* buf, size_t len, void* opaque) {
  self(opaque)->on_packet(buf, len);
  return static_cast<ssize_t>(len);
}
void guest_error_cb(const char* msg, void*) { log::warn("slirp: guest error: {}", msg); }
int64_t clock_get_ns_cb(void*) { return now_ns(); }
void* timer_new_opaque_cb(SlirpTimerId id, void* cb_opaque, void* opaque) {
  return self(opaque)->new_timer(static_cast<int>(id), cb_opaque);
}
void timer_free_cb(void* timer, void* opaque) {
  self(opaque)->free_timer(static_cast<SlirpBackend::Timer*>(timer));
}
void timer_mod_cb(void* timer, int64_t expire_ms, void*) {
  static_cast<SlirpBackend::Timer*>(timer)->expire_ms = expire_ms;
}
void register_poll_fd_cb(int, void*) {}
void unregister_poll_fd_cb(int, void*) {}
void notify_cb(void*) {}  // fds are re-collected before every poll anyway

short to_poll(int slirp_events) {
  short e = 0;
  if (slirp_events & SLIRP_POLL_IN) e |= POLLIN;
  if (slirp_events & SLIRP_POLL_OUT) e |= POLLOUT;
  if (slirp_events & SLIRP_POLL_PRI) e |= POLLPRI;
  if (slirp_events & SLIRP_POLL_ERR) e |= POLLERR;
  if (slirp_events & SLIRP_POLL_HUP) e |= POLLHUP;
  return e;
}

int add_poll_cb(int fd, int events, void* opaque) {
  auto* fds = self(opaque)->poll_fds_;
  fds->push_back({fd, to_poll(events), 0});
  return static_cast<int>(fds->size() - 1);
}

int get_revents_cb(int idx, void* opaque) {
  auto* fds = self(opaque)->poll_fds_;
  if (idx < 0 || static_cast<size_t>(idx) >= fds->size()) return 0;
  short r = (*fds)[idx].revents;
  int e = 0;
  if (r & POLLIN) e |= SLIRP_POLL_IN;
  if (r & POLLOUT) e |= SLIRP_POLL_OUT;
  if (r & POLLPRI) e |= SLIRP_POLL_PRI;
  if (r & POLLERR) e |= SLIRP_POLL_ERR;
  if (r & POLLHUP) e |= SLIRP_POLL_HUP;
  return e;
}

const SlirpCb kCallbacks = {
    .send_packet = send_packet_cb,
    .guest_error = guest_error_cb,
    .clock_get_ns = clock_get_ns_cb,
    .timer_new = nullptr,
    .timer_free = timer_free_cb,
    .timer_mod = timer_mod_cb,
    .register_poll_fd = register_poll_fd_cb,
    .unregister_poll_fd = unregister_poll_fd_cb,
    .notify = notify_cb,
    .init_completed = nullptr,
    .timer_new_opaque = timer_new_opaque_cb,
};

in_addr addr(const char* text) {
  in_addr a{};
  ::inet_pton(AF_INET, text, &a);
  return a;
}

uint16_t parse_port(const std::string& text, const std::string& spec) {
  if (text.empty() || text.size() > 5 || !std::all_of(text.begin(), text.end(), ::isdigit))
    throw UsageError("hostfwd " + spec + ": bad port '" + text + "'");
  unsigned long v = std::stoul(text);
  if (v == 0 || v > 65535) throw UsageError("hostfwd " + spec + ": port out of range: " + text);
  return static_cast<uint16_t>(v);
}

}  // namespace

HostForward parse_host_forward(const std::string& spec) {
  HostForward fwd;
  auto colon = spec.find(':');
  auto dash = spec.find('-');
  if (colon == std::string::npos || dash == std::string::npos || dash < colon)
    throw UsageError("hostfwd " + spec + ": expected tcp:HOSTPORT-:GUESTPORT");
  std::string proto = spec.substr(0, colon);
  if (proto == "udp")
    fwd.udp = true;
  else if (proto != "tcp")
    throw UsageError("hostfwd " + spec + ": protocol must be tcp or udp");
  std::string host = spec.substr(colon + 1, dash - colon - 1);  // [ADDR]:PORT or PORT
  std::string guest = spec.substr(dash + 1);                     // [ADDR]:PORT
  fwd.host_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (auto c = host.rfind(':'); c != std::string::npos) {
    std::string a = host.substr(0, c);
    if (!a.empty() && ::inet_pton(AF_INET, a.c_str(), &fwd.host_addr) != 1)
      throw UsageError("hostfwd " + spec + ": bad host address '" + a + "'");
    host = host.substr(c + 1);
  }
  fwd.host_port = parse_port(host, spec);
  auto c = guest.rfind(':');
  if (c == std::string::npos) throw UsageError("hostfwd " + spec + ": expected -:GUESTPORT");
  std::string ga = guest.substr(0, c);
  if (!ga.empty() && ga != SlirpBackend::kGuestAddress)
    throw UsageError("hostfwd " + spec + ": the guest address is " + SlirpBackend::kGuestAddress);
  fwd.guest_port = parse_port(guest.substr(c + 1), spec);
  return fwd;
}

SlirpBackend::SlirpBackend(const std::vector<HostForward>& forwards, bool host_loopback)
    : host_loopback_(host_loopback) {
  SlirpConfig cfg{};
  cfg.version = 4;
  cfg.restricted = 0;
  cfg.disable_host_loopback = !host_loopback;  // 10.0.2.2 is not the host's 127.0.0.1
  cfg.in_enabled = true;
  cfg.vnetwork = addr("10.0.2.0");
  cfg.vnetmask = addr("255.255.255.0");
  cfg.vhost = addr("10.0.2.2");
  cfg.vdhcp_start = addr(kGuestAddress);
  cfg.vnameserver = addr("10.0.2.3");
  cfg.in6_enabled = false;
  cfg.vhostname = "keel";
  slirp_ = slirp_new(&cfg, &kCallbacks, this);
  if (!slirp_) throw Error("user networking: slirp_new failed");
  for (const auto& f : forwards) {
    if (slirp_add_hostfwd(slirp_, f.udp, f.host_addr, f.host_port, addr(kGuestAddress),
                          f.guest_port) < 0) {
      std::string what = std::string(f.udp ? "udp" : "tcp") + ":" + std::to_string(f.host_port) +
                         "-:" + std::to_string(f.guest_port);
      slirp_cleanup(slirp_);
      for (Timer* t : timers_) delete t;
      throw Error("hostfwd " + what + ": cannot listen on host port " +
                  std::to_string(f.host_port) + " (in use?)");
    }
  }
}

SlirpBackend::~SlirpBackend() {
  slirp_cleanup(slirp_);
  for (Timer* t : timers_) delete t;
}

void SlirpBackend::send(std::span<const uint8_t> frame) {
  // IPv4 to 127.0.0.0/8: libslirp would open a host socket to it as to any other address.
  constexpr size_t kEth = 14;
  if (!host_loopback_ && frame.size() >= kEth + 20 && frame[12] == 0x08 && frame[13] == 0x00 &&
      frame[kEth + 16] == 127) {
    if (loopback_dropped_++ == 0)
      log::warn("user network: dropped the guest's packets to the host's loopback {}.{}.{}.{} "
                "(host_loopback is off)",
                frame[kEth + 16], frame[kEth + 17], frame[kEth + 18], frame[kEth + 19]);
    return;
  }
  slirp_input(slirp_, frame.data(), static_cast<int>(frame.size()));
}

void SlirpBackend::on_packet(const void* buf, size_t len) {
  deliver({static_cast<const uint8_t*>(buf), len});
}

SlirpBackend::Timer* SlirpBackend::new_timer(int id, void* cb_opaque) {
  timers_.push_back(new Timer{id, cb_opaque, -1});
  return timers_.back();
}

void SlirpBackend::free_timer(Timer* t) {
  timers_.erase(std::remove(timers_.begin(), timers_.end(), t), timers_.end());
  delete t;
}

void SlirpBackend::run_timers() {
  int64_t now_ms = now_ns() / 1'000'000;
  // A timer callback may create or free timers: collect first.
  std::vector<std::pair<int, void*>> due;
  for (Timer* t : timers_)
    if (t->expire_ms >= 0 && t->expire_ms <= now_ms) {
      t->expire_ms = -1;
      due.emplace_back(t->id, t->cb_opaque);
    }
  for (auto& [id, opaque] : due) slirp_handle_timer(slirp_, static_cast<SlirpTimerId>(id), opaque);
}

void SlirpBackend::fill_pollfds(std::vector<pollfd>& fds, int& timeout_ms, bool) {
  // slirp queues what it receives for the guest itself; the device drops what does not fit and
  // TCP retransmits, so can_receive is not needed here.
  int64_t now_ms = now_ns() / 1'000'000;
  for (Timer* t : timers_)
    if (t->expire_ms >= 0) {
      int64_t wait = std::max<int64_t>(0, t->expire_ms - now_ms);
      if (timeout_ms < 0 || wait < timeout_ms) timeout_ms = static_cast<int>(std::min<int64_t>(wait, INT_MAX));
    }
  uint32_t t = timeout_ms < 0 ? UINT32_MAX : static_cast<uint32_t>(timeout_ms);
  poll_fds_ = &fds;
  slirp_pollfds_fill(slirp_, &t, add_poll_cb, this);
  poll_fds_ = nullptr;
  timeout_ms = t == UINT32_MAX ? -1 : static_cast<int>(std::min<uint32_t>(t, INT_MAX));
}

void SlirpBackend::dispatch(const std::vector<pollfd>& fds, size_t) {
  poll_fds_ = const_cast<std::vector<pollfd>*>(&fds);
  slirp_pollfds_poll(slirp_, 0, get_revents_cb, this);
  poll_fds_ = nullptr;
  run_timers();
}

sandbox::AllowList SlirpBackend::syscalls() {
  const uint64_t all = ~0ull;
  return {
      {"socket", {{0, all, AF_INET}}},
      {"socket", {{0, all, AF_INET6}}},
      {"connect"}, {"bind"}, {"listen"}, {"accept"}, {"accept4"},
      {"sendto"}, {"recvfrom"}, {"sendmsg"}, {"recvmsg"},
      {"setsockopt"}, {"getsockopt"}, {"getsockname"}, {"getpeername"}, {"shutdown"},
      {"fcntl"},
      {"ioctl", {{1, all, FIONREAD}}},
      {"ioctl", {{1, all, FIONBIO}}},
      {"read"}, {"write"},
      // and /etc/resolv.conf (read-only opens are the C library's: sandbox/seccomp.cc).
  };
}

}  // namespace keel
