// Row "MSI-X interrupt from a device thread": what raising one MSI-X vector costs the thread that
// raises it: MsixTable::notify() on a vector whose route is an irqfd (an eventfd write; KVM
// injects in the writer's context), against the same table with the route devices had before
// irqfds (SendMsiRoute: a KVM_SIGNAL_MSI ioctl). Both target a vCPU that exists but does not run
// (the vector stays set in its IRR), measured in thread CPU time.
#include <ctime>
#include <cstring>

#include "base/error.h"
#include "bench.h"
#include "devices/pci/msix.h"
#include "engine/kvm/kvm_engine.h"
#include "engine/kvm/kvm_probe.h"

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

// The engine's controller without its irqfd routes: MSI-X vectors get SendMsiRoutes.
class SignalMsiOnly : public InterruptController {
 public:
  explicit SignalMsiOnly(InterruptController& engine) : engine_(engine) {}
  void set_irq(uint32_t gsi, bool level) override { engine_.set_irq(gsi, level); }
  void send_msi(const MsiMessage& msg) override { engine_.send_msi(msg); }

 private:
  InterruptController& engine_;
};

// CPU microseconds per notify() of vector 0, programmed with kMessage and unmasked.
double us_per_interrupt(InterruptController& controller) {
  MsixTable table(1, &controller);
  table.set_control(MsixTable::kControlEnable);
  write32(table, 0, static_cast<uint32_t>(kMessage.address));
  write32(table, 8, kMessage.data);
  write32(table, 12, 0);
  double start = thread_seconds();
  for (int i = 0; i < kInterrupts; ++i)
    if (!table.notify(0)) throw Error("MSI-X vector not delivered");
  return (thread_seconds() - start) * 1e6 / kInterrupts;
}

Sample sample() {
  GuestMemory memory(16 << 20);
  IoBus pio("pio"), mmio("mmio");
  KvmEngine engine({memory, pio, mmio}, {.vcpus = 1});
  auto vcpu = engine.create_vcpu(0);
  SignalMsiOnly signal_msi(engine.interrupts());
  return {.keel = us_per_interrupt(engine.interrupts()),
          .baseline = us_per_interrupt(signal_msi)};
}

KEEL_BENCH_ROW(Row{
    .name = "MSI-X interrupt from a device thread",
    .unit = "us CPU/interrupt",
    .baseline = "same table, KVM_SIGNAL_MSI route",
    .sample = sample,
    .unavailable = kvm_unavailable,
});

}  // namespace
}  // namespace keel::bench
