// IoApic: an 82093AA-style I/O APIC with 24 pins, the MMIO device at 0xFEC00000 through which
// every line interrupt reaches the local APICs (the 8259 PICs stay masked).
//
// Registers: IOREGSEL (offset 0x00) selects, IOWIN (0x10) reads/writes the selected register:
// ID (0x00), version (0x01: version 0x20, 24 entries), arbitration (0x02), and the redirection
// table (0x10 + 2n low, 0x11 + 2n high). Version 0x20 also has the EOI register at 0x40.
// Pins: edge-triggered pins deliver on a rising edge while unmasked (an edge on a masked pin is
// lost, as the datasheet says); level-triggered pins deliver while asserted, unmasked and remote
// IRR clear, set remote IRR, and deliver again on EOI if still asserted.
// Levels are logical (asserted or not): the polarity bit is stored but not applied, as in QEMU,
// so devices raise() and lower() whatever the guest's polarity choice.
//
// Thread-safe: set_irq() from device threads, MMIO from vCPU threads, eoi() from the local APICs.
// Deliveries to local APICs are made with the IOAPIC lock held (lock order IOAPIC -> LAPIC).
#pragma once

#include <array>
#include <cstdint>
#include <mutex>
#include <span>

#include "bus/io_bus.h"
#include "engine/emu/platform/apic_bus.h"
#include "state/state_format.h"

namespace keel::emu {

inline constexpr uint64_t kIoApicBase = 0xFEC0'0000;
inline constexpr uint64_t kIoApicSize = 0x1000;
inline constexpr uint32_t kIoApicPins = 24;
inline constexpr uint32_t kIoApicVersion = 0x0017'0020;  // 24 entries (max 23), version 0x20

class IoApic final : public BusDevice {
 public:
  // Redirection entry bits.
  static constexpr uint64_t kMasked = 1ull << 16;
  static constexpr uint64_t kLevel = 1ull << 15;
  static constexpr uint64_t kRemoteIrr = 1ull << 14;
  static constexpr uint64_t kDeliveryStatus = 1ull << 12;
  static constexpr uint64_t kLogical = 1ull << 11;

  explicit IoApic(ApicBus& bus, uint8_t id = 0);

  void read(uint64_t offset, std::span<uint8_t> data) override;
  void write(uint64_t offset, std::span<const uint8_t> data) override;

  // Sets the level of input `pin`; pins >= 24 are ignored.
  void set_irq(uint32_t pin, bool level);
  // Level-triggered EOI of `vector`, from a local APIC's EOI broadcast or the EOI register.
  void eoi(uint8_t vector);

  // As the guest reads it (tests, debugging); 0 for pins >= 24.
  uint64_t redirection(uint32_t pin) const;

  // Snapshots: id, select, redirection table and input levels (vCPUs paused).
  void save_state(state::SectionWriter& out) const;
  void restore_state(const state::SectionReader& in);

 private:
  uint32_t read_indirect_locked(uint32_t index) const;
  void write_indirect_locked(uint32_t index, uint32_t value);
  void service_locked(uint32_t pin);
  void eoi_locked(uint8_t vector);  // delivers `pin` if its state asks for it

  ApicBus& bus_;
  mutable std::mutex mutex_;
  uint32_t id_;
  uint32_t select_ = 0;
  std::array<uint64_t, kIoApicPins> redir_;
  std::array<bool, kIoApicPins> line_{};
};

}  // namespace keel::emu
