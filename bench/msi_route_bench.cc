// Row "MSI-X interrupt from a device thread": what raising one MSI-X vector costs the thread that
// raises it. keel: MsixTable::notify() on a vector whose route is an irqfd (an eventfd write; KVM
// injects in the writer's context). Baseline: a KVM_SIGNAL_MSI ioctl with the same message, the
// path devices took before irqfds. Both target a vCPU that exists but does not run (the interrupt
// stays in its IRR), measured in thread CPU time.
#include <sys/ioctl.h>

#include <ctime>
#include <cstring>

#include "base/error.h"
#include "bench.h"
#include "devices/pci/msix.h"
#include "engine/kvm/kvm_engine.h"
#include "engine/kvm/kvm_probe.h"
#include "engine/kvm/kvm_uapi.h"

namespace keel::bench {
namespace {

constexpr int kInterrupts = 20000;
constexpr MsiMessage kMessage{0xFEE0'0000, 0x41};

double thread_seconds() {
  timespec ts{};
  ::clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return double(ts.tv_sec) + double(ts.tv_nsec) * 1e-9;
}

void write32(MsixTable& table, uint32_t reg, uint32_t value) {
  uint8_t bytes[4];
  std::memcpy(bytes, &value, 4);
  table.table_write(reg, bytes);
}

Sample sample() {
  GuestMemory memory(16 << 20);
  IoBus pio("pio"), mmio("mmio");
  KvmEngine engine({memory, pio, mmio}, {.vcpus = 1});
  auto vcpu = engine.create_vcpu(0);

  MsixTable table(1, &engine.interrupts());
  table.set_control(MsixTable::kControlEnable);
  write32(table, 0, static_cast<uint32_t>(kMessage.address));
  write32(table, 8, kMessage.data);
  write32(table, 12, 0);

  Sample s;
  double start = thread_seconds();
  for (int i = 0; i < kInterrupts; ++i) table.notify(0);
  s.keel = (thread_seconds() - start) * 1e6 / kInterrupts;

  kvm_msi msi{};
  msi.address_lo = static_cast<uint32_t>(kMessage.address);
  msi.data = kMessage.data;
  start = thread_seconds();
  for (int i = 0; i < kInterrupts; ++i)
    if (::ioctl(engine.vm_fd(), KVM_SIGNAL_MSI, &msi) < 0) throw_errno("KVM_SIGNAL_MSI");
  s.baseline = (thread_seconds() - start) * 1e6 / kInterrupts;
  return s;
}

KEEL_BENCH_ROW(Row{
    .name = "MSI-X interrupt from a device thread",
    .unit = "us CPU/interrupt",
    .baseline = "KVM_SIGNAL_MSI ioctl",
    .sample = sample,
    .unavailable =
        []() -> std::optional<std::string> {
          auto probe = probe_kvm();
          if (!probe.can_run_guests()) return probe.reason();
          return std::nullopt;
        },
});

}  // namespace
}  // namespace keel::bench
