// Several vCPUs: how guest work scales across them, and what they cost the boot. The job is a
// busybox shell loop (CPU-bound, no I/O) in the default guest; keel emu against QEMU's
// multi-threaded TCG (-accel tcg,thread=multi) with the same guest, command line and vCPU count.
#include <regex>
#include <stdexcept>

#include "bench.h"
#include "guest_vm.h"

namespace keel::bench {
namespace {

// Seconds for `jobs` copies of the loop started together, on a guest with `cpus` vCPUs.
double jobs_seconds(Vm& vm, int jobs) {
  std::string line = "echo JOBS-$((1+1))-START; ";
  for (int i = 0; i < jobs; ++i)
    line += "(j=0; while [ $j -lt 150000 ]; do j=$((j+1)); done) & ";
  line += "wait; echo JOBS-$((1+1))-END\n";
  vm.type(line);
  vm.wait_for(std::regex("JOBS-2-START"), kBoot);
  double t0 = vm.elapsed();
  vm.wait_for(std::regex("JOBS-2-END"), kBoot);
  return vm.elapsed() - t0;
}

// Two jobs at once divided by one job alone, on 2 vCPUs: 1.0 is perfect scaling, 2.0 none.
double scaling(bool qemu) {
  Vm vm(vm_command(qemu, {}, bench_cmdline(), 2));
  vm.wait_for(std::regex("KEEL-GUEST-READY"), kBoot);
  double one = jobs_seconds(vm, 1);
  double two = jobs_seconds(vm, 2);
  vm.type("exit\n");
  return two / one;
}

double seconds_to_init(bool qemu, unsigned cpus) {
  Vm vm(vm_command(qemu, {}, bench_cmdline(), cpus));
  vm.wait_for(std::regex("KEEL-GUEST-READY"), std::chrono::seconds(600));
  return vm.elapsed();
}

KEEL_BENCH_ROW(Row{
    .name = "parallel work: two jobs at once / one job, 2 vCPUs (1.0 = perfect)",
    .unit = "x",
    .baseline = "QEMU -accel tcg,thread=multi -smp 2, same guest and jobs",
    .sample = [] { return Sample{scaling(false), scaling(true)}; },
    .unavailable = guest_unavailable,
});

KEEL_BENCH_ROW(Row{
    .name = "boot to init, 4 vCPUs",
    .unit = "s",
    .baseline = "QEMU -accel tcg,thread=multi -smp 4, same kernel/initramfs/cmdline",
    .sample = [] { return Sample{seconds_to_init(false, 4), seconds_to_init(true, 4)}; },
    .unavailable = guest_unavailable,
});

KEEL_BENCH_ROW(Row{
    .name = "boot to init, keel 4 vCPUs vs 1 vCPU",
    .unit = "s",
    .baseline = "keel with 1 vCPU, same guest",
    .sample = [] { return Sample{seconds_to_init(false, 4), seconds_to_init(false, 1)}; },
    .unavailable = guest_unavailable,
});

}  // namespace
}  // namespace keel::bench
