// Dirty page logging (live migration) on each engine with a purpose-built guest: the pages it
// stores to are in the log taken after the stores, and only those.
#include <gtest/gtest.h>

#include "guest_harness.h"

namespace keel::guest_test {
namespace {

class DirtyLog : public testing::TestWithParam<Accel> {};
INSTANTIATE_TEST_SUITE_P(Engines, DirtyLog, testing::Values(Accel::kKvm, Accel::kEmu),
                         [](const auto& info) { return info.param == Accel::kKvm ? "kvm" : "emu"; });

bool dirty(const std::vector<uint64_t>& bits, uint64_t gpa) {
  uint64_t p = gpa >> 12;  // below the MMIO hole, RAM offset = guest-physical address
  return p / 64 < bits.size() && ((bits[p / 64] >> (p % 64)) & 1);
}

TEST_P(DirtyLog, TheGuestsStoresAreLoggedAndALogTakenIsCleared) {
  if (auto why = engine_unavailable(GetParam())) GTEST_SKIP() << *why;
  GuestHarness h(GetParam(), "dirty_pages");
  std::vector<std::vector<uint64_t>> logs;
  h.pio().add(0x50C, 1, std::make_shared<OnWrite>([&] { logs.push_back(h.engine().take_dirty_log()); }));
  if (std::string why = h.engine().start_dirty_log(); !why.empty()) GTEST_SKIP() << why;
  auto result = h.run();
  h.engine().stop_dirty_log();
  ASSERT_EQ(result.status, 0) << result.summary();
  ASSERT_EQ(logs.size(), 2u);
  EXPECT_TRUE(dirty(logs[0], 0x400000));
  EXPECT_TRUE(dirty(logs[0], 0x403000));
  EXPECT_FALSE(dirty(logs[0], 0x401000));
  EXPECT_FALSE(dirty(logs[0], 0x402000));
  EXPECT_TRUE(dirty(logs[1], 0x400000)) << "written again after the first log was taken";
  EXPECT_TRUE(dirty(logs[1], 0x401000));
  EXPECT_FALSE(dirty(logs[1], 0x403000)) << "a page is in the log taken after its store only";
  EXPECT_FALSE(dirty(logs[1], 0x402000));
}

}  // namespace
}  // namespace keel::guest_test
