// libFuzzer target: Ethernet frames from the guest (what virtio-net transmits) into libslirp,
// with its timers and sockets polled between them: ARP, IPv4 with any options, TCP, UDP, ICMP,
// DHCP, DNS, fragments, the host-loopback filter. The process first moves into a network
// namespace of its own, so the guest's connections go nowhere (needs root or user namespaces).
#include <fuzzer/FuzzedDataProvider.h>
#include <poll.h>
#include <sched.h>

#include <cstdio>
#include <cstdlib>
#include <vector>

#include "backends/net/slirp_backend.h"

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  if (::unshare(CLONE_NEWNET) != 0 && ::unshare(CLONE_NEWUSER | CLONE_NEWNET) != 0) {
    std::perror("fuzz_slirp_frames: a network namespace of its own is required");
    std::exit(1);
  }
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  FuzzedDataProvider in(data, size);
  keel::SlirpBackend slirp({}, in.ConsumeBool());
  slirp.set_receiver([](std::span<const uint8_t>) {});
  std::vector<pollfd> fds;
  for (int i = 0; i < 64 && in.remaining_bytes() > 0; ++i) {
    std::vector<uint8_t> frame = in.ConsumeBytes<uint8_t>(in.ConsumeIntegralInRange<size_t>(0, 1600));
    slirp.send(frame);
    fds.clear();
    int timeout = 0;
    slirp.fill_pollfds(fds, timeout, true);
    ::poll(fds.data(), fds.size(), 0);
    slirp.dispatch(fds, 0);
  }
  return 0;
}
