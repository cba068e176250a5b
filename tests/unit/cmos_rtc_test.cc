#include "devices/legacy/cmos_rtc.h"

#include <gtest/gtest.h>

namespace keel {
namespace {

// 2024-02-29 13:45:07 UTC, a Thursday.
constexpr time_t kT = 1709214307;

class CmosRtcTest : public ::testing::Test {
 protected:
  CmosRtcTest()
      : rtc(512ull << 20, 1ull << 30, [this] { return now; }) {}
  uint8_t reg(uint8_t index) {
    uint8_t i = index;
    rtc.write(0, {&i, 1});
    uint8_t v = 0;
    rtc.read(1, {&v, 1});
    return v;
  }
  void set(uint8_t index, uint8_t value) {
    rtc.write(0, {&index, 1});
    rtc.write(1, {&value, 1});
  }

  timespec now{kT, 0};
  CmosRtc rtc;
};

TEST_F(CmosRtcTest, BcdTimeIn24HourMode) {
  EXPECT_EQ(reg(CmosRtc::kSeconds), 0x07);
  EXPECT_EQ(reg(CmosRtc::kMinutes), 0x45);
  EXPECT_EQ(reg(CmosRtc::kHours), 0x13);
  EXPECT_EQ(reg(CmosRtc::kWeekday), 0x05);  // Sunday = 1
  EXPECT_EQ(reg(CmosRtc::kDay), 0x29);
  EXPECT_EQ(reg(CmosRtc::kMonth), 0x02);
  EXPECT_EQ(reg(CmosRtc::kYear), 0x24);
  EXPECT_EQ(reg(CmosRtc::kCentury), 0x20);
}

TEST_F(CmosRtcTest, BinaryAnd12HourModes) {
  set(CmosRtc::kStatusB, CmosRtc::kStatusBBinary | CmosRtc::kStatusB24Hour);
  EXPECT_EQ(reg(CmosRtc::kMinutes), 45);
  EXPECT_EQ(reg(CmosRtc::kHours), 13);
  set(CmosRtc::kStatusB, CmosRtc::kStatusBBinary);
  EXPECT_EQ(reg(CmosRtc::kHours), 0x80 | 1);  // 1 PM
  set(CmosRtc::kStatusB, 0);
  EXPECT_EQ(reg(CmosRtc::kHours), 0x81);  // BCD 1 PM
  now.tv_sec = kT - 13 * 3600;  // 00:45 is 12 AM
  EXPECT_EQ(reg(CmosRtc::kHours), 0x12);
}

TEST_F(CmosRtcTest, TimeFollowsTheHostClock) {
  now.tv_sec += 60;
  EXPECT_EQ(reg(CmosRtc::kMinutes), 0x46);
}

TEST_F(CmosRtcTest, UpdateInProgressDuringTheLast244Microseconds) {
  now.tv_nsec = 500'000'000;
  EXPECT_EQ(reg(CmosRtc::kStatusA) & 0x80, 0);
  now.tv_nsec = 999'800'000;
  EXPECT_EQ(reg(CmosRtc::kStatusA) & 0x80, 0x80);
  EXPECT_EQ(reg(CmosRtc::kStatusA) & 0x7F, 0x26);
}

TEST_F(CmosRtcTest, StatusDReportsValidTimeAndCIsClearOnRead) {
  EXPECT_EQ(reg(CmosRtc::kStatusD), 0x80);
  EXPECT_EQ(reg(CmosRtc::kStatusC), 0x00);
}

TEST_F(CmosRtcTest, GuestSetTimeKeepsAnOffsetFromTheHost) {
  set(CmosRtc::kStatusB, CmosRtc::kStatusBSet | CmosRtc::kStatusB24Hour);
  set(CmosRtc::kHours, 0x08);
  set(CmosRtc::kYear, 0x30);
  set(CmosRtc::kStatusB, CmosRtc::kStatusB24Hour);
  EXPECT_EQ(reg(CmosRtc::kHours), 0x08);
  EXPECT_EQ(reg(CmosRtc::kYear), 0x30);
  now.tv_sec += 3600;
  EXPECT_EQ(reg(CmosRtc::kHours), 0x09);
}

TEST_F(CmosRtcTest, NmiMaskBitIsKeptApartFromTheIndex) {
  EXPECT_FALSE(rtc.nmi_masked());
  uint8_t idx = 0x80 | CmosRtc::kMinutes;
  rtc.write(0, {&idx, 1});
  EXPECT_TRUE(rtc.nmi_masked());
  uint8_t v = 0;
  rtc.read(1, {&v, 1});
  EXPECT_EQ(v, 0x45);
  reg(CmosRtc::kSeconds);
  EXPECT_FALSE(rtc.nmi_masked());
}

TEST_F(CmosRtcTest, MemorySizeRegisters) {
  EXPECT_EQ(reg(0x15) | reg(0x16) << 8, 640);
  EXPECT_EQ(reg(0x17) | reg(0x18) << 8, 0xFC00);  // capped at 63 MiB
  EXPECT_EQ(reg(0x30) | reg(0x31) << 8, 0xFC00);
  EXPECT_EQ(reg(0x34) | reg(0x35) << 8, (512 - 16) * 16);  // 64 KiB blocks above 16 MiB
  EXPECT_EQ(reg(0x5B) | reg(0x5C) << 8 | reg(0x5D) << 16, 1 << 14);  // 1 GiB above 4 GiB
}

TEST_F(CmosRtcTest, CmosMemoryIsReadWrite) {
  set(0x40, 0xAB);
  EXPECT_EQ(reg(0x40), 0xAB);
  set(0x7F, 0xCD);
  EXPECT_EQ(reg(0x7F), 0xCD);
}

TEST_F(CmosRtcTest, GarbageAndOddSizedAccessesAreHarmless) {
  set(CmosRtc::kMonth, 0xFF);  // not BCD: normalised, never a crash
  set(CmosRtc::kSeconds, 0x99);
  reg(CmosRtc::kMonth);
  const uint8_t wide[2] = {CmosRtc::kStatusD, 0x00};
  rtc.write(0, wide);  // ignored
  rtc.write(1, {});
  uint8_t r[4];
  rtc.read(0, r);
  EXPECT_EQ(r[0], 0xFF);
  rtc.read(1, {});
}

}  // namespace
}  // namespace keel
