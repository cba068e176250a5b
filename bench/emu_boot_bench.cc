// Boot to init of the default guest: keel against QEMU with the same kernel, initramfs and
// command line (`qemu-system-x86_64 -accel tcg` where keel runs emu, kvm/kvm where this host's KVM
// runs a stock kernel), from process start to the init script's marker on the serial console.
// Two rows: with mitigations=off on both, and with the command line a distribution would use
// (no mitigations=off: each kernel then decides from what its CPU model reports).
#include <regex>

#include "bench.h"
#include "guest_vm.h"

namespace keel::bench {
namespace {

double seconds_to_init(bool qemu, bool mitigations_off) {
  Vm vm(vm_command(qemu, {}, bench_cmdline(mitigations_off)));
  vm.wait_for(std::regex("KEEL-GUEST-READY"), std::chrono::seconds(600));
  return vm.elapsed();
}

Sample boot_sample(bool mitigations_off) {
  Sample s;
  s.keel = seconds_to_init(false, mitigations_off);
  s.baseline = seconds_to_init(true, mitigations_off);
  return s;
}

KEEL_BENCH_ROW(Row{
    .name = "boot to init, default guest, mitigations=off",
    .unit = "s",
    .baseline = "QEMU (tcg on this host), same kernel/initramfs/cmdline",
    .sample = [] { return boot_sample(true); },
    .unavailable = guest_unavailable,
});

KEEL_BENCH_ROW(Row{
    .name = "boot to init, default guest, distribution cmdline",
    .unit = "s",
    .baseline = "QEMU (tcg on this host), same kernel/initramfs/cmdline",
    .sample = [] { return boot_sample(false); },
    .unavailable = guest_unavailable,
});

}  // namespace
}  // namespace keel::bench
