// CPU-bound work in guest user space: busybox md5sum and gzip over 8 MiB (four copies of the
// busybox binary) and a 100000-iteration shell loop, typed at the default guest's shell on keel
// and on QEMU (tcg where keel runs emu), timed from the guest printing its start marker to its
// end marker. Both sides must print the same checksums.
#include <regex>
#include <stdexcept>

#include "bench.h"
#include "guest_vm.h"

namespace keel::bench {
namespace {

struct Run {
  double seconds;
  std::string output;
};

Run workload(bool qemu) {
  Vm vm(vm_command(qemu, {}));
  vm.wait_for(std::regex("KEEL-GUEST-READY"), kBoot);
  // $((1+1)) keeps the markers out of the echoed command line.
  vm.type("dmesg -n 1; cat /bin/busybox /bin/busybox /bin/busybox /bin/busybox > /tmp/w; "
          "echo WORK-$((1+1))-START\n");
  vm.wait_for(std::regex("WORK-2-START"), kBoot);
  double t0 = vm.elapsed();
  vm.type("md5sum /tmp/w; gzip -c /tmp/w | md5sum; i=0; while [ $i -lt 100000 ]; do "
          "i=$((i+1)); done; echo WORK-$((1+1))-END $i\n");
  auto m = vm.wait_for(std::regex("WORK-2-END 100000"), kBoot);
  double secs = vm.elapsed() - t0;
  vm.type("exit\n");
  // The checksums (two 32-digit lines) are what both sides must agree on.
  std::string sums;
  std::smatch s;
  std::string text = m.prefix;
  std::regex md5("[0-9a-f]{32}");
  for (auto it = std::sregex_iterator(text.begin(), text.end(), md5); it != std::sregex_iterator(); ++it)
    sums += it->str() + " ";
  return {secs, sums};
}

KEEL_BENCH_ROW(Row{
    .name = "guest user-space work: md5sum + gzip 8 MiB + shell loop",
    .unit = "s",
    .baseline = "QEMU (tcg on this host), same guest and commands",
    .sample =
        [] {
          Run k = workload(false);
          Run q = workload(true);
          if (k.output != q.output)
            throw std::runtime_error("checksums differ: keel '" + k.output + "', QEMU '" +
                                     q.output + "'");
          return Sample{k.seconds, q.seconds};
        },
    .unavailable = guest_unavailable,
});

}  // namespace
}  // namespace keel::bench
