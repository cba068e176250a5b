#include "devices/legacy/acpi_pm.h"

#include <optional>
#include <utility>

#include "base/log.h"

namespace keel {

namespace {

constexpr uint64_t kStatusOffset = 0;
constexpr uint64_t kEnableOffset = 2;
constexpr uint64_t kControlOffset = 4;
constexpr uint64_t kResetOffset = AcpiPm::kResetPort - AcpiPm::kBasePort;

// Status bits keel implements (others read 0 and cannot be set).
constexpr uint16_t kStatusBits = AcpiPm::kPwrBtn | AcpiPm::kWakSts;
constexpr uint16_t kEnableBits = AcpiPm::kPwrBtn;
// Enable bits that read back as written although their events never happen: Linux enables the
// global-lock and RTC-alarm fixed events and checks that the bit stuck ("ACPI Error: Could not
// enable GlobalLock event" / "RealTimeClock event" otherwise, on every boot).
constexpr uint16_t kStoredEnableBits = kEnableBits | AcpiPm::kGblEn | AcpiPm::kRtcEn;
// Control bits that read back (SLP_EN and GBL_RLS are write-only; SCI_EN is fixed at 1).
constexpr uint16_t kControlReadable = AcpiPm::kSlpTypMask | (1 << 1) /* BM_RLD */;

}  // namespace

AcpiPm::AcpiPm(PowerControl& power, IrqLine sci) : power_(power), sci_(sci) {}

uint8_t AcpiPm::read_byte(uint64_t offset) const {
  auto half = [&](uint16_t reg, uint64_t base) { return uint8_t(reg >> (8 * (offset - base))); };
  if (offset < kEnableOffset) return half(status_, kStatusOffset);
  if (offset < kControlOffset) return half(enable_, kEnableOffset);
  if (offset < kControlOffset + 2) return half(control_, kControlOffset);
  if (offset == kResetOffset) return 0;
  return 0xFF;
}

void AcpiPm::read(uint64_t offset, std::span<uint8_t> data) {
  std::lock_guard lock(mutex_);
  for (size_t i = 0; i < data.size(); ++i) data[i] = read_byte(offset + i);
}

void AcpiPm::write(uint64_t offset, std::span<const uint8_t> data) {
  // Gather the bytes per 16-bit register (an access may cover several, or half of one).
  uint16_t value[3] = {}, mask[3] = {};
  bool reset = false;
  for (size_t i = 0; i < data.size(); ++i) {
    const uint64_t at = offset + i;
    if (at < kControlOffset + 2) {
      value[at / 2] |= uint16_t(data[i] << (8 * (at % 2)));
      mask[at / 2] |= uint16_t(0xFF << (8 * (at % 2)));
    } else if (at == kResetOffset && data[i] == kResetValue) {
      reset = true;
    }
  }

  std::optional<std::pair<StopReason, std::string>> stop;
  {
    std::lock_guard lock(mutex_);
    if (mask[0]) status_ &= uint16_t(~(value[0] & mask[0] & kStatusBits));  // write 1 to clear
    if (mask[1]) enable_ = uint16_t((enable_ & ~mask[1]) | (value[1] & mask[1] & kStoredEnableBits));
    if (mask[2]) {
      const uint16_t written = uint16_t((control_ & ~mask[2]) | (value[2] & mask[2]));
      control_ = uint16_t((written & kControlReadable) | kSciEn);
      if ((mask[2] & kSlpEn) && (written & kSlpEn)) {
        const unsigned type = (written & kSlpTypMask) >> kSlpTypShift;
        if (type == kSlpTypS5)
          stop.emplace(StopReason::kPowerOff, "ACPI S5");
        else
          log::warn("ACPI: guest asked for sleep type {}, which keel does not offer; ignored", type);
      }
    }
    update_sci();
  }
  if (reset) stop.emplace(StopReason::kReset, "ACPI reset register");
  if (stop) power_.request_stop(stop->first, std::move(stop->second));
}

void AcpiPm::press_power_button() {
  std::lock_guard lock(mutex_);
  status_ |= kPwrBtn;
  update_sci();
}

void AcpiPm::update_sci() {
  const bool level = (status_ & enable_ & kEnableBits) != 0;
  if (level != sci_level_) {
    sci_level_ = level;
    sci_.set(level);
  }
}

uint16_t AcpiPm::status() const {
  std::lock_guard lock(mutex_);
  return status_;
}

uint16_t AcpiPm::enable() const {
  std::lock_guard lock(mutex_);
  return enable_;
}

bool AcpiPm::sci_asserted() const {
  std::lock_guard lock(mutex_);
  return sci_level_;
}

void AcpiPm::save_state(state::SectionWriter& out) {
  std::lock_guard lock(mutex_);
  out.u16("status", status_);
  out.u16("enable", enable_);
  out.u16("control", control_);
  out.boolean("sci_level", sci_level_);
}

void AcpiPm::restore_state(const state::SectionReader& in) {
  std::lock_guard lock(mutex_);
  status_ = in.u16("status");
  enable_ = in.u16("enable");
  control_ = in.u16("control") | kSciEn;
  sci_level_ = in.boolean("sci_level");
}

}  // namespace keel
