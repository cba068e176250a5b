// Pic8259: one 8259A programmable interrupt controller (the PC has two: master at 0x20/0x21,
// slave at 0xA0/0xA1).
//
// Only as much as Linux needs to probe and mask it: the ICW1-ICW4 initialisation sequence, the
// mask register (IMR, read back by Linux's probe_8259A), OCW2 EOIs and OCW3 IRR/ISR selection.
// Its output is not connected to anything: on keel every interrupt goes through the IOAPIC (the
// MADT says so and Linux masks the PICs when it finds an IOAPIC), so no input ever reaches IRR
// and the ISR stays empty. An emu guest that wants 8259 interrupts (ExtINT through LINT0) gets
// none; no guest keel boots needs them.
//
// Thread-safe (vCPU threads).
#pragma once

#include <cstdint>
#include <mutex>
#include <span>
#include <string>

#include "bus/io_bus.h"
#include "state/state_format.h"

namespace keel::emu {

inline constexpr uint16_t kPicMasterBase = 0x20;
inline constexpr uint16_t kPicSlaveBase = 0xA0;

class Pic8259 final : public BusDevice {
 public:
  void read(uint64_t offset, std::span<uint8_t> data) override;
  void write(uint64_t offset, std::span<const uint8_t> data) override;

  uint8_t imr() const;
  uint8_t vector_base() const;

  // Snapshots: fields prefixed `prefix` ("master_", "slave_") of the platform's section.
  void save_state(state::SectionWriter& out, const std::string& prefix) const;
  void restore_state(const state::SectionReader& in, const std::string& prefix);

 private:
  mutable std::mutex mutex_;
  uint8_t imr_ = 0xFF;  // everything masked until the guest says otherwise
  uint8_t irr_ = 0, isr_ = 0;
  uint8_t vector_base_ = 0;
  int init_step_ = 0;  // 0: operational; 2, 3, 4: expecting that ICW
  bool need_icw4_ = false, single_ = false;
  bool read_isr_ = false;
};

}  // namespace keel::emu
