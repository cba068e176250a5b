// PcPlatform: the emu engine's PC platform for one VM, built in one call: the guest clock, one
// LocalApicModel per vCPU on an ApicBus, the IOAPIC (MMIO 0xFEC00000), the PIT (ports 0x40-0x43,
// 0x61), the two 8259 PICs (0x20-0x21, 0xA0-0xA1, masked), kvm-clock MSR handlers per vCPU, the
// InterruptController devices raise lines on, and the DeadlineWatcher thread.
//
// It implements EmuPlatform (engine/emu/emu_engine.h), which EmuEngine takes:
//   auto platform = emu::create_emu_platform(ctx, config.vcpus);
//   auto engine = std::make_unique<emu::EmuEngine>(ctx, config, std::move(platform));
// The platform must outlive the vCPU threads; its destructor stops the watcher and removes its
// devices from the buses.
#pragma once

#include <memory>
#include <vector>

#include "engine/emu/emu_engine.h"
#include "engine/emu/platform/apic_bus.h"
#include "engine/emu/platform/deadline_watcher.h"
#include "engine/emu/platform/emu_interrupt_controller.h"
#include "engine/emu/platform/guest_clock.h"
#include "engine/emu/platform/io_apic.h"
#include "engine/emu/platform/kvm_clock.h"
#include "engine/emu/platform/local_apic_model.h"
#include "engine/emu/platform/pic8259.h"
#include "engine/emu/platform/pit8254.h"
#include "engine/engine.h"

namespace keel::emu {

struct PcPlatformConfig {
  uint32_t vcpus = 1;
  uint64_t tsc_hz = kDefaultTscHz;
  uint8_t ioapic_id = 0;    // must match the MADT's IOAPIC entry
  bool start_watcher = true;  // tests that drive a fake clock leave it off
};

class PcPlatform final : public EmuPlatform {
 public:
  // `clock` defaults to a HostGuestClock at config.tsc_hz. Throws Error if vcpus is 0 or above
  // 255 (xAPIC ids), or if a bus range is taken.
  PcPlatform(const EngineContext& ctx, const PcPlatformConfig& config,
             std::unique_ptr<GuestClock> clock = nullptr);
  ~PcPlatform() override;
  PcPlatform(const PcPlatform&) = delete;
  PcPlatform& operator=(const PcPlatform&) = delete;

  // EmuPlatform
  GuestClock& clock() override { return *clock_; }
  InterruptController& interrupts() override { return *interrupts_; }
  LocalApic& local_apic(uint32_t index) override { return apic(index); }
  bool tsc_deadline_supported() const override { return true; }
  // The clock must be a HostGuestClock (the default) to save or restore.
  void save_state(state::Writer& out) override;
  void restore_state(const state::Document& in) override;

  uint32_t vcpus() const { return static_cast<uint32_t>(apics_.size()); }
  LocalApicModel& apic(uint32_t index);  // throws Error when out of range
  KvmClock& kvm_clock(uint32_t index);   // throws Error when out of range
  IoApic& ioapic() { return *ioapic_; }
  Pit8254& pit() { return *pit_; }

 private:
  EngineContext ctx_;
  std::unique_ptr<GuestClock> clock_;
  ApicBus bus_;
  std::vector<std::unique_ptr<LocalApicModel>> apics_;
  std::vector<std::unique_ptr<KvmClock>> kvm_clocks_;
  std::shared_ptr<IoApic> ioapic_;
  std::unique_ptr<EmuInterruptController> interrupts_;
  std::shared_ptr<Pit8254> pit_;
  std::shared_ptr<Pic8259> pic_master_, pic_slave_;
  std::vector<std::pair<IoBus*, uint64_t>> registered_;
  // Declared last: destroyed (thread joined) before anything it reads.
  std::unique_ptr<DeadlineWatcher> watcher_;
};

std::unique_ptr<PcPlatform> create_emu_platform(const EngineContext& ctx, uint32_t vcpus);

}  // namespace keel::emu
