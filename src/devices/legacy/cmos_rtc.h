// CmosRtc: the MC146818 real-time clock and CMOS memory at ports 0x70 (index, bit 7 = NMI mask)
// and 0x71 (data).
//
// The clock reads the host's UTC time (CLOCK_REALTIME) at each access, in BCD or binary and 12 or
// 24-hour mode as status register B says; a guest that sets the clock keeps an offset from the
// host's time. Status A's update-in-progress bit is set during the last 244 us of each second, as
// on the real part, so guests that wait for an update edge see one. The CMOS memory-size
// registers tell firmware-style code how much RAM there is. No alarm or periodic interrupts.
//
// Thread safety: one mutex.
#pragma once

#include <array>
#include <cstdint>
#include <ctime>
#include <functional>
#include <mutex>
#include <span>

#include "bus/io_bus.h"
#include "state/persistent.h"

namespace keel {

class CmosRtc : public BusDevice, public state::Persistent {
 public:
  static constexpr uint16_t kBase = 0x70;
  static constexpr uint16_t kPortCount = 2;

  // Returns the host's time as seconds and nanoseconds since the epoch (UTC). Tests replace it.
  using Clock = std::function<timespec()>;

  // `low_ram` = RAM below the 32-bit MMIO hole, `high_ram` = RAM above 4 GiB, in bytes.
  CmosRtc(uint64_t low_ram, uint64_t high_ram, Clock clock = nullptr);

  void read(uint64_t offset, std::span<uint8_t> data) override;
  void write(uint64_t offset, std::span<const uint8_t> data) override;

  bool nmi_masked() const;

  // CMOS memory, the index and NMI mask, and the guest's offset from host time (the clock itself
  // is the host's).
  void save_state(state::SectionWriter& out) override;
  void restore_state(const state::SectionReader& in) override;

  // Register indices.
  enum : uint8_t {
    kSeconds = 0x00, kMinutes = 0x02, kHours = 0x04, kWeekday = 0x06, kDay = 0x07,
    kMonth = 0x08, kYear = 0x09, kStatusA = 0x0A, kStatusB = 0x0B, kStatusC = 0x0C,
    kStatusD = 0x0D, kCentury = 0x32,
  };
  static constexpr uint8_t kStatusAUpdateInProgress = 0x80;
  static constexpr uint8_t kStatusBSet = 0x80, kStatusBBinary = 0x04, kStatusB24Hour = 0x02;

 private:
  uint8_t read_reg(uint8_t index);               // mutex held
  void write_reg(uint8_t index, uint8_t value);  // mutex held
  uint8_t encode(int value) const;               // mutex held: BCD or binary per status B
  int decode(uint8_t value) const;
  std::tm guest_time(timespec* now = nullptr) const;

  const Clock clock_;
  mutable std::mutex mutex_;
  std::array<uint8_t, 128> cmos_{};
  uint8_t index_ = 0;
  bool nmi_masked_ = false;
  int64_t offset_seconds_ = 0;  // guest time - host time, after the guest set the clock
};

}  // namespace keel
