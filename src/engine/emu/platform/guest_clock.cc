#include "engine/emu/platform/guest_clock.h"

#include <ctime>

#include "base/error.h"

namespace keel::emu {

namespace {

uint64_t read_clock(clockid_t id) {
  timespec ts{};
  if (::clock_gettime(id, &ts) != 0) throw_errno("clock_gettime");
  return static_cast<uint64_t>(ts.tv_sec) * kNsPerSec + static_cast<uint64_t>(ts.tv_nsec);
}

uint64_t saturate(unsigned __int128 v) {
  return v > UINT64_MAX ? UINT64_MAX : static_cast<uint64_t>(v);
}

}  // namespace

uint64_t mul_div(uint64_t a, uint64_t b, uint64_t c) {
  return saturate(static_cast<unsigned __int128>(a) * b / c);
}

uint64_t mul_div_ceil(uint64_t a, uint64_t b, uint64_t c) {
  unsigned __int128 p = static_cast<unsigned __int128>(a) * b;
  return saturate((p + c - 1) / c);
}

uint64_t host_monotonic_ns() { return read_clock(CLOCK_MONOTONIC); }
uint64_t host_realtime_ns() { return read_clock(CLOCK_REALTIME); }

HostGuestClock::HostGuestClock(uint64_t tsc_hz) : tsc_hz_(tsc_hz), boot_ns_(host_monotonic_ns()) {
  if (tsc_hz == 0) throw Error("guest TSC frequency must not be zero");
}

uint64_t HostGuestClock::now_ns() const { return host_monotonic_ns(); }

void HostGuestClock::continue_at(uint64_t guest_ns) { boot_ns_ = host_monotonic_ns() - guest_ns; }

uint64_t HostGuestClock::read_tsc() const {
  return mul_div(now_ns() - boot_ns_, tsc_hz_, kNsPerSec);
}

uint64_t tsc_deadline_to_ns(const GuestClock& clock, uint64_t tsc) {
  // Read the TSC first: `now` is then at or after the instant `tsc_now` describes, so the result
  // errs late by at most the few ns between the two reads, never early.
  uint64_t tsc_now = clock.read_tsc();
  uint64_t now = clock.now_ns();
  if (tsc <= tsc_now) return now;
  uint64_t delta = mul_div_ceil(tsc - tsc_now, kNsPerSec, clock.tsc_hz());
  return delta > kNever - now ? kNever - 1 : now + delta;
}

}  // namespace keel::emu
