// A GuestClock the test controls: time moves only when the test says so (no sleeps).
#pragma once

#include <atomic>
#include <cstdint>

#include "engine/emu/local_apic.h"
#include "engine/emu/platform/guest_clock.h"

namespace keel::emu::testing {

class FakeClock final : public GuestClock {
 public:
  explicit FakeClock(uint64_t start_ns = 5'000'000'000, uint64_t tsc_hz = kDefaultTscHz)
      : hz_(tsc_hz), ns_(start_ns) {}
  uint64_t tsc_hz() const override { return hz_; }
  uint64_t read_tsc() const override { return mul_div(ns_.load(), hz_, kNsPerSec); }
  uint64_t now_ns() const override { return ns_.load(); }

  void advance(uint64_t ns) { ns_ += ns; }
  void set(uint64_t ns) { ns_ = ns; }

 private:
  uint64_t hz_;
  std::atomic<uint64_t> ns_;
};

}  // namespace keel::emu::testing
