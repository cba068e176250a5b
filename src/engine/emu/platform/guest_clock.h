// Guest time for the emu engine: a TSC at a fixed advertised frequency, derived from the host's
// CLOCK_MONOTONIC so that guest time runs at exactly host speed (a guest `sleep 1` takes one host
// second), plus the conversions every timer model needs.
#pragma once

#include <cstdint>

#include "engine/emu/local_apic.h"

namespace keel::emu {

inline constexpr uint64_t kNsPerSec = 1'000'000'000;
// No deadline armed.
inline constexpr uint64_t kNever = UINT64_MAX;

// 2 GHz: an exact multiple of 1 GHz, so the kvm-clock scale (mul = 2^31, shift 0) is exact and
// guest time computed from the TSC never drifts from host time.
inline constexpr uint64_t kDefaultTscHz = 2'000'000'000;

// floor(a * b / c) without overflow (c != 0). Saturates at UINT64_MAX.
uint64_t mul_div(uint64_t a, uint64_t b, uint64_t c);
// ceil(a * b / c) without overflow (c != 0). Saturates at UINT64_MAX.
uint64_t mul_div_ceil(uint64_t a, uint64_t b, uint64_t c);

// The guest TSC counts from 0 at construction: tsc = (now - boot) * tsc_hz / 1e9.
class HostGuestClock final : public GuestClock {
 public:
  explicit HostGuestClock(uint64_t tsc_hz = kDefaultTscHz);

  uint64_t tsc_hz() const override { return tsc_hz_; }
  uint64_t read_tsc() const override;
  uint64_t now_ns() const override;

  // CLOCK_MONOTONIC at construction (guest TSC 0).
  uint64_t boot_ns() const { return boot_ns_; }
  // Continues a saved guest clock: guest time `guest_ns` is now (a restored VM's clock goes on
  // where it stopped). Only while no vCPU or timer runs.
  void continue_at(uint64_t guest_ns);

 private:
  uint64_t tsc_hz_;
  uint64_t boot_ns_;
};

// Host CLOCK_MONOTONIC and CLOCK_REALTIME in ns.
uint64_t host_monotonic_ns();
uint64_t host_realtime_ns();

// The host-monotonic time at which the guest TSC of `clock` reaches `tsc` (the first ns at which
// read_tsc() >= tsc); `now` if it already has.
uint64_t tsc_deadline_to_ns(const GuestClock& clock, uint64_t tsc);

}  // namespace keel::emu
