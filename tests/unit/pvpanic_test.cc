#include "devices/legacy/pvpanic.h"

#include <gtest/gtest.h>

#include "fake_devices.h"

namespace keel {
namespace {

// QEMU's ISA pvpanic as Linux's pvpanic driver uses it: it reads the supported events, and writes
// PVPANIC_PANICKED (1) from its panic notifier or PVPANIC_CRASH_LOADED (2) when kdump takes over.
TEST(PvPanicTest, ReadsTheSupportedEventsAndReportsAPanic) {
  testing::RecordingPower power;
  PvPanic device(power);
  uint8_t events = 0;
  device.read(0, {&events, 1});
  EXPECT_EQ(events, 3);
  const uint8_t crash_loaded = 2;
  device.write(0, {&crash_loaded, 1});
  EXPECT_TRUE(power.requests.empty());  // a crash kernel runs on: nothing stops
  const uint8_t panicked = 1;
  device.write(0, {&panicked, 1});
  ASSERT_EQ(power.requests.size(), 1u);
  EXPECT_EQ(power.requests[0].first, StopReason::kPanic);
  EXPECT_NE(power.requests[0].second.find("panicked"), std::string::npos);
}

}  // namespace
}  // namespace keel
