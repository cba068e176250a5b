#include <gtest/gtest.h>

#include "devices/virtio/virtio_rng.h"
#include "virtio_harness.h"

namespace keel {
namespace {

using testing::VirtioHarness;

class VirtioRngTest : public ::testing::Test {
 protected:
  VirtioRngTest() : h(std::make_unique<VirtioRng>()) {}
  void SetUp() override { ASSERT_TRUE(h.init(features) & virtio::kStatusDriverOk); }
  uint64_t features = ~virtio::bit(virtio::kFeatureRingEventIdx);
  VirtioHarness h;
};

TEST_F(VirtioRngTest, FillsWritableBuffersWithEntropy) {
  uint64_t a = h.alloc(64), b = h.alloc(64);
  uint16_t head = h.add_chain(0, {{a, 32, true}, {b, 64, true}});
  h.kick(0);
  auto used = h.get_used(0);
  ASSERT_TRUE(used);
  EXPECT_EQ(used->id, head);
  EXPECT_EQ(used->len, 96u);
  EXPECT_EQ(h.interrupts(0), 1);
  std::vector<uint8_t> data(64);
  h.memory.read(b, data.data(), 64);
  EXPECT_NE(std::count(data.begin(), data.end(), 0), 64);
}

TEST_F(VirtioRngTest, ServesIndirectChains) {
  uint64_t a = h.alloc(16);
  uint16_t head = h.add_indirect_chain(0, {{a, 8, true}, {a + 8, 8, true}});
  h.kick(0);
  auto used = h.get_used(0);
  ASSERT_TRUE(used);
  EXPECT_EQ(used->id, head);
  EXPECT_EQ(used->len, 16u);
}

TEST_F(VirtioRngTest, RefusesMalformedChainsAndGoesOn) {
  uint64_t a = h.alloc(64);
  // A loop: descriptors 0 -> 1 -> 0.
  h.write_desc(0, 0, a, 8, kDescFlagWrite | kDescFlagNext, 1);
  h.write_desc(0, 1, a, 8, kDescFlagWrite | kDescFlagNext, 0);
  h.make_available(0, 0);
  // A buffer outside RAM.
  h.write_desc(0, 2, 0x4000'0000, 8, kDescFlagWrite, 0);
  h.make_available(0, 2);
  // A device-readable buffer (wrong direction for an entropy request).
  h.write_desc(0, 3, a, 8, 0, 0);
  h.make_available(0, 3);
  h.queues[0].next_desc = 4;
  uint16_t good = h.add_chain(0, {{a, 16, true}});
  h.kick(0);
  for (uint16_t bad : {0, 2, 3}) {
    auto used = h.get_used(0);
    ASSERT_TRUE(used);
    EXPECT_EQ(used->id, bad);
    EXPECT_EQ(used->len, 0u);
  }
  auto used = h.get_used(0);
  ASSERT_TRUE(used);
  EXPECT_EQ(used->id, good);
  EXPECT_EQ(used->len, 16u);
  EXPECT_FALSE(h.status() & virtio::kStatusNeedsReset);
}

TEST_F(VirtioRngTest, AvailableIndexBeyondQueueSizeNeedsReset) {
  h.memory.write_obj<uint16_t>(h.queues[0].avail + 2, h.queues[0].size + 1);
  h.kick(0);
  EXPECT_TRUE(h.status() & virtio::kStatusNeedsReset);
  EXPECT_EQ(h.config_interrupts(), 1);
  EXPECT_EQ(h.used_idx(0), 0);
  // The queue is dead until reset: further kicks do nothing and do not crash.
  h.kick(0);
  EXPECT_EQ(h.used_idx(0), 0);
}

TEST_F(VirtioRngTest, HeadIndexOutOfRangeNeedsReset) {
  h.make_available(0, 4000);
  h.kick(0);
  EXPECT_TRUE(h.status() & virtio::kStatusNeedsReset);
}

TEST_F(VirtioRngTest, CapsOversizedRequests) {
  uint64_t a = h.alloc(1 << 20);
  h.add_chain(0, {{a, 1 << 20, true}});
  h.kick(0);
  auto used = h.get_used(0);
  ASSERT_TRUE(used);
  EXPECT_EQ(used->len, VirtioRng::kMaxRequestBytes);
}

TEST_F(VirtioRngTest, NoInterruptFlagSuppressesInterrupts) {
  h.memory.write_obj<uint16_t>(h.queues[0].avail, 1);  // VRING_AVAIL_F_NO_INTERRUPT
  uint64_t a = h.alloc(8);
  h.add_chain(0, {{a, 8, true}});
  h.kick(0);
  EXPECT_TRUE(h.get_used(0));
  EXPECT_EQ(h.interrupts(0), 0);
}

class VirtioRngEventIdxTest : public VirtioRngTest {
 protected:
  VirtioRngEventIdxTest() { features = ~0ull; }
};

TEST_F(VirtioRngEventIdxTest, UsedEventSuppressesInterruptsUntilReached) {
  ASSERT_TRUE(h.transport->driver_features() & virtio::bit(virtio::kFeatureRingEventIdx));
  uint64_t a = h.alloc(8);
  h.set_used_event(0, 1);  // interrupt only once the used index passes 1
  h.add_chain(0, {{a, 8, true}});
  h.kick(0);
  EXPECT_EQ(h.used_idx(0), 1);
  EXPECT_EQ(h.interrupts(0), 0);
  h.add_chain(0, {{a, 8, true}});
  h.kick(0);
  EXPECT_EQ(h.used_idx(0), 2);
  EXPECT_EQ(h.interrupts(0), 1);
  // The device asks to be kicked for the next available entry (avail_event).
  uint16_t avail_event = h.memory.read_obj<uint16_t>(h.queues[0].used + 4 + 8 * h.queues[0].size);
  EXPECT_EQ(avail_event, 2);
}

}  // namespace
}  // namespace keel
