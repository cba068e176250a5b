// PciBus: PCI bus 0 of the machine. It holds the functions (one per slot, function 0 only), places
// their BARs in the 32-bit MMIO window the way firmware would before the guest runs, and keeps the
// MMIO IoBus in step when the guest later moves a BAR or toggles memory decoding.
//
// Slot 0 is the host bridge function (class 06:00), which Linux's type-1 sanity check looks for.
// Devices get slots 1, 2, ... in the order they are added, which is the order Linux probes them
// (so disks added first become vda, vdb, ...).
#pragma once

#include <array>
#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>

#include "bus/io_bus.h"
#include "devices/pci/pci_device.h"

namespace keel {

// The MMIO window PCI BARs live in: the 32-bit hole from 3 GiB up to the IOAPIC. ACPI's PCI0 _CRS
// describes exactly this range.
inline constexpr uint64_t kPciMmioWindowBase = 0xC000'0000;
inline constexpr uint64_t kPciMmioWindowEnd = 0xFEC0'0000;  // exclusive
inline constexpr uint8_t kPciMaxSlots = 32;

class PciBus {
 public:
  explicit PciBus(IoBus& mmio);
  ~PciBus();
  PciBus(const PciBus&) = delete;
  PciBus& operator=(const PciBus&) = delete;

  // Adds `device` at the next free slot, places its BARs in the window (naturally aligned),
  // enables memory decoding and bus mastering, and maps the BARs. Returns the slot. Throws Error
  // when the bus or the window is full.
  uint8_t add(std::shared_ptr<PciDevice> device);
  PciDevice* device(uint8_t slot) const;

  // Type-1 configuration access; absent functions read as all-ones.
  uint32_t config_read(uint8_t bus, uint8_t slot, uint8_t function, uint32_t offset,
                       unsigned size);
  void config_write(uint8_t bus, uint8_t slot, uint8_t function, uint32_t offset, unsigned size,
                    uint32_t value);

  // Where BAR `bar` of the device in `slot` is mapped on the MMIO bus now (0: not mapped).
  uint64_t mapped_address(uint8_t slot, int bar) const;

  // Called (on the thread that reprogrammed it, no bus lock held) after a device's BARs may have
  // moved, for users that cache BAR addresses (KVM ioeventfds). Set before the guest runs.
  void set_remap_listener(std::function<void(uint8_t slot)> listener) {
    remap_listener_ = std::move(listener);
  }

 private:
  void attach(uint8_t slot, std::shared_ptr<PciDevice> device);
  void remap(uint8_t slot);
  void remap_locked(uint8_t slot);

  IoBus& mmio_;
  mutable std::mutex mutex_;  // guards slots_, mapped_ and next_address_
  std::array<std::shared_ptr<PciDevice>, kPciMaxSlots> slots_;
  std::array<std::array<uint64_t, pci::kNumBars>, kPciMaxSlots> mapped_{};
  uint64_t next_address_ = kPciMmioWindowBase;
  std::function<void(uint8_t slot)> remap_listener_;
};

// The host bridge's configuration mechanism #1: CONFIG_ADDRESS at 0xCF8 (dword accesses),
// CONFIG_DATA at 0xCFC-0xCFF (byte, word and dword accesses). Add it to the port-I/O bus at
// kPortBase with size kPortCount.
class PciHostBridge : public BusDevice {
 public:
  static constexpr uint16_t kPortBase = 0xCF8;
  static constexpr uint16_t kPortCount = 8;

  explicit PciHostBridge(PciBus& bus) : bus_(bus) {}
  void read(uint64_t offset, std::span<uint8_t> data) override;
  void write(uint64_t offset, std::span<const uint8_t> data) override;

 private:
  PciBus& bus_;
  std::atomic<uint32_t> address_{0};
};

}  // namespace keel
