#include "engine/emu/platform/pc_platform.h"

#include <string>

#include "base/error.h"

namespace keel::emu {

PcPlatform::PcPlatform(const EngineContext& ctx, const PcPlatformConfig& config,
                       std::unique_ptr<GuestClock> clock)
    : ctx_(ctx), clock_(clock ? std::move(clock) : std::make_unique<HostGuestClock>(config.tsc_hz)) {
  if (config.vcpus == 0 || config.vcpus > 255)
    throw Error("emu platform: unsupported vCPU count " + std::to_string(config.vcpus));
  auto watcher = std::make_unique<DeadlineWatcher>(*clock_);
  for (uint32_t i = 0; i < config.vcpus; ++i) {
    apics_.push_back(std::make_unique<LocalApicModel>(i, *clock_, bus_, watcher.get()));
    bus_.attach(apics_.back().get());
    watcher->add(apics_.back().get());
    kvm_clocks_.push_back(std::make_unique<KvmClock>(ctx_.memory, *clock_));
  }
  ioapic_ = std::make_shared<IoApic>(bus_, config.ioapic_id);
  bus_.set_eoi_listener([ioapic = ioapic_.get()](uint8_t vector) { ioapic->eoi(vector); });
  interrupts_ = std::make_unique<EmuInterruptController>(*ioapic_, bus_);

  std::vector<IrqLine> irq0;
  for (uint32_t gsi : kPitIrqGsis) irq0.emplace_back(interrupts_.get(), gsi);
  pit_ = std::make_shared<Pit8254>(*clock_, std::move(irq0));
  // The BSP polls the PIT; reprogramming it makes the BSP poll again soon.
  LocalApicModel* bsp = apics_[0].get();
  bsp->set_platform_timers([pit = pit_.get()](uint64_t now) { return pit->poll(now); });
  pit_->set_reprogram_listener([bsp] { bsp->platform_timers_changed(); });
  pic_master_ = std::make_shared<Pic8259>();
  pic_slave_ = std::make_shared<Pic8259>();

  auto add = [this](IoBus& bus, uint64_t base, uint64_t size, std::shared_ptr<BusDevice> dev) {
    bus.add(base, size, std::move(dev));
    registered_.emplace_back(&bus, base);
  };
  try {
    add(ctx_.mmio, kIoApicBase, kIoApicSize, ioapic_);
    add(ctx_.pio, kPitPortBase, 4, pit_);
    add(ctx_.pio, kSystemControlPortB, 1, pit_->port61_device());
    add(ctx_.pio, kPicMasterBase, 2, pic_master_);
    add(ctx_.pio, kPicSlaveBase, 2, pic_slave_);
  } catch (...) {
    for (auto [bus, base] : registered_) bus->remove(base);
    throw;
  }
  if (config.start_watcher) watcher->start();
  watcher_ = std::move(watcher);
}

PcPlatform::~PcPlatform() {
  watcher_.reset();
  for (auto [bus, base] : registered_) bus->remove(base);
}

LocalApicModel& PcPlatform::apic(uint32_t index) {
  if (index >= apics_.size()) throw Error("emu platform: no vCPU " + std::to_string(index));
  return *apics_[index];
}

KvmClock& PcPlatform::kvm_clock(uint32_t index) {
  if (index >= kvm_clocks_.size()) throw Error("emu platform: no vCPU " + std::to_string(index));
  return *kvm_clocks_[index];
}

std::unique_ptr<PcPlatform> create_emu_platform(const EngineContext& ctx, uint32_t vcpus) {
  PcPlatformConfig config;
  config.vcpus = vcpus;
  return std::make_unique<PcPlatform>(ctx, config);
}

}  // namespace keel::emu
