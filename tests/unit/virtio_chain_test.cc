#include <gtest/gtest.h>

#include "devices/virtio/descriptor_chain.h"
#include "devices/virtio/split_queue.h"

namespace keel {
namespace {

class ChainTest : public ::testing::Test {
 protected:
  static constexpr uint64_t kTable = 0x1000;
  static constexpr uint16_t kSize = 8;
  ChainTest() : mem(1 << 20) {}
  void desc(uint16_t i, uint64_t addr, uint32_t len, uint16_t flags, uint16_t next = 0,
            uint64_t table = kTable) {
    mem.write_obj(table + 16ull * i, VirtqDesc{addr, len, flags, next});
  }
  DescriptorChain walk(uint16_t head, bool indirect = true) {
    return walk_chain(mem, kTable, kSize, head, indirect);
  }
  GuestMemory mem;
};

TEST_F(ChainTest, WalksReadableThenWritableBuffers) {
  desc(0, 0x2000, 16, kDescFlagNext, 3);
  desc(3, 0x3000, 512, kDescFlagNext | kDescFlagWrite, 5);
  desc(5, 0x4000, 1, kDescFlagWrite);
  DescriptorChain c = walk(0);
  ASSERT_EQ(c.readable.size(), 1u);
  ASSERT_EQ(c.writable.size(), 2u);
  EXPECT_EQ(c.readable_bytes, 16u);
  EXPECT_EQ(c.writable_bytes, 513u);
  EXPECT_EQ(c.writable[1].gpa, 0x4000u);
}

TEST_F(ChainTest, FollowsIndirectTables) {
  uint64_t table = 0x8000;
  desc(0, 0x2000, 16, kDescFlagNext, 1, table);
  desc(1, 0x3000, 8, kDescFlagWrite, 0, table);
  desc(2, table, 32, kDescFlagIndirect);
  DescriptorChain c = walk(2);
  EXPECT_EQ(c.head, 2);
  EXPECT_EQ(c.readable_bytes, 16u);
  EXPECT_EQ(c.writable_bytes, 8u);
}

TEST_F(ChainTest, RefusesLoops) {
  desc(0, 0x2000, 16, kDescFlagNext, 1);
  desc(1, 0x2000, 16, kDescFlagNext, 0);
  EXPECT_THROW(walk(0), ChainError);
  desc(4, 0x2000, 16, kDescFlagNext, 4);  // self loop
  EXPECT_THROW(walk(4), ChainError);
}

TEST_F(ChainTest, RefusesIndicesOutsideTheQueue) {
  EXPECT_THROW(walk(kSize), ChainError);
  desc(0, 0x2000, 16, kDescFlagNext, kSize);
  EXPECT_THROW(walk(0), ChainError);
}

TEST_F(ChainTest, RefusesBuffersOutsideRam) {
  desc(0, (1 << 20) - 8, 16, 0);  // straddles the end of RAM
  EXPECT_THROW(walk(0), ChainError);
  desc(0, 0xffff'ffff'ffff'fff0ull, 32, 0);  // wraps around
  EXPECT_THROW(walk(0), ChainError);
  desc(0, 0xd000'0000, 16, 0);  // in the MMIO hole
  EXPECT_THROW(walk(0), ChainError);
  // The descriptor table itself outside RAM.
  EXPECT_THROW(walk_chain(mem, (1 << 20) - 16, kSize, 1, true), ChainError);
}

TEST_F(ChainTest, RefusesReadableAfterWritable) {
  desc(0, 0x2000, 16, kDescFlagWrite | kDescFlagNext, 1);
  desc(1, 0x3000, 16, 0);
  EXPECT_THROW(walk(0), ChainError);
}

TEST_F(ChainTest, RefusesBadIndirectTables) {
  uint64_t table = 0x8000;
  desc(0, 0x2000, 16, 0, 0, table);
  desc(1, table, 16, kDescFlagIndirect);
  EXPECT_THROW(walk(1, /*indirect=*/false), ChainError);  // not negotiated
  desc(1, table, 20, kDescFlagIndirect);                   // not a multiple of 16
  EXPECT_THROW(walk(1), ChainError);
  desc(1, table, 0, kDescFlagIndirect);
  EXPECT_THROW(walk(1), ChainError);
  desc(1, table, 16, kDescFlagIndirect | kDescFlagNext, 2);  // INDIRECT with NEXT
  EXPECT_THROW(walk(1), ChainError);
  desc(1, table, 16 * (kMaxIndirectEntries + 1), kDescFlagIndirect);
  EXPECT_THROW(walk(1), ChainError);
  desc(0, table, 16, kDescFlagIndirect, 0, table);  // nested
  desc(1, table, 16, kDescFlagIndirect);
  EXPECT_THROW(walk(1), ChainError);
  desc(0, 0x2000, 16, kDescFlagNext, 0, table);  // loop inside the table
  EXPECT_THROW(walk(1), ChainError);
  desc(0, 0x2000, 16, kDescFlagNext, 1, table);  // next past the table
  EXPECT_THROW(walk(1), ChainError);
  desc(1, (1 << 20) - 16, 32, kDescFlagIndirect);  // table outside RAM
  EXPECT_THROW(walk(1), ChainError);
}

TEST_F(ChainTest, CopiesAcrossBuffers) {
  std::vector<GuestBuffer> bufs = {{0x2000, 3}, {0x3000, 0}, {0x4000, 5}};
  const char text[] = "abcdefgh";
  EXPECT_EQ(write_to_buffers(mem, bufs, 1, text, 8), 7u);
  char out[8] = {};
  EXPECT_EQ(read_from_buffers(mem, bufs, 0, out, 8), 8u);
  EXPECT_EQ(out[0], 0);
  EXPECT_EQ(std::string(out + 1, 7), "abcdefg");
}

TEST(SplitQueueLayout, ValidatesSizeAlignmentAndRam) {
  GuestMemory mem(1 << 20);
  SplitQueue q(256);
  q.set_desc_addr(0x1000);
  q.set_avail_addr(0x2000);
  q.set_used_addr(0x3000);
  EXPECT_EQ(q.validate(mem), "");
  q.set_size(100);
  EXPECT_NE(q.validate(mem).find("power of two"), std::string::npos);
  EXPECT_THROW(q.enable(mem), QueueError);
  EXPECT_FALSE(q.enabled());
  q.set_size(512);
  EXPECT_NE(q.validate(mem).find("maximum"), std::string::npos);
  q.set_size(0);
  EXPECT_NE(q.validate(mem), "");
  q.set_size(256);
  q.set_used_addr(0x3002);
  EXPECT_NE(q.validate(mem), "");
  q.set_used_addr((1 << 20) - 64);
  EXPECT_NE(q.validate(mem).find("outside"), std::string::npos);
}

}  // namespace
}  // namespace keel
