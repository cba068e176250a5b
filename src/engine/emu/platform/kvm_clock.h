// kvm-clock: the KVM paravirtual clock, so a Linux guest reads time from the TSC without
// calibrating it against the PIT.
//
// The guest writes the guest-physical address of a pvclock structure to an MSR; we fill it with
// (tsc_timestamp, system_time, tsc_to_system_mul, tsc_shift) such that the guest computes
//   time_ns = system_time + (((tsc - tsc_timestamp) << shift) * mul >> 32)     (shift may be < 0)
// Our guest TSC is an exact linear function of host time (GuestClock), so one snapshot stays valid
// forever and carries PVCLOCK_TSC_STABLE_BIT. "System time" is the guest TSC in ns (ns since the
// guest clock started), the wall clock is the host's CLOCK_REALTIME at system time 0.
//
// Everything written goes through GuestMemory: an address outside RAM gets nothing written.
// One KvmClock per vCPU; its MSR functions run on that vCPU's thread.
#pragma once

#include <cstdint>
#include <functional>

#include "engine/emu/local_apic.h"
#include "memory/guest_memory.h"

namespace keel::emu {

inline constexpr uint32_t kMsrKvmWallClock = 0x11;
inline constexpr uint32_t kMsrKvmSystemTime = 0x12;
inline constexpr uint32_t kMsrKvmWallClockNew = 0x4b564d00;
inline constexpr uint32_t kMsrKvmSystemTimeNew = 0x4b564d01;

inline constexpr uint8_t kPvclockTscStableBit = 1 << 0;

// Guest ABI (Linux arch/x86/include/asm/pvclock-abi.h).
struct PvclockVcpuTimeInfo {
  uint32_t version;
  uint32_t pad0;
  uint64_t tsc_timestamp;
  uint64_t system_time;
  uint32_t tsc_to_system_mul;
  int8_t tsc_shift;
  uint8_t flags;
  uint8_t pad[2];
};
static_assert(sizeof(PvclockVcpuTimeInfo) == 32);

struct PvclockWallClock {
  uint32_t version;
  uint32_t sec;
  uint32_t nsec;
};
static_assert(sizeof(PvclockWallClock) == 12);

struct PvclockScale {
  uint32_t mul;
  int8_t shift;
};
// The (mul, shift) that convert ticks of `tsc_hz` to ns with the pvclock formula, mul in
// [2^31, 2^32) for the best precision. tsc_hz must be in [1 kHz, 2^63).
PvclockScale pvclock_scale(uint64_t tsc_hz);
// The pvclock formula, as the guest evaluates it.
uint64_t pvclock_ns(const PvclockVcpuTimeInfo& info, uint64_t tsc);

class KvmClock {
 public:
  using RealtimeSource = std::function<uint64_t()>;  // host CLOCK_REALTIME, ns
  KvmClock(GuestMemory& memory, const GuestClock& clock, RealtimeSource realtime = {});

  static bool handles(uint32_t msr);
  // Returns false (nothing done) for an MSR that is not a kvm-clock MSR.
  bool read_msr(uint32_t msr, uint64_t& value) const;
  bool write_msr(uint32_t msr, uint64_t value);

  // Rewrites the time structure if enabled (after a restore; harmless at any time).
  void refresh();
  // The vCPU's TSC runs `offset` ticks from the clock's (WRMSR TSC, a restore): the structure's
  // tsc_timestamp is in the vCPU's TSC, as RDTSC reads it, so the guest's time does not move.
  void set_tsc_offset(int64_t offset);

 private:
  void write_wall_clock(uint64_t gpa);
  void write_system_time(uint64_t gpa);

  GuestMemory& memory_;
  const GuestClock& clock_;
  RealtimeSource realtime_;
  PvclockScale scale_;
  uint64_t wall_clock_msr_ = 0;
  uint64_t system_time_msr_ = 0;
  uint32_t system_time_version_ = 0;
  int64_t tsc_offset_ = 0;
};

}  // namespace keel::emu
