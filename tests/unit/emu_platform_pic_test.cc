#include <gtest/gtest.h>

#include "engine/emu/platform/pic8259.h"

namespace keel::emu {
namespace {

class EmuPlatformPic : public ::testing::Test {
 protected:
  void out(uint64_t port, uint8_t v) { pic.write(port, {&v, 1}); }
  uint8_t in(uint64_t port) {
    uint8_t v = 0;
    pic.read(port, {&v, 1});
    return v;
  }
  Pic8259 pic;
};

TEST_F(EmuPlatformPic, LinuxProbeReadsTheMaskBack) {
  // probe_8259A(): mask everything, read it back.
  out(1, 0xFF);
  EXPECT_EQ(in(1), 0xFF);
  out(1, 0xFB);
  EXPECT_EQ(in(1), 0xFB);
}

TEST_F(EmuPlatformPic, InitSequenceThenMaskAndRegisterSelect) {
  // init_8259A(): ICW1 (edge, cascade, ICW4), ICW2 vector base, ICW3 cascade, ICW4 8086 mode.
  out(0, 0x11);
  out(1, 0x30);
  out(1, 0x04);
  out(1, 0x01);
  EXPECT_EQ(pic.vector_base(), 0x30);
  EXPECT_EQ(in(1), 0x00);  // ICW1 cleared the mask
  out(1, 0xFF);            // OCW1
  EXPECT_EQ(pic.imr(), 0xFF);
  out(0, 0x0B);  // OCW3: read ISR
  EXPECT_EQ(in(0), 0);
  out(0, 0x0A);  // OCW3: read IRR
  EXPECT_EQ(in(0), 0);
  out(0, 0x20);  // non-specific EOI with nothing in service
  out(0, 0x62);  // specific EOI
  EXPECT_EQ(pic.imr(), 0xFF);
  // Single mode without ICW4: ICW2 ends the sequence.
  out(0, 0x12);
  out(1, 0x08);
  out(1, 0xAA);
  EXPECT_EQ(pic.imr(), 0xAA);
}

TEST_F(EmuPlatformPic, OddAccessesAreHarmless) {
  uint8_t buf[4] = {0xFF, 0xFF, 0xFF, 0xFF};
  pic.write(0, {buf, 0});
  pic.write(5, {buf, 4});
  pic.read(1, {buf, 4});
  EXPECT_EQ(buf[0], 0xFF);
  EXPECT_EQ(buf[1], 0xFF);
}

}  // namespace
}  // namespace keel::emu
