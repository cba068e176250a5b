#include "engine/emu/platform/kvm_clock.h"

#include <atomic>
#include <cstring>

#include "base/error.h"
#include "engine/emu/platform/guest_clock.h"

namespace keel::emu {

PvclockScale pvclock_scale(uint64_t tsc_hz) {
  if (tsc_hz < 1000 || tsc_hz >> 63) throw Error("unsupported TSC frequency for kvm-clock");
  // Smallest shift with tsc_hz * 2^shift > 1e9: then mul = 1e9 * 2^32 / (tsc_hz * 2^shift) lies in
  // [2^31, 2^32).
  int shift = 0;
  unsigned __int128 scaled = tsc_hz;
  while (scaled <= kNsPerSec) {
    scaled <<= 1;
    ++shift;
  }
  while (scaled > 2 * static_cast<unsigned __int128>(kNsPerSec)) {
    scaled >>= 1;
    --shift;
  }
  // mul = 1e9 * 2^32 / (tsc_hz * 2^shift), computed without the lossy shifted frequency.
  unsigned __int128 num = static_cast<unsigned __int128>(kNsPerSec) << 32;
  unsigned __int128 den = tsc_hz;
  if (shift >= 0)
    den <<= shift;
  else
    num <<= -shift;
  auto mul = static_cast<uint64_t>(num / den);
  if (mul > UINT32_MAX) mul = UINT32_MAX;
  return {static_cast<uint32_t>(mul), static_cast<int8_t>(shift)};
}

uint64_t pvclock_ns(const PvclockVcpuTimeInfo& info, uint64_t tsc) {
  uint64_t delta = tsc - info.tsc_timestamp;
  if (info.tsc_shift < 0)
    delta >>= -info.tsc_shift;
  else
    delta <<= info.tsc_shift;
  auto scaled = static_cast<uint64_t>((static_cast<unsigned __int128>(delta) *
                                       info.tsc_to_system_mul) >> 32);
  return info.system_time + scaled;
}

KvmClock::KvmClock(GuestMemory& memory, const GuestClock& clock, RealtimeSource realtime)
    : memory_(memory),
      clock_(clock),
      realtime_(realtime ? std::move(realtime) : RealtimeSource(host_realtime_ns)),
      scale_(pvclock_scale(clock.tsc_hz())) {}

bool KvmClock::handles(uint32_t msr) {
  return msr == kMsrKvmWallClock || msr == kMsrKvmSystemTime || msr == kMsrKvmWallClockNew ||
         msr == kMsrKvmSystemTimeNew;
}

bool KvmClock::read_msr(uint32_t msr, uint64_t& value) const {
  switch (msr) {
    case kMsrKvmWallClock:
    case kMsrKvmWallClockNew:
      value = wall_clock_msr_;
      return true;
    case kMsrKvmSystemTime:
    case kMsrKvmSystemTimeNew:
      value = system_time_msr_;
      return true;
    default:
      return false;
  }
}

bool KvmClock::write_msr(uint32_t msr, uint64_t value) {
  switch (msr) {
    case kMsrKvmWallClock:
    case kMsrKvmWallClockNew:
      wall_clock_msr_ = value;
      write_wall_clock(value);
      return true;
    case kMsrKvmSystemTime:
    case kMsrKvmSystemTimeNew:
      system_time_msr_ = value;
      refresh();
      return true;
    default:
      return false;
  }
}

void KvmClock::set_tsc_offset(int64_t offset) {
  tsc_offset_ = offset;
  refresh();
}

void KvmClock::refresh() {
  if (system_time_msr_ & 1) write_system_time(system_time_msr_ & ~uint64_t{1});
}

void KvmClock::write_wall_clock(uint64_t gpa) {
  uint8_t* p = memory_.host_ptr(gpa, sizeof(PvclockWallClock));
  if (!p) return;  // outside RAM: the guest gets nothing, as on KVM
  // Wall time of guest system time 0 = realtime now - system time now.
  uint64_t tsc = clock_.read_tsc();
  uint64_t system_ns = mul_div(tsc, kNsPerSec, clock_.tsc_hz());
  uint64_t wall = realtime_() - system_ns;

  // Odd version while updating, even after, as the guest's reader expects.
  PvclockWallClock wc;
  std::memcpy(&wc, p, sizeof wc);
  uint32_t version = wc.version | 1;
  wc.version = version;
  std::memcpy(p, &wc.version, sizeof wc.version);
  std::atomic_thread_fence(std::memory_order_release);
  wc.sec = static_cast<uint32_t>(wall / kNsPerSec);
  wc.nsec = static_cast<uint32_t>(wall % kNsPerSec);
  std::memcpy(p + 4, &wc.sec, 8);
  std::atomic_thread_fence(std::memory_order_release);
  wc.version = version + 1;
  std::memcpy(p, &wc.version, sizeof wc.version);
  memory_.notify_write(gpa, sizeof wc);
}

void KvmClock::write_system_time(uint64_t gpa) {
  uint8_t* p = memory_.host_ptr(gpa, sizeof(PvclockVcpuTimeInfo));
  if (!p) return;
  PvclockVcpuTimeInfo info{};
  uint64_t clock_tsc = clock_.read_tsc();
  info.tsc_timestamp = clock_tsc + uint64_t(tsc_offset_);
  info.system_time = mul_div(clock_tsc, kNsPerSec, clock_.tsc_hz());
  info.tsc_to_system_mul = scale_.mul;
  info.tsc_shift = scale_.shift;
  info.flags = kPvclockTscStableBit;

  system_time_version_ = (system_time_version_ | 1) + 1;  // next even value
  uint32_t odd = system_time_version_ - 1;
  std::memcpy(p, &odd, 4);
  std::atomic_thread_fence(std::memory_order_release);
  std::memcpy(p + 4, reinterpret_cast<const uint8_t*>(&info) + 4, sizeof info - 4);
  std::atomic_thread_fence(std::memory_order_release);
  std::memcpy(p, &system_time_version_, 4);
  memory_.notify_write(gpa, sizeof info);
}

}  // namespace keel::emu
