#include <gtest/gtest.h>

#include <cstring>

#include "emu_platform_fake_clock.h"
#include "engine/emu/platform/kvm_clock.h"

namespace keel::emu {
namespace {

constexpr uint64_t kRam = uint64_t{1} << 20;
constexpr uint64_t kRealtime = 1'700'000'000'123'456'789;  // a fixed host wall time

class EmuPlatformKvmClockTest : public ::testing::Test {
 protected:
  PvclockVcpuTimeInfo info(uint64_t gpa) { return memory.read_obj<PvclockVcpuTimeInfo>(gpa); }

  GuestMemory memory{kRam};
  testing::FakeClock clock;
  KvmClock kvmclock{memory, clock, [] { return kRealtime; }};
};

TEST(EmuPlatformKvmClock, ScaleConvertsTicksToNsPrecisely) {
  for (uint64_t hz : {2'000'000'000ull, 1'000'000'000ull, 3'000'000'000ull, 2'400'000'000ull,
                      1'234'567'891ull, 25'000'000ull, 10'000'000'000ull, 999'999'999ull}) {
    SCOPED_TRACE(hz);
    PvclockScale s = pvclock_scale(hz);
    EXPECT_GE(s.mul, 1u << 31);  // full precision
    PvclockVcpuTimeInfo i{};
    i.tsc_to_system_mul = s.mul;
    i.tsc_shift = s.shift;
    // One hour of ticks converts to one hour within 2 ppb.
    uint64_t ticks = hz * 3600;
    double ns = static_cast<double>(pvclock_ns(i, ticks));
    EXPECT_NEAR(ns, 3600e9, 3600e9 * 2e-9);
  }
  PvclockScale exact = pvclock_scale(kDefaultTscHz);
  EXPECT_EQ(exact.mul, 1u << 31);
  EXPECT_EQ(exact.shift, 0);
  EXPECT_THROW(pvclock_scale(0), Error);
}

TEST(EmuPlatformKvmClock, HandlesOnlyItsMsrs) {
  EXPECT_TRUE(KvmClock::handles(0x4b564d00));
  EXPECT_TRUE(KvmClock::handles(0x4b564d01));
  EXPECT_TRUE(KvmClock::handles(0x11));
  EXPECT_TRUE(KvmClock::handles(0x12));
  EXPECT_FALSE(KvmClock::handles(0x10));
  EXPECT_FALSE(KvmClock::handles(0x4b564d02));
}

TEST_F(EmuPlatformKvmClockTest, UnknownMsrIsNotHandled) {
  uint64_t v = 7;
  EXPECT_FALSE(kvmclock.read_msr(0x1b, v));
  EXPECT_EQ(v, 7u);
  EXPECT_FALSE(kvmclock.write_msr(0x1b, 0x1000));
}

TEST_F(EmuPlatformKvmClockTest, SystemTimeStructureContents) {
  ASSERT_TRUE(kvmclock.write_msr(kMsrKvmSystemTimeNew, 0x2000 | 1));
  uint64_t v = 0;
  ASSERT_TRUE(kvmclock.read_msr(kMsrKvmSystemTimeNew, v));
  EXPECT_EQ(v, 0x2001u);
  PvclockVcpuTimeInfo i = info(0x2000);
  EXPECT_EQ(i.version % 2, 0u);
  EXPECT_NE(i.version, 0u);
  EXPECT_EQ(i.tsc_timestamp, clock.read_tsc());
  EXPECT_EQ(i.system_time, clock.now_ns());  // FakeClock: guest TSC origin is ns 0
  EXPECT_EQ(i.tsc_to_system_mul, 1u << 31);
  EXPECT_EQ(i.tsc_shift, 0);
  EXPECT_EQ(i.flags, kPvclockTscStableBit);
}

TEST_F(EmuPlatformKvmClockTest, GuestComputedTimeTracksHostClock) {
  ASSERT_TRUE(kvmclock.write_msr(kMsrKvmSystemTimeNew, 0x3000 | 1));
  PvclockVcpuTimeInfo i = info(0x3000);
  uint64_t t0 = clock.now_ns();
  uint64_t g0 = pvclock_ns(i, clock.read_tsc());
  for (uint64_t step : {1ull, 999ull, 1'000'000ull, 1'500'000'000ull, 86'400'000'000'000ull}) {
    clock.advance(step);
    // Without any rewrite of the structure, guest time advances exactly as host time.
    EXPECT_EQ(pvclock_ns(i, clock.read_tsc()) - g0, clock.now_ns() - t0);
  }
}

// A vCPU whose TSC was written (or restored from another engine) runs ahead of the clock's: the
// guest evaluates the structure with the TSC it reads, so the time it gets must not move.
TEST_F(EmuPlatformKvmClockTest, AnOffsetTscLeavesTheGuestsTimeWhereItWas) {
  const int64_t offset = int64_t{1} << 50;
  kvmclock.set_tsc_offset(offset);
  ASSERT_TRUE(kvmclock.write_msr(kMsrKvmSystemTimeNew, 0x5000 | 1));
  PvclockVcpuTimeInfo i = info(0x5000);
  EXPECT_EQ(i.tsc_timestamp, clock.read_tsc() + uint64_t(offset));
  EXPECT_EQ(pvclock_ns(i, clock.read_tsc() + uint64_t(offset)), clock.now_ns());
  clock.advance(1'000'000);
  EXPECT_EQ(pvclock_ns(i, clock.read_tsc() + uint64_t(offset)), clock.now_ns());
  // A new offset rewrites the enabled structure at once (KVM's clock update on a TSC write).
  kvmclock.set_tsc_offset(-int64_t(clock.read_tsc()) + 7);
  PvclockVcpuTimeInfo j = info(0x5000);
  EXPECT_GT(j.version, i.version);
  EXPECT_EQ(pvclock_ns(j, 7), clock.now_ns());
}

TEST_F(EmuPlatformKvmClockTest, GuestTimeTracksHostClockAtAnOddFrequency) {
  testing::FakeClock odd(7'000'000'000, 2'394'567'123);
  KvmClock kc(memory, odd, [] { return kRealtime; });
  ASSERT_TRUE(kc.write_msr(kMsrKvmSystemTime, 0x4000 | 1));  // legacy MSR
  PvclockVcpuTimeInfo i = info(0x4000);
  EXPECT_EQ(i.flags, kPvclockTscStableBit);
  for (uint64_t step : {1'000ull, 1'000'000'000ull, 3'600'000'000'000ull}) {
    odd.advance(step);
    double err = static_cast<double>(pvclock_ns(i, odd.read_tsc())) -
                 static_cast<double>(odd.now_ns());
    EXPECT_LT(std::abs(err), 10.0 + 2e-9 * static_cast<double>(odd.now_ns())) << step;
  }
}

TEST_F(EmuPlatformKvmClockTest, RewritesBumpTheVersionByTwo) {
  kvmclock.write_msr(kMsrKvmSystemTimeNew, 0x2001);
  uint32_t v1 = info(0x2000).version;
  clock.advance(1000);
  kvmclock.refresh();
  PvclockVcpuTimeInfo i = info(0x2000);
  EXPECT_EQ(i.version, v1 + 2);
  EXPECT_EQ(i.tsc_timestamp, clock.read_tsc());
}

TEST_F(EmuPlatformKvmClockTest, DisabledWritesNothing) {
  std::vector<uint8_t> pattern(32, 0xAB);
  memory.write(0x2000, pattern.data(), pattern.size());
  ASSERT_TRUE(kvmclock.write_msr(kMsrKvmSystemTimeNew, 0x2000));  // enable bit clear
  std::vector<uint8_t> after(32);
  memory.read(0x2000, after.data(), after.size());
  EXPECT_EQ(after, pattern);
  uint64_t v = 0;
  kvmclock.read_msr(kMsrKvmSystemTimeNew, v);
  EXPECT_EQ(v, 0x2000u);
}

TEST_F(EmuPlatformKvmClockTest, WallClockIsHostRealtimeAtSystemTimeZero) {
  ASSERT_TRUE(kvmclock.write_msr(kMsrKvmWallClockNew, 0x1000));
  auto wc = memory.read_obj<PvclockWallClock>(0x1000);
  uint64_t boot_wall = kRealtime - clock.now_ns();
  EXPECT_EQ(wc.sec, boot_wall / kNsPerSec);
  EXPECT_EQ(wc.nsec, boot_wall % kNsPerSec);
  EXPECT_EQ(wc.version % 2, 0u);
  EXPECT_NE(wc.version, 0u);
  // Wall clock + guest system time = host realtime.
  kvmclock.write_msr(kMsrKvmSystemTimeNew, 0x2001);
  PvclockVcpuTimeInfo i = info(0x2000);
  EXPECT_EQ(wc.sec * kNsPerSec + wc.nsec + pvclock_ns(i, clock.read_tsc()), kRealtime);
  // The legacy MSR fills the same layout; an odd version left in memory is made even.
  uint32_t odd = 5;
  memory.write_obj(0x1100, odd);
  ASSERT_TRUE(kvmclock.write_msr(kMsrKvmWallClock, 0x1100));
  EXPECT_EQ(memory.read_obj<PvclockWallClock>(0x1100).version, 6u);
}

TEST_F(EmuPlatformKvmClockTest, OutOfRamAddressesWriteNothingAndDoNotCrash) {
  for (uint64_t gpa : std::initializer_list<uint64_t>{kRam, kRam - 8, kRam - 11, kRam - 1, 0xFEE00000ull, 0xFFFFFFFFFFFFFFF0ull,
                       0xFFFFFFFFFFFFFFFFull}) {
    SCOPED_TRACE(gpa);
    EXPECT_TRUE(kvmclock.write_msr(kMsrKvmSystemTimeNew, gpa | 1));
    EXPECT_TRUE(kvmclock.write_msr(kMsrKvmWallClockNew, gpa));
    kvmclock.refresh();
  }
  // The last 32 bytes of RAM are still usable, and untouched by the straddling attempts above.
  EXPECT_EQ(memory.read_obj<uint64_t>(kRam - 8), 0u);
  EXPECT_TRUE(kvmclock.write_msr(kMsrKvmSystemTimeNew, (kRam - 32) | 1));
  EXPECT_EQ(info(kRam - 32).tsc_to_system_mul, 1u << 31);
}

}  // namespace
}  // namespace keel::emu
