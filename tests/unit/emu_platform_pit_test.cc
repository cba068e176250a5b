#include <gtest/gtest.h>

#include <vector>

#include "emu_platform_fake_clock.h"
#include "engine/emu/platform/pit8254.h"

namespace keel::emu {
namespace {

class RecordingController : public InterruptController {
 public:
  void set_irq(uint32_t gsi, bool level) override {
    if (gsi == 2 && level && !line) ++edges;
    line = level;
    last_gsi = gsi;
  }
  void send_msi(const MsiMessage&) override {}
  int edges = 0;
  bool line = false;
  uint32_t last_gsi = 0;
};

// ns at which tick `k` after a load at `load` happens.
uint64_t tick_ns(uint64_t load, uint64_t k) { return load + mul_div_ceil(k, kNsPerSec, kPitHz); }

class EmuPlatformPit : public ::testing::Test {
 protected:
  void out(uint16_t port, uint8_t v) { pit.write(port - kPitPortBase, {&v, 1}); }
  uint8_t in(uint16_t port) {
    uint8_t v = 0;
    pit.read(port - kPitPortBase, {&v, 1});
    return v;
  }
  uint16_t read_word(uint16_t port) {
    uint8_t lo = in(port);
    return static_cast<uint16_t>(lo | in(port) << 8);
  }
  void program(int channel, uint8_t mode, uint16_t count) {
    out(0x43, static_cast<uint8_t>(channel << 6 | 0x30 | mode << 1));
    out(static_cast<uint16_t>(0x40 + channel), count & 0xFF);
    out(static_cast<uint16_t>(0x40 + channel), count >> 8);
  }

  testing::FakeClock clock;
  RecordingController irq;
  Pit8254 pit{clock, {IrqLine(&irq, 2)}};
};

TEST_F(EmuPlatformPit, Mode0CountsDownAndRaisesIrq0OnceAtTerminalCount) {
  uint64_t load = clock.now_ns();
  program(0, 0, 1000);
  EXPECT_FALSE(pit.out(0));
  EXPECT_EQ(pit.count(0), 1000);
  uint64_t due = tick_ns(load, 1000);
  EXPECT_EQ(pit.poll(clock.now_ns()), due);
  clock.set(tick_ns(load, 400));
  EXPECT_EQ(read_word(0x40), 600);
  clock.set(due - 1);
  EXPECT_EQ(pit.poll(clock.now_ns()), due);
  EXPECT_EQ(irq.edges, 0);
  EXPECT_FALSE(pit.out(0));
  clock.set(due);
  EXPECT_TRUE(pit.out(0));
  EXPECT_EQ(pit.poll(clock.now_ns()), kNever);
  EXPECT_EQ(irq.edges, 1);
  EXPECT_FALSE(irq.line);  // a pulse: raised and lowered
  clock.advance(1'000'000'000);
  EXPECT_EQ(pit.poll(clock.now_ns()), kNever);
  EXPECT_EQ(irq.edges, 1);
  EXPECT_TRUE(pit.out(0));  // stays high
}

TEST_F(EmuPlatformPit, Mode2IsARateGeneratorWithCoalescedMissedTicks) {
  uint64_t load = clock.now_ns();
  program(0, 2, 1193);  // ~1 ms, as Linux at HZ=1000
  EXPECT_TRUE(pit.out(0));
  for (uint64_t k = 1; k <= 3; ++k) {
    clock.set(tick_ns(load, k * 1193) - 1);
    EXPECT_EQ(pit.poll(clock.now_ns()), tick_ns(load, k * 1193));
    EXPECT_EQ(irq.edges, static_cast<int>(k - 1));
    clock.set(tick_ns(load, k * 1193));
    pit.poll(clock.now_ns());
    EXPECT_EQ(irq.edges, static_cast<int>(k));
  }
  clock.set(tick_ns(load, 3 * 1193 + 1192));
  EXPECT_FALSE(pit.out(0));  // the one low tick before the reload
  EXPECT_EQ(pit.count(0), 1);
  clock.set(tick_ns(load, 4 * 1193));
  EXPECT_TRUE(pit.out(0));
  EXPECT_EQ(pit.count(0), 1193);
  // Ten periods unpolled: one pulse; the next deadline keeps the phase.
  clock.set(tick_ns(load, 14 * 1193 + 5));
  EXPECT_EQ(pit.poll(clock.now_ns()), tick_ns(load, 15 * 1193));
  EXPECT_EQ(irq.edges, 4);
}

TEST_F(EmuPlatformPit, Mode3IsASquareWave) {
  uint64_t load = clock.now_ns();
  program(0, 3, 1000);
  EXPECT_TRUE(pit.out(0));
  clock.set(tick_ns(load, 499));
  EXPECT_TRUE(pit.out(0));
  EXPECT_EQ(pit.count(0), 2);  // counts down by two in each half
  clock.set(tick_ns(load, 500));
  EXPECT_FALSE(pit.out(0));
  EXPECT_EQ(pit.count(0), 1000);
  clock.set(tick_ns(load, 999));
  EXPECT_FALSE(pit.out(0));
  EXPECT_EQ(pit.poll(clock.now_ns()), tick_ns(load, 1000));
  EXPECT_EQ(irq.edges, 0);
  clock.set(tick_ns(load, 1000));
  EXPECT_TRUE(pit.out(0));
  EXPECT_EQ(pit.poll(clock.now_ns()), tick_ns(load, 2000));
  EXPECT_EQ(irq.edges, 1);
}

TEST_F(EmuPlatformPit, Mode4StrobesOneTickAfterTerminalCount) {
  uint64_t load = clock.now_ns();
  program(0, 4, 100);  // Linux's one-shot PIT clockevent
  EXPECT_EQ(pit.poll(clock.now_ns()), tick_ns(load, 101));
  clock.set(tick_ns(load, 100));
  EXPECT_FALSE(pit.out(0));
  clock.set(tick_ns(load, 101));
  EXPECT_TRUE(pit.out(0));
  EXPECT_EQ(pit.poll(clock.now_ns()), kNever);
  EXPECT_EQ(irq.edges, 1);
}

TEST_F(EmuPlatformPit, AccessModesLatchAndReadBack) {
  uint64_t load = clock.now_ns();
  out(0x43, 0x10);  // channel 0, LSB only, mode 0
  out(0x40, 200);
  EXPECT_EQ(pit.count(0), 200);
  clock.set(tick_ns(load, 50));
  EXPECT_EQ(in(0x40), 150);
  out(0x43, 0x60);  // channel 1, MSB only, mode 0
  out(0x41, 0x12);
  EXPECT_EQ(pit.count(1), 0x1200);
  EXPECT_EQ(in(0x41), 0x12);
  // Latch: the value is frozen until both bytes are read, while the counter runs on.
  pit.write_port61(1);  // channel 2 counts only with its gate high
  program(2, 0, 0x8000);
  out(0x43, 0x80);  // latch channel 2
  clock.advance(1'000'000);
  EXPECT_EQ(read_word(0x42), 0x8000);
  EXPECT_LT(read_word(0x42), 0x8000);  // live again
  // Read-back: status and count of channel 2.
  out(0x43, 0xC8);  // read-back, latch count and status, channel 2
  uint8_t status = in(0x42);
  EXPECT_EQ(status & 0x3F, 0x30);   // LSB/MSB access, mode 0, binary
  EXPECT_EQ(status & 0x40, 0);      // count loaded
  uint16_t latched = read_word(0x42);
  EXPECT_EQ(latched, pit.count(2));
  out(0x43, 0xB0);                  // control word: null count until the count is written
  out(0x43, 0xE8);                  // read-back, status only
  EXPECT_EQ(in(0x42) & 0x40, 0x40);
}

TEST_F(EmuPlatformPit, Port61GatesChannel2AndReportsItsOutputInBit5) {
  // Linux's pit_calibrate_tsc(): gate high, speaker off, channel 2 mode 0, then poll bit 5.
  pit.write_port61(static_cast<uint8_t>((pit.read_port61() & ~0x02) | 0x01));
  uint64_t load = clock.now_ns();
  program(2, 0, 59659);  // 50 ms
  EXPECT_EQ(pit.read_port61() & 0x20, 0);
  clock.set(tick_ns(load, 59658));
  EXPECT_EQ(pit.read_port61() & 0x20, 0);
  clock.set(tick_ns(load, 59659));
  EXPECT_EQ(pit.read_port61() & 0x20, 0x20);
  EXPECT_EQ(pit.read_port61() & 0x03, 0x01);
  EXPECT_EQ(irq.edges, 0);  // channel 2 never interrupts
  // Gate low pauses mode 0; high resumes where it stopped.
  pit.write_port61(0);
  program(2, 0, 1000);
  clock.advance(10'000'000);
  EXPECT_EQ(pit.count(2), 1000);
  pit.write_port61(1);
  clock.set(tick_ns(clock.now_ns(), 300));
  EXPECT_EQ(pit.count(2), 700);
  pit.write_port61(0);
  clock.advance(5'000'000);
  EXPECT_EQ(pit.count(2), 700);
  pit.write_port61(1);
  clock.advance(1);
  EXPECT_EQ(pit.count(2), 700);
}

TEST_F(EmuPlatformPit, QuickCalibrationReadsTheMsbCountingDown) {
  // Linux's quick_pit_calibrate(): mode 0 with 0xFFFF, then reads LSB, MSB pairs.
  pit.write_port61(1);
  uint64_t load = clock.now_ns();
  program(2, 0, 0xFFFF);
  for (uint64_t k = 0; k < 0xFF00; k += 0x1234) {
    clock.set(tick_ns(load, k));
    in(0x42);
    EXPECT_EQ(in(0x42), static_cast<uint8_t>((0xFFFF - k) >> 8)) << k;
  }
}

TEST_F(EmuPlatformPit, BcdCounting) {
  uint64_t load = clock.now_ns();
  out(0x43, 0x31);  // channel 0, LSB/MSB, mode 0, BCD
  out(0x40, 0x00);
  out(0x40, 0x10);  // 1000 decimal
  EXPECT_EQ(pit.poll(clock.now_ns()), tick_ns(load, 1000));
  clock.set(tick_ns(load, 1));
  EXPECT_EQ(read_word(0x40), 0x0999);
}

TEST_F(EmuPlatformPit, ReprogrammingChannel0NotifiesThePoller) {
  int calls = 0;
  pit.set_reprogram_listener([&] { ++calls; });
  program(2, 0, 100);
  EXPECT_EQ(calls, 0);
  program(0, 2, 100);
  EXPECT_EQ(calls, 2);  // control word and the completed count
}

TEST_F(EmuPlatformPit, MalformedAccessesAreHarmless) {
  EXPECT_EQ(in(0x43), 0xFF);  // write-only control register
  uint8_t buf[4] = {0x34, 0, 0, 0};
  pit.write(3, {buf, 4});  // runs past port 0x43: the rest is ignored
  pit.write(7, {buf, 1});
  pit.read(2, {buf, 4});
  EXPECT_EQ(buf[1], 0xFF);
  EXPECT_EQ(buf[2], 0xFF);
  pit.read(9, {buf, 1});
  // Mode 7 aliases mode 3; a count of 1 in mode 2 is taken as 2; a count of 0 means 65536.
  out(0x43, 0x3E);
  out(0x40, 0);
  out(0x40, 0);
  EXPECT_EQ(pit.poll(clock.now_ns()), tick_ns(clock.now_ns(), 0x10000));
  out(0x43, 0x34);
  out(0x40, 1);
  out(0x40, 0);
  uint64_t next = pit.poll(clock.now_ns());
  EXPECT_EQ(next, tick_ns(clock.now_ns(), 2));
  for (int i = 0; i < 100; ++i) {
    clock.advance(1000);
    pit.poll(clock.now_ns());
  }
  EXPECT_LE(irq.edges, 100);  // at most one pulse per poll
  EXPECT_EQ(pit.poll(clock.now_ns()) > clock.now_ns(), true);
}

}  // namespace
}  // namespace keel::emu
