#include "devices/legacy/i8042.h"

#include <gtest/gtest.h>

#include "fake_devices.h"

namespace keel {
namespace {

class I8042Test : public ::testing::Test {
 protected:
  I8042Test() : kbc(power, IrqLine(&irqs, 1), IrqLine(&irqs, 12)) {}
  uint8_t status() { return inb(4); }
  uint8_t data() { return inb(0); }
  uint8_t inb(uint64_t off) {
    uint8_t v = 0;
    kbc.read(off, {&v, 1});
    return v;
  }
  void command(uint8_t c) { kbc.write(4, {&c, 1}); }
  void outb(uint8_t v) { kbc.write(0, {&v, 1}); }

  testing::RecordingInterrupts irqs;
  testing::RecordingPower power;
  I8042 kbc;
};

TEST_F(I8042Test, EmptyControllerStatus) {
  EXPECT_EQ(status() & I8042::kStatusOutputFull, 0);
  EXPECT_NE(status() & I8042::kStatusSystem, 0);
  EXPECT_NE(status(), 0xFF);  // Linux takes 0xFF for "no controller"
}

TEST_F(I8042Test, CommandByteReadWrite) {
  command(0x20);
  EXPECT_NE(status() & I8042::kStatusOutputFull, 0);
  EXPECT_EQ(data(), 0x45);
  EXPECT_EQ(status() & I8042::kStatusOutputFull, 0);
  command(0x60);
  EXPECT_NE(status() & I8042::kStatusCommand, 0);
  outb(0x30);
  EXPECT_EQ(status() & I8042::kStatusCommand, 0);
  command(0x20);
  EXPECT_EQ(data(), 0x30);
}

TEST_F(I8042Test, SelfTestsPass) {
  command(0xAA);
  EXPECT_EQ(data(), 0x55);
  command(0xAB);
  EXPECT_EQ(data(), 0x00);
  command(0xA9);
  EXPECT_EQ(data(), 0x00);
}

TEST_F(I8042Test, AuxLoopbackIsFlaggedAsAuxData) {
  command(0xD3);
  outb(0x5A);
  EXPECT_NE(status() & I8042::kStatusAuxData, 0);
  EXPECT_EQ(data(), 0x5A);
  EXPECT_EQ(status() & I8042::kStatusAuxData, 0);
}

TEST_F(I8042Test, OutputBytesPulseTheKeyboardIrqWhenEnabled) {
  command(0xD2);
  outb(0x11);
  EXPECT_EQ(irqs.edges(1), 1);
  EXPECT_FALSE(irqs.level(1));
  data();
  command(0x60);
  outb(0x00);  // interrupts off
  command(0xD2);
  outb(0x22);
  EXPECT_EQ(irqs.edges(1), 1);
  EXPECT_EQ(data(), 0x22);
}

TEST_F(I8042Test, KeyboardCommandsAreAcknowledged) {
  outb(0xFF);  // keyboard reset
  EXPECT_EQ(data(), 0xFA);
  EXPECT_EQ(data(), 0xAA);
  outb(0xF2);  // get ID
  EXPECT_EQ(data(), 0xFA);
  EXPECT_EQ(data(), 0xAB);
  EXPECT_EQ(data(), 0x83);
  EXPECT_EQ(status() & I8042::kStatusOutputFull, 0);
}

TEST_F(I8042Test, PulseResetLineRequestsReset) {
  command(0xFE);
  ASSERT_EQ(power.requests.size(), 1u);
  EXPECT_EQ(power.requests[0].first, StopReason::kReset);
  EXPECT_EQ(power.requests[0].second, "i8042 reset");
}

TEST_F(I8042Test, WritingOutputPortWithResetBitClearRequestsReset) {
  command(0xD0);
  EXPECT_EQ(data() & 0x01, 0x01);
  command(0xD1);
  outb(0x03);
  EXPECT_TRUE(power.requests.empty());
  command(0xD1);
  outb(0x02);
  ASSERT_EQ(power.requests.size(), 1u);
  EXPECT_EQ(power.requests[0].first, StopReason::kReset);
}

TEST_F(I8042Test, OtherPulseCommandsDoNotReset) {
  for (int c = 0xF0; c <= 0xFD; ++c) command(static_cast<uint8_t>(c));
  command(0xFF);
  EXPECT_TRUE(power.requests.empty());
}

TEST_F(I8042Test, OddSizedAccessesAreHarmless) {
  const uint8_t wide[2] = {0xFE, 0xFE};
  kbc.write(4, wide);  // not a 1-byte command: ignored
  kbc.write(4, {});
  EXPECT_TRUE(power.requests.empty());
  uint8_t r[4] = {};
  kbc.read(4, r);
  EXPECT_EQ(r[1], 0xFF);
  kbc.read(0, {});
  kbc.read(2, r);  // not a controller register
  EXPECT_EQ(r[0], 0xFF);
}

TEST_F(I8042Test, OutputQueueIsBounded) {
  for (int i = 0; i < 1000; ++i) command(0x20);
  int n = 0;
  while (status() & I8042::kStatusOutputFull) {
    data();
    ++n;
  }
  EXPECT_LE(n, 16);
  EXPECT_GT(n, 0);
}

}  // namespace
}  // namespace keel
