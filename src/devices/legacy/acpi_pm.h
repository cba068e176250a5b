// AcpiPm: the ACPI fixed-hardware power-management registers keel's FADT points at, in port I/O
// (arch/x86/acpi/acpi_tables.h writes the matching FADT and the \_S5 sleep type):
//
//   0x600  PM1a_STS  (16 bit)  write 1 to clear; PWRBTN_STS (bit 8) set by press_power_button()
//   0x602  PM1a_EN   (16 bit)  PWRBTN_EN (bit 8) lets PWRBTN_STS raise the SCI
//   0x604  PM1a_CNT  (16 bit)  SCI_EN reads 1 (no SMM: always in ACPI mode); SLP_TYP = 5 with
//                              SLP_EN powers off (PowerControl::request_stop(kPowerOff, "ACPI S5"))
//   0x608  RESET_REG (8 bit)   writing 1 resets (request_stop(kReset, "ACPI reset register"))
//
// The SCI is IRQ 9, level-triggered, active high (the MADT's interrupt source override); it is
// asserted while any status bit is set together with its enable bit.
//
// Thread safety: one mutex for the registers; request_stop() is called after it is released.
#pragma once

#include <cstdint>
#include <mutex>
#include <span>

#include "bus/io_bus.h"
#include "devices/power.h"
#include "irq/interrupts.h"
#include "state/persistent.h"

namespace keel {

class AcpiPm : public BusDevice, public state::Persistent {
 public:
  static constexpr uint16_t kBasePort = 0x600;      // map [kBasePort, kBasePort + kPortCount)
  static constexpr uint16_t kPortCount = 0x10;
  static constexpr uint16_t kPm1EventPort = 0x600;  // PM1a_EVT_BLK: status, then enable
  static constexpr uint8_t kPm1EventLength = 4;
  static constexpr uint16_t kPm1ControlPort = 0x604;
  static constexpr uint8_t kPm1ControlLength = 2;
  static constexpr uint16_t kResetPort = 0x608;
  static constexpr uint8_t kResetValue = 0x01;
  static constexpr uint32_t kSciIrq = 9;
  static constexpr uint8_t kSlpTypS5 = 5;            // the value \_S5 names

  // PM1 status/enable bits.
  static constexpr uint16_t kPwrBtn = 1 << 8;
  static constexpr uint16_t kGblEn = 1 << 5;   // global lock release: the enable bit only
  static constexpr uint16_t kRtcEn = 1 << 10;  // RTC alarm: the enable bit only
  static constexpr uint16_t kWakSts = 1 << 15;
  // PM1 control bits.
  static constexpr uint16_t kSciEn = 1 << 0;
  static constexpr uint16_t kSlpTypShift = 10;
  static constexpr uint16_t kSlpTypMask = 7 << kSlpTypShift;
  static constexpr uint16_t kSlpEn = 1 << 13;

  AcpiPm(PowerControl& power, IrqLine sci);

  // Offsets relative to kBasePort; any access size; unused offsets read as all-ones.
  void read(uint64_t offset, std::span<uint8_t> data) override;
  void write(uint64_t offset, std::span<const uint8_t> data) override;

  // The fixed-feature power button (what `system_powerdown` presses): sets PWRBTN_STS and, when
  // the guest enabled it, raises the SCI. Callable from any thread.
  void press_power_button();

  // PM1 status, enable and control, and the SCI level as the device last drove it.
  void save_state(state::SectionWriter& out) override;
  void restore_state(const state::SectionReader& in) override;

  uint16_t status() const;
  uint16_t enable() const;
  bool sci_asserted() const;

 private:
  uint8_t read_byte(uint64_t offset) const;     // under mutex_
  void update_sci();                            // under mutex_

  PowerControl& power_;
  const IrqLine sci_;
  mutable std::mutex mutex_;
  uint16_t status_ = 0;
  uint16_t enable_ = 0;
  uint16_t control_ = kSciEn;
  bool sci_level_ = false;
};

}  // namespace keel
