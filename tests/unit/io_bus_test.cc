#include "bus/io_bus.h"

#include <gtest/gtest.h>

#include "base/error.h"

namespace keel {
namespace {

class Recorder : public BusDevice {
 public:
  void read(uint64_t offset, std::span<uint8_t> data) override {
    last_offset = offset;
    for (auto& b : data) b = 0x5a;
  }
  void write(uint64_t offset, std::span<const uint8_t> data) override {
    last_offset = offset;
    last_size = data.size();
  }
  uint64_t last_offset = ~0ull;
  size_t last_size = 0;
};

TEST(IoBus, DispatchesWithOffsetRelativeToBase) {
  IoBus bus("pio");
  auto dev = std::make_shared<Recorder>();
  bus.add(0x3f8, 8, dev);
  uint8_t v[2] = {1, 2};
  EXPECT_TRUE(bus.write(0x3fa, v));
  EXPECT_EQ(dev->last_offset, 2u);
  EXPECT_EQ(dev->last_size, 2u);
  uint8_t r[4];
  EXPECT_TRUE(bus.read(0x3fc, r));
  EXPECT_EQ(r[3], 0x5a);
}

TEST(IoBus, UnclaimedReadsAreAllOnes) {
  IoBus bus("pio");
  uint8_t r[2] = {0, 0};
  EXPECT_FALSE(bus.read(0x80, r));
  EXPECT_EQ(r[0], 0xff);
  EXPECT_EQ(r[1], 0xff);
}

TEST(IoBus, AccessStraddlingTheEndIsUnclaimed) {
  IoBus bus("mmio");
  auto dev = std::make_shared<Recorder>();
  bus.add(0x1000, 4, dev);
  uint8_t r[4];
  EXPECT_FALSE(bus.read(0x1002, r));
}

TEST(IoBus, RefusesOverlapsAndEmptyRanges) {
  IoBus bus("pio");
  auto dev = std::make_shared<Recorder>();
  bus.add(0x100, 0x10, dev);
  EXPECT_THROW(bus.add(0x108, 0x10, dev), Error);
  EXPECT_THROW(bus.add(0xf8, 0x10, dev), Error);
  EXPECT_THROW(bus.add(0x200, 0, dev), Error);
  bus.add(0x110, 0x10, dev);
  EXPECT_TRUE(bus.remove(0x100));
  bus.add(0x100, 0x10, dev);
}

}  // namespace
}  // namespace keel
