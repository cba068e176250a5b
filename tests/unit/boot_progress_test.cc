#include "devices/legacy/boot_progress.h"

#include <gtest/gtest.h>

namespace keel {
namespace {

TEST(BootProgress, RecordsCodesWithMonotonicTimestamps) {
  std::vector<BootProgress::Event> heard;
  BootProgress dev([&](const BootProgress::Event& e) { heard.push_back(e); });
  uint64_t before = BootProgress::now_ns();
  uint8_t code = BootProgress::kInitStarted;
  dev.write(0, {&code, 1});
  code = 7;
  dev.write(0, {&code, 1});
  uint64_t after = BootProgress::now_ns();
  auto events = dev.events();
  ASSERT_EQ(events.size(), 2u);
  EXPECT_EQ(events[0].code, 1);
  EXPECT_EQ(events[1].code, 7);
  EXPECT_GE(events[0].monotonic_ns, before);
  EXPECT_LE(events[0].monotonic_ns, events[1].monotonic_ns);
  EXPECT_LE(events[1].monotonic_ns, after);
  ASSERT_EQ(heard.size(), 2u);
  EXPECT_EQ(heard[0].code, 1);
  uint8_t last = 0;
  dev.read(0, {&last, 1});
  EXPECT_EQ(last, 7);
  EXPECT_STREQ(boot_progress_name(1), "init started");
}

TEST(BootProgress, IgnoresWideWritesAndBoundsItsLog) {
  BootProgress dev;
  const uint8_t wide[4] = {1, 2, 3, 4};
  dev.write(0, wide);
  dev.write(0, {});
  EXPECT_TRUE(dev.events().empty());
  uint8_t code = 9;
  for (size_t i = 0; i < BootProgress::kMaxEvents + 10; ++i) dev.write(0, {&code, 1});
  EXPECT_EQ(dev.events().size(), BootProgress::kMaxEvents);
  uint8_t r[2];
  dev.read(0, r);
  EXPECT_EQ(r[0], 9);
  EXPECT_EQ(r[1], 0xFF);
}

}  // namespace
}  // namespace keel
