#include "devices/legacy/cmos_rtc.h"

#include <algorithm>

namespace keel {
namespace {

constexpr uint64_t kMiB = 1 << 20;

timespec host_realtime() {
  timespec ts{};
  clock_gettime(CLOCK_REALTIME, &ts);
  return ts;
}

}  // namespace

CmosRtc::CmosRtc(uint64_t low_ram, uint64_t high_ram, Clock clock)
    : clock_(clock ? std::move(clock) : Clock(host_realtime)) {
  cmos_[kStatusA] = 0x26;  // 32.768 kHz time base, 1024 Hz rate
  cmos_[kStatusB] = kStatusB24Hour;  // 24-hour BCD, as PC firmware leaves it
  cmos_[kStatusD] = 0x80;  // valid RAM and time
  // Base memory (KiB): 640.
  cmos_[0x15] = 640 & 0xFF;
  cmos_[0x16] = 640 >> 8;
  // Extended memory from 1 MiB to 64 MiB, in KiB (0x17/0x18 and its copy at 0x30/0x31).
  uint64_t ext_kib = low_ram > kMiB ? std::min<uint64_t>((low_ram - kMiB) / 1024, 0xFC00) : 0;
  cmos_[0x17] = cmos_[0x30] = ext_kib & 0xFF;
  cmos_[0x18] = cmos_[0x31] = ext_kib >> 8;
  // Memory from 16 MiB to the hole, in 64 KiB blocks.
  uint64_t above16 = low_ram > 16 * kMiB ? std::min<uint64_t>((low_ram - 16 * kMiB) >> 16, 0xFFFF) : 0;
  cmos_[0x34] = above16 & 0xFF;
  cmos_[0x35] = above16 >> 8;
  // Memory above 4 GiB, in 64 KiB blocks (24 bits), as QEMU/SeaBIOS lay it out.
  uint64_t high = std::min<uint64_t>(high_ram >> 16, 0xFFFFFF);
  cmos_[0x5B] = high & 0xFF;
  cmos_[0x5C] = (high >> 8) & 0xFF;
  cmos_[0x5D] = (high >> 16) & 0xFF;
}

void CmosRtc::save_state(state::SectionWriter& out) {
  std::lock_guard lock(mutex_);
  out.bytes("cmos", cmos_);
  out.u8("index", index_);
  out.boolean("nmi_masked", nmi_masked_);
  out.i64("offset_seconds", offset_seconds_);
}

void CmosRtc::restore_state(const state::SectionReader& in) {
  std::array<uint8_t, 128> cmos;
  in.bytes_exact("cmos", cmos);
  uint8_t index = in.u8("index");
  if (index > 0x7F) in.fail("field 'index' is not a CMOS register");
  std::lock_guard lock(mutex_);
  cmos_ = cmos;
  index_ = index;
  nmi_masked_ = in.boolean("nmi_masked");
  offset_seconds_ = in.i64("offset_seconds");
}

bool CmosRtc::nmi_masked() const {
  std::lock_guard lock(mutex_);
  return nmi_masked_;
}

void CmosRtc::read(uint64_t offset, std::span<uint8_t> data) {
  if (data.empty()) return;
  std::lock_guard lock(mutex_);
  // The index port reads back as 0xFF on most chipsets; only 1-byte data reads are meaningful.
  uint8_t v = offset == 1 ? read_reg(index_) : 0xFF;
  data[0] = v;
  for (size_t i = 1; i < data.size(); ++i) data[i] = 0xFF;
}

void CmosRtc::write(uint64_t offset, std::span<const uint8_t> data) {
  if (data.size() != 1) return;  // ignore odd-sized writes rather than guess
  std::lock_guard lock(mutex_);
  if (offset == 0) {
    nmi_masked_ = data[0] & 0x80;
    index_ = data[0] & 0x7F;
  } else {
    write_reg(index_, data[0]);
  }
}

std::tm CmosRtc::guest_time(timespec* now) const {
  timespec ts = clock_();
  if (now) *now = ts;
  time_t t = static_cast<time_t>(ts.tv_sec + offset_seconds_);
  std::tm tm{};
  gmtime_r(&t, &tm);
  return tm;
}

uint8_t CmosRtc::encode(int value) const {
  if (cmos_[kStatusB] & kStatusBBinary) return static_cast<uint8_t>(value);
  return static_cast<uint8_t>(((value / 10) << 4) | (value % 10));
}

int CmosRtc::decode(uint8_t value) const {
  if (cmos_[kStatusB] & kStatusBBinary) return value;
  return (value >> 4) * 10 + (value & 0x0F);
}

uint8_t CmosRtc::read_reg(uint8_t index) {
  switch (index) {
    case kSeconds:
    case kMinutes:
    case kHours:
    case kWeekday:
    case kDay:
    case kMonth:
    case kYear:
    case kCentury: {
      std::tm tm = guest_time();
      switch (index) {
        case kSeconds: return encode(std::min(tm.tm_sec, 59));
        case kMinutes: return encode(tm.tm_min);
        case kHours: {
          if (cmos_[kStatusB] & kStatusB24Hour) return encode(tm.tm_hour);
          int h12 = tm.tm_hour % 12 == 0 ? 12 : tm.tm_hour % 12;
          return encode(h12) | (tm.tm_hour >= 12 ? 0x80 : 0);
        }
        case kWeekday: return encode(tm.tm_wday + 1);
        case kDay: return encode(tm.tm_mday);
        case kMonth: return encode(tm.tm_mon + 1);
        case kYear: return encode((tm.tm_year + 1900) % 100);
        case kCentury: return encode((tm.tm_year + 1900) / 100);
      }
      return 0;
    }
    case kStatusA: {
      timespec now{};
      guest_time(&now);
      // The update cycle starts 244 us before the seconds register changes.
      bool uip = now.tv_nsec >= 1'000'000'000 - 244'000;
      return (cmos_[kStatusA] & 0x7F) | (uip ? kStatusAUpdateInProgress : 0);
    }
    case kStatusC: {
      uint8_t v = cmos_[kStatusC];
      cmos_[kStatusC] = 0;  // reading clears the interrupt flags
      return v;
    }
    default:
      return cmos_[index];
  }
}

void CmosRtc::write_reg(uint8_t index, uint8_t value) {
  switch (index) {
    case kSeconds:
    case kMinutes:
    case kHours:
    case kDay:
    case kMonth:
    case kYear:
    case kCentury: {
      // The guest sets one field of the clock: rebuild its time with that field replaced and
      // keep the difference from the host's time.
      timespec now{};
      std::tm tm = guest_time(&now);
      int v;
      if (index == kHours && !(cmos_[kStatusB] & kStatusB24Hour)) {
        v = decode(value & 0x7F) % 12 + ((value & 0x80) ? 12 : 0);
      } else {
        v = decode(value);
      }
      switch (index) {
        case kSeconds: tm.tm_sec = v; break;
        case kMinutes: tm.tm_min = v; break;
        case kHours: tm.tm_hour = v; break;
        case kDay: tm.tm_mday = v; break;
        case kMonth: tm.tm_mon = v - 1; break;
        case kYear: tm.tm_year = (tm.tm_year + 1900) / 100 * 100 + v - 1900; break;
        case kCentury: tm.tm_year = v * 100 + (tm.tm_year + 1900) % 100 - 1900; break;
      }
      time_t t = timegm(&tm);
      if (t != static_cast<time_t>(-1)) offset_seconds_ = static_cast<int64_t>(t) - now.tv_sec;
      return;
    }
    case kWeekday:
      return;  // derived from the date
    case kStatusA:
      cmos_[kStatusA] = value & 0x7F;  // UIP is read-only
      return;
    case kStatusC:
    case kStatusD:
      return;  // read-only
    default:
      cmos_[index] = value;
      return;
  }
}

}  // namespace keel
