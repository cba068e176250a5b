#include "memory/guest_memory.h"

#include <gtest/gtest.h>

namespace keel {
namespace {

TEST(GuestMemory, LaysOutRamAroundTheMmioHole) {
  GuestMemory mem(kMmioHoleStart + 2 * kPageSize);
  ASSERT_EQ(mem.regions().size(), 2u);
  EXPECT_EQ(mem.regions()[0].gpa, 0u);
  EXPECT_EQ(mem.regions()[0].size, kMmioHoleStart);
  EXPECT_EQ(mem.regions()[1].gpa, kMmioHoleEnd);
  EXPECT_EQ(mem.regions()[1].size, 2 * kPageSize);
  EXPECT_EQ(mem.end(), kMmioHoleEnd + 2 * kPageSize);
}

TEST(GuestMemory, RefusesBadSizes) {
  EXPECT_THROW(GuestMemory(0), Error);
  EXPECT_THROW(GuestMemory(4097), Error);
}

TEST(GuestMemory, ReadsBackWhatWasWritten) {
  GuestMemory mem(1 << 20);
  mem.write_obj<uint64_t>(0x1000, 0x1122334455667788ull);
  EXPECT_EQ(mem.read_obj<uint64_t>(0x1000), 0x1122334455667788ull);
  EXPECT_EQ(mem.read_obj<uint8_t>(0x1000), 0x88);
}

TEST(GuestMemory, RefusesAccessOutsideRam) {
  GuestMemory mem(1 << 20);
  uint8_t buf[16];
  EXPECT_THROW(mem.read((1 << 20) - 8, buf, 16), GuestMemoryError);
  EXPECT_THROW(mem.read(~0ull - 4, buf, 16), GuestMemoryError);  // wraps around
  EXPECT_THROW(mem.write(kMmioHoleStart, buf, 1), GuestMemoryError);
  EXPECT_EQ(mem.host_ptr(1 << 20, 1), nullptr);
  EXPECT_NE(mem.host_ptr((1 << 20) - 1, 1), nullptr);
}

TEST(GuestMemory, ReportsWritesToTheObserver) {
  GuestMemory mem(1 << 20);
  uint64_t seen_gpa = 0, seen_len = 0;
  mem.set_write_observer([&](uint64_t gpa, uint64_t len) {
    seen_gpa = gpa;
    seen_len = len;
  });
  mem.write_obj<uint32_t>(0x2000, 1);
  EXPECT_EQ(seen_gpa, 0x2000u);
  EXPECT_EQ(seen_len, 4u);
}

}  // namespace
}  // namespace keel
