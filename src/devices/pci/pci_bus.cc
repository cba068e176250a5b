#include "devices/pci/pci_bus.h"

#include <cstring>

#include "base/error.h"
#include "base/log.h"

namespace keel {

namespace {

// Bus 0, slot 0: the host bridge function. Red Hat's generic PCIe host bridge id, class 06:00.
class HostBridgeFunction : public PciDevice {
 public:
  HostBridgeFunction() : PciDevice({.vendor_id = 0x1b36, .device_id = 0x0008, .class_code = 0x060000}) {}
  std::string name() const override { return "pci host bridge"; }
};

// A BAR as the MMIO bus sees it: forwards to the device with the BAR index.
class BarWindow : public BusDevice {
 public:
  BarWindow(std::shared_ptr<PciDevice> device, int bar) : device_(std::move(device)), bar_(bar) {}
  void read(uint64_t offset, std::span<uint8_t> data) override {
    device_->bar_access_read(bar_, offset, data);
  }
  void write(uint64_t offset, std::span<const uint8_t> data) override {
    device_->bar_access_write(bar_, offset, data);
  }

 private:
  std::shared_ptr<PciDevice> device_;
  int bar_;
};

}  // namespace

PciBus::PciBus(IoBus& mmio) : mmio_(mmio) { attach(0, std::make_shared<HostBridgeFunction>()); }

PciBus::~PciBus() {
  std::lock_guard lock(mutex_);
  for (auto& slot : mapped_)
    for (uint64_t& base : slot)
      if (base) mmio_.remove(std::exchange(base, 0));
}

void PciBus::attach(uint8_t slot, std::shared_ptr<PciDevice> device) {
  device->set_bar_listener([this, slot] { remap(slot); });
  std::lock_guard lock(mutex_);
  slots_[slot] = std::move(device);
}

uint8_t PciBus::add(std::shared_ptr<PciDevice> device) {
  uint8_t slot = 0;
  {
    std::lock_guard lock(mutex_);
    while (slot < kPciMaxSlots && slots_[slot]) ++slot;
    if (slot == kPciMaxSlots) throw Error("PCI bus is full: cannot add " + device->name());
    // Firmware-style placement: each BAR naturally aligned, in declaration order.
    uint64_t next = next_address_;
    std::array<uint64_t, pci::kNumBars> placed{};
    for (int i = 0; i < pci::kNumBars; ++i) {
      BarInfo b = device->bar(i);
      if (!b.size) continue;
      uint64_t base = (next + b.size - 1) & ~(b.size - 1);
      if (base + b.size > kPciMmioWindowEnd)
        throw Error("PCI MMIO window is full: cannot place " + device->name());
      placed[i] = base;
      next = base + b.size;
    }
    next_address_ = next;
    for (int i = 0; i < pci::kNumBars; ++i)
      if (placed[i]) device->set_bar_address(i, placed[i]);
  }
  attach(slot, device);
  device->set_command(pci::kCommandMemory | pci::kCommandBusMaster);
  return slot;
}

PciDevice* PciBus::device(uint8_t slot) const {
  std::lock_guard lock(mutex_);
  return slot < kPciMaxSlots ? slots_[slot].get() : nullptr;
}

uint64_t PciBus::mapped_address(uint8_t slot, int bar) const {
  std::lock_guard lock(mutex_);
  if (slot >= kPciMaxSlots || bar < 0 || bar >= pci::kNumBars) return 0;
  return mapped_[slot][bar];
}

void PciBus::remap(uint8_t slot) {
  remap_locked(slot);
  if (remap_listener_) remap_listener_(slot);
}

void PciBus::remap_locked(uint8_t slot) {
  std::lock_guard lock(mutex_);
  const auto& device = slots_[slot];
  if (!device) return;
  bool enabled = device->memory_enabled();
  for (int i = 0; i < pci::kNumBars; ++i) {
    BarInfo b = device->bar(i);
    uint64_t want = (enabled && b.size && b.address) ? b.address : 0;
    uint64_t& have = mapped_[slot][i];
    if (want == have) continue;
    if (have) mmio_.remove(have);
    have = 0;
    if (!want) continue;
    try {
      mmio_.add(want, b.size, std::make_shared<BarWindow>(device, i));
      have = want;
    } catch (const Error& e) {
      // The guest placed the BAR over something else (or is half-way through sizing it): leave it
      // unmapped until it is moved somewhere usable.
      log::debug("{}: BAR{} at {:#x} not mapped: {}", device->name(), i, want, e.what());
    }
  }
}

uint32_t PciBus::config_read(uint8_t bus, uint8_t slot, uint8_t function, uint32_t offset,
                             unsigned size) {
  PciDevice* dev = (bus == 0 && function == 0) ? device(slot) : nullptr;
  if (!dev) return size >= 4 ? ~0u : (1u << (8 * size)) - 1;
  return dev->config_read(offset, size);
}

void PciBus::config_write(uint8_t bus, uint8_t slot, uint8_t function, uint32_t offset,
                          unsigned size, uint32_t value) {
  PciDevice* dev = (bus == 0 && function == 0) ? device(slot) : nullptr;
  if (dev) dev->config_write(offset, size, value);
}

void PciHostBridge::read(uint64_t offset, std::span<uint8_t> data) {
  uint32_t address = address_.load();
  if (offset < 4) {
    for (size_t i = 0; i < data.size(); ++i)
      data[i] = offset + i < 4 ? static_cast<uint8_t>(address >> (8 * (offset + i))) : 0xff;
    return;
  }
  std::memset(data.data(), 0xff, data.size());
  unsigned size = data.size();
  if (!(address & 0x8000'0000u) || (size != 1 && size != 2 && size != 4)) return;
  uint32_t reg = (address & 0xfc) + (offset - 4);
  uint32_t v = bus_.config_read((address >> 16) & 0xff, (address >> 11) & 0x1f,
                                (address >> 8) & 0x7, reg, size);
  std::memcpy(data.data(), &v, size);
}

void PciHostBridge::write(uint64_t offset, std::span<const uint8_t> data) {
  unsigned size = data.size();
  if (offset < 4) {
    // Only a dword write latches CONFIG_ADDRESS (byte writes to 0xCFB are another mechanism's).
    if (offset == 0 && size == 4) {
      uint32_t v;
      std::memcpy(&v, data.data(), 4);
      address_.store(v & 0x80ff'fffcu);
    }
    return;
  }
  uint32_t address = address_.load();
  if (!(address & 0x8000'0000u) || (size != 1 && size != 2 && size != 4)) return;
  uint32_t v = 0;
  std::memcpy(&v, data.data(), size);
  uint32_t reg = (address & 0xfc) + (offset - 4);
  bus_.config_write((address >> 16) & 0xff, (address >> 11) & 0x1f, (address >> 8) & 0x7, reg,
                    size, v);
}

}  // namespace keel
