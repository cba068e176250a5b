#include <gtest/gtest.h>

#include "base/error.h"
#include "emu_platform_fake_clock.h"
#include "engine/emu/platform/guest_clock.h"

namespace keel::emu {
namespace {

TEST(EmuPlatformClock, MulDivIsExactAndSaturates) {
  EXPECT_EQ(mul_div(3, 5, 2), 7u);
  EXPECT_EQ(mul_div_ceil(3, 5, 2), 8u);
  EXPECT_EQ(mul_div(UINT64_MAX, 1000, 1000), UINT64_MAX);
  EXPECT_EQ(mul_div(UINT64_MAX, 2, 1), UINT64_MAX);  // saturates, does not wrap
  EXPECT_EQ(mul_div(1ull << 62, 4, 8), 1ull << 61);
}

TEST(EmuPlatformClock, HostClockTscTracksMonotonicTime) {
  HostGuestClock clock(2'000'000'000);
  EXPECT_EQ(clock.tsc_hz(), 2'000'000'000u);
  uint64_t before = clock.now_ns();
  uint64_t tsc = clock.read_tsc();
  uint64_t after = clock.now_ns();
  // tsc = (t - boot) * 2 for some t in [before, after].
  EXPECT_GE(tsc, (before - clock.boot_ns()) * 2);
  EXPECT_LE(tsc, (after - clock.boot_ns()) * 2);
  EXPECT_GE(clock.read_tsc(), tsc);  // monotonic
}

TEST(EmuPlatformClock, HostClockIsHostMonotonic) {
  HostGuestClock clock;
  uint64_t a = host_monotonic_ns();
  uint64_t b = clock.now_ns();
  uint64_t c = host_monotonic_ns();
  EXPECT_LE(a, b);
  EXPECT_LE(b, c);
}

TEST(EmuPlatformClock, ZeroFrequencyIsRefused) { EXPECT_THROW(HostGuestClock(0), Error); }

TEST(EmuPlatformClock, TscDeadlineToNsIsTheFirstNsAtWhichTheTscReachesIt) {
  testing::FakeClock clock(1'000'000'000, 3'000'000'000);  // 3 ticks per ns
  uint64_t tsc = clock.read_tsc();
  EXPECT_EQ(tsc_deadline_to_ns(clock, tsc), clock.now_ns());       // reached now
  EXPECT_EQ(tsc_deadline_to_ns(clock, tsc - 100), clock.now_ns());  // in the past
  EXPECT_EQ(tsc_deadline_to_ns(clock, tsc + 3), clock.now_ns() + 1);
  EXPECT_EQ(tsc_deadline_to_ns(clock, tsc + 4), clock.now_ns() + 2);  // rounds up, never early
  uint64_t at = tsc_deadline_to_ns(clock, tsc + 3'000'000'000);
  EXPECT_EQ(at, clock.now_ns() + 1'000'000'000);
  EXPECT_LT(tsc_deadline_to_ns(clock, UINT64_MAX), kNever);  // no overflow
}

}  // namespace
}  // namespace keel::emu
