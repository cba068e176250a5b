// The virtio-pci transport, driven through its registers with virtio-rng behind it.
#include <gtest/gtest.h>

#include "devices/virtio/virtio_rng.h"
#include "virtio_harness.h"

namespace keel {
namespace {

using testing::Buf;
using testing::VirtioHarness;

constexpr uint8_t kLive = virtio::kStatusAcknowledge | virtio::kStatusDriver |
                          virtio::kStatusFeaturesOk | virtio::kStatusDriverOk;

TEST(VirtioPci, IdentifiesAsModernVirtioDevice) {
  VirtioHarness h(std::make_unique<VirtioRng>());
  EXPECT_EQ(h.cfg_read(0x00, 2), 0x1af4u);
  EXPECT_EQ(h.cfg_read(0x02, 2), 0x1044u);  // 0x1040 + entropy
  EXPECT_GE(h.cfg_read(0x08, 1), 1u);        // revision >= 1: modern only
  EXPECT_EQ(h.cfg_read(0x2e, 2), 0x1100u);
  EXPECT_TRUE(h.device_features() & virtio::bit(virtio::kFeatureVersion1));
  EXPECT_EQ(h.common(0x12, 2), 1u);  // num_queues
}

TEST(VirtioPci, NegotiatesFeaturesAndGoesLive) {
  VirtioHarness h(std::make_unique<VirtioRng>());
  EXPECT_EQ(h.init(), kLive);
  EXPECT_TRUE(h.transport->driver_features() & virtio::bit(virtio::kFeatureVersion1));
}

TEST(VirtioPci, RefusesFeaturesWithoutVersion1) {
  VirtioHarness h(std::make_unique<VirtioRng>());
  uint8_t status = h.init(~virtio::bit(virtio::kFeatureVersion1));
  EXPECT_FALSE(status & virtio::kStatusFeaturesOk);
}

TEST(VirtioPci, RefusesFeaturesThatWereNotOffered) {
  VirtioHarness h(std::make_unique<VirtioRng>());
  h.set_common(0x14, 1, virtio::kStatusAcknowledge | virtio::kStatusDriver);
  h.set_common(0x08, 4, 1);
  h.set_common(0x0c, 4, 1 | (1u << 3));  // VERSION_1 and an unoffered bit 35
  h.set_common(0x14, 1, virtio::kStatusAcknowledge | virtio::kStatusDriver | virtio::kStatusFeaturesOk);
  EXPECT_FALSE(h.status() & virtio::kStatusFeaturesOk);
}

TEST(VirtioPci, ResetReturnsToInitialState) {
  VirtioHarness h(std::make_unique<VirtioRng>());
  ASSERT_EQ(h.init(~0ull, {64}), kLive);
  h.set_common(0x14, 1, 0);
  EXPECT_EQ(h.status(), 0u);
  h.set_common(0x16, 2, 0);
  EXPECT_EQ(h.common(0x1c, 2), 0u);    // queue disabled
  EXPECT_EQ(h.common(0x18, 2), 256u);  // size back to the maximum
  EXPECT_EQ(h.common(0x1a, 2), virtio::kNoVector);
  EXPECT_EQ(h.transport->driver_features(), 0u);
  // And it comes up again.
  EXPECT_EQ(h.init(), kLive);
}

TEST(VirtioPci, QueueSizeNotPowerOfTwoNeedsReset) {
  VirtioHarness h(std::make_unique<VirtioRng>());
  uint8_t status = h.init(~0ull, {100});
  EXPECT_TRUE(status & virtio::kStatusNeedsReset);
  h.set_common(0x16, 2, 0);
  EXPECT_EQ(h.common(0x1c, 2), 0u);
  EXPECT_EQ(h.config_interrupts(), 1);
  // Reset clears it.
  h.set_common(0x14, 1, 0);
  EXPECT_EQ(h.init(), kLive);
}

TEST(VirtioPci, RingsOutsideRamNeedReset) {
  VirtioHarness h(std::make_unique<VirtioRng>());
  h.set_common(0x14, 1, virtio::kStatusAcknowledge | virtio::kStatusDriver);
  h.set_common(0x16, 2, 0);
  h.set_common(0x20, 4, 0xd000'0000);  // descriptor table in the MMIO hole
  h.set_common(0x1c, 2, 1);
  EXPECT_TRUE(h.status() & virtio::kStatusNeedsReset);
  EXPECT_EQ(h.common(0x1c, 2), 0u);
}

TEST(VirtioPci, VectorsTheTableLacksReadBackAsNoVector) {
  VirtioHarness h(std::make_unique<VirtioRng>());
  h.set_common(0x10, 2, 1);
  EXPECT_EQ(h.common(0x10, 2), 1u);
  h.set_common(0x10, 2, 2);  // rng has 2 vectors: config + 1 queue
  EXPECT_EQ(h.common(0x10, 2), virtio::kNoVector);
  h.set_common(0x16, 2, 0);
  h.set_common(0x1a, 2, 7);
  EXPECT_EQ(h.common(0x1a, 2), virtio::kNoVector);
  h.set_common(0x16, 2, 5);  // no such queue: reads zero, writes ignored
  EXPECT_EQ(h.common(0x18, 2), 0u);
}

TEST(VirtioPci, QueueLayoutIsFixedOnceEnabled) {
  VirtioHarness h(std::make_unique<VirtioRng>());
  ASSERT_EQ(h.init(~0ull, {32}), kLive);
  h.set_common(0x16, 2, 0);
  h.set_common(0x18, 2, 64);
  h.set_common(0x20, 4, 0x5000);
  EXPECT_EQ(h.common(0x18, 2), 32u);
  EXPECT_EQ(h.common(0x20, 4), h.queues[0].desc);
}

TEST(VirtioPci, SixtyFourBitRegistersTakeSplitAndByteWrites) {
  VirtioHarness h(std::make_unique<VirtioRng>());
  h.set_common(0x16, 2, 0);
  h.set_common(0x20, 4, 0x1234'5000);
  h.set_common(0x24, 4, 0x1);
  EXPECT_EQ(h.common(0x20, 8), 0x1'1234'5000ull);
  h.set_common(0x21, 1, 0x60);
  EXPECT_EQ(h.common(0x20, 4), 0x1234'6000u);
}

TEST(VirtioPci, IsrReadClears) {
  VirtioHarness h(std::make_unique<VirtioRng>());
  ASSERT_EQ(h.init(), kLive);
  uint64_t buf = h.alloc(16);
  h.add_chain(0, {{buf, 16, true}});
  h.kick(0);
  EXPECT_EQ(h.isr() & 1, 1);
  EXPECT_EQ(h.isr(), 0);
}

TEST(VirtioPci, PciConfigAccessCapabilityReachesTheRegisters) {
  VirtioHarness h(std::make_unique<VirtioRng>());
  uint8_t cap = 0;
  for (uint8_t c = h.cfg_read(0x34, 1); c; c = h.cfg_read(c + 1, 1))
    if (h.cfg_read(c, 1) == pci::kCapIdVendor && h.cfg_read(c + 3, 1) == 5) cap = c;
  ASSERT_NE(cap, 0);
  h.cfg_write(cap + 4, 1, VirtioPciDevice::kRegionsBar);
  h.cfg_write(cap + 8, 4, 0x12);  // num_queues
  h.cfg_write(cap + 12, 4, 2);
  EXPECT_EQ(h.cfg_read(cap + 16, 2), 1u);
  h.cfg_write(cap + 8, 4, 0x14);  // device_status
  h.cfg_write(cap + 12, 4, 1);
  h.cfg_write(cap + 16, 1, virtio::kStatusAcknowledge);
  EXPECT_EQ(h.status(), virtio::kStatusAcknowledge);
}

}  // namespace
}  // namespace keel
