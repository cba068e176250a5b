#include "devices/legacy/serial16550.h"

#include <gtest/gtest.h>

#include <string>
#include <thread>

#include "fake_devices.h"
#include "state/state_format.h"

namespace keel {
namespace {

using testing::RecordingInterrupts;

class Serial16550Test : public ::testing::Test {
 protected:
  Serial16550Test()
      : serial(IrqLine(&irqs, 4), [this](std::span<const uint8_t> b) { out.append(b.begin(), b.end()); }) {}

  uint8_t in(uint8_t reg) {
    uint8_t v = 0;
    serial.read(reg, {&v, 1});
    return v;
  }
  void outb(uint8_t reg, uint8_t v) { serial.write(reg, {&v, 1}); }
  bool irq() { return irqs.level(4); }

  RecordingInterrupts irqs;
  std::string out;
  Serial16550 serial;
};

TEST_F(Serial16550Test, TransmitGoesToTheOutputAndThrIsAlwaysEmpty) {
  outb(Serial16550::kRbrThr, 'h');
  outb(Serial16550::kRbrThr, 'i');
  EXPECT_EQ(out, "hi");
  EXPECT_EQ(in(Serial16550::kLsr) & 0x60, 0x60);  // THRE | TEMT
  EXPECT_EQ(in(Serial16550::kLsr) & 0x01, 0);     // no data ready
}

// Input typed while Linux boots waits on the host until its 8250 driver has enabled the receive
// interrupt and the FIFO (it empties the receiver before): then the space callback asks for it.
TEST_F(Serial16550Test, InputHeldUntilTheDriverIsReadyThenAskedFor) {
  int asked = 0;
  serial.set_input_space_callback([&] { ++asked; });
  serial.hold_input_until_driver_ready();
  const uint8_t typed[] = {'l', 's'};
  EXPECT_EQ(serial.push_input(typed), 0u);
  outb(Serial16550::kIer, 0x01);  // receive-data interrupt, FIFO still off: not yet
  EXPECT_EQ(serial.push_input(typed), 0u);
  EXPECT_EQ(asked, 0);
  outb(Serial16550::kIirFcr, 0x07);  // FIFO on (and cleared): ready now
  EXPECT_EQ(asked, 1);
  EXPECT_EQ(serial.push_input(typed), 2u);
  EXPECT_EQ(in(Serial16550::kRbrThr), 'l');
  EXPECT_EQ(in(Serial16550::kRbrThr), 's');
  outb(Serial16550::kIirFcr, 0x07);  // later FIFO writes change nothing
  EXPECT_EQ(asked, 1);
}

// A machine built for a restore holds input as at boot; the restored registers show the guest's
// driver ready (it will not program the UART again), so input flows at once.
TEST_F(Serial16550Test, RestoredReadyDriverGetsInputWithoutProgrammingTheUartAgain) {
  outb(Serial16550::kIer, 0x01);
  outb(Serial16550::kIirFcr, 0x07);
  state::SectionWriter saved("serial", 1);
  serial.save_state(saved);

  Serial16550 restored(IrqLine(&irqs, 4), [](std::span<const uint8_t>) {});
  restored.hold_input_until_driver_ready();
  restored.restore_state(state::SectionReader("serial", 1, saved.payload()));
  const uint8_t typed[] = {'l', 's'};
  EXPECT_EQ(restored.push_input(typed), 2u);

  // A snapshot taken before the driver was ready keeps holding.
  Serial16550 early(IrqLine(&irqs, 3), [](std::span<const uint8_t>) {});
  state::SectionWriter at_boot("serial", 1);
  early.save_state(at_boot);
  Serial16550 early_restored(IrqLine(&irqs, 3), [](std::span<const uint8_t>) {});
  early_restored.hold_input_until_driver_ready();
  early_restored.restore_state(state::SectionReader("serial", 1, at_boot.payload()));
  EXPECT_EQ(early_restored.push_input(typed), 0u);
}

TEST_F(Serial16550Test, ResetValues) {
  EXPECT_EQ(in(Serial16550::kIer), 0);
  EXPECT_EQ(in(Serial16550::kIirFcr), 0x01);  // no interrupt, FIFO off
  EXPECT_EQ(in(Serial16550::kLcr), 0x03);
  EXPECT_EQ(in(Serial16550::kMsr) & 0xF0, 0xB0);  // DCD | DSR | CTS
  EXPECT_FALSE(irq());
}

TEST_F(Serial16550Test, DivisorLatchIsReachedThroughDlab) {
  outb(Serial16550::kLcr, 0x83);
  outb(Serial16550::kRbrThr, 0x01);  // DLL
  outb(Serial16550::kIer, 0x02);     // DLM
  EXPECT_EQ(in(Serial16550::kRbrThr), 0x01);
  EXPECT_EQ(in(Serial16550::kIer), 0x02);
  EXPECT_TRUE(out.empty());  // DLL writes are not transmitted
  outb(Serial16550::kLcr, 0x03);
  EXPECT_EQ(in(Serial16550::kIer), 0x00);  // IER untouched by the DLM write
}

TEST_F(Serial16550Test, ScratchRegisterHoldsItsValue) {
  outb(Serial16550::kScr, 0xA5);
  EXPECT_EQ(in(Serial16550::kScr), 0xA5);
}

TEST_F(Serial16550Test, FifoEnableShowsInIir) {
  outb(Serial16550::kIirFcr, 0x01);
  EXPECT_EQ(in(Serial16550::kIirFcr) & 0xC0, 0xC0);
  outb(Serial16550::kIirFcr, 0x00);
  EXPECT_EQ(in(Serial16550::kIirFcr) & 0xC0, 0x00);
}

TEST_F(Serial16550Test, ThrEmptyInterruptOnEnableAndAfterEachByte) {
  outb(Serial16550::kIer, 0x02);
  EXPECT_TRUE(irq());
  EXPECT_EQ(in(Serial16550::kIirFcr) & 0x0F, 0x02);
  // Reading IIR acknowledged it.
  EXPECT_FALSE(irq());
  EXPECT_EQ(in(Serial16550::kIirFcr) & 0x0F, 0x01);
  outb(Serial16550::kRbrThr, 'x');
  EXPECT_TRUE(irq());
  outb(Serial16550::kIer, 0x00);
  EXPECT_FALSE(irq());
}

TEST_F(Serial16550Test, ReceivedDataRaisesRdaUntilDrained) {
  outb(Serial16550::kIer, 0x01);
  EXPECT_FALSE(irq());
  const uint8_t bytes[] = {'a', 'b'};
  EXPECT_EQ(serial.push_input(bytes), 2u);
  EXPECT_TRUE(irq());
  EXPECT_EQ(in(Serial16550::kIirFcr) & 0x0F, 0x04);
  EXPECT_EQ(in(Serial16550::kLsr) & 0x01, 0x01);
  EXPECT_EQ(in(Serial16550::kRbrThr), 'a');
  EXPECT_TRUE(irq());
  EXPECT_EQ(in(Serial16550::kRbrThr), 'b');
  EXPECT_FALSE(irq());
  EXPECT_EQ(in(Serial16550::kLsr) & 0x01, 0);
  EXPECT_EQ(in(Serial16550::kRbrThr), 0);  // empty RBR reads 0 and does not underflow
}

TEST_F(Serial16550Test, RdaOutranksThrEmpty) {
  outb(Serial16550::kIer, 0x03);
  const uint8_t b = 'z';
  serial.push_input({&b, 1});
  EXPECT_EQ(in(Serial16550::kIirFcr) & 0x0F, 0x04);
  in(Serial16550::kRbrThr);
  EXPECT_EQ(in(Serial16550::kIirFcr) & 0x0F, 0x02);
}

TEST_F(Serial16550Test, InputBeyondCapacityIsRefusedAndSpaceIsSignalled) {
  int space_calls = 0;
  serial.set_input_space_callback([&] { ++space_calls; });
  std::vector<uint8_t> many(Serial16550::kRxCapacity + 10, 'q');
  EXPECT_EQ(serial.push_input(many), Serial16550::kRxCapacity);
  EXPECT_EQ(space_calls, 0);
  for (size_t i = 0; i < Serial16550::kRxCapacity; ++i) EXPECT_EQ(in(Serial16550::kRbrThr), 'q');
  EXPECT_EQ(space_calls, 1);
  in(Serial16550::kLsr);
  EXPECT_EQ(space_calls, 1);  // once per refusal
}

TEST_F(Serial16550Test, LoopbackRoutesThrToReceiverAndMcrToMsr) {
  // Linux's probe: MCR = LOOP | OUT2 | RTS must read back MSR inputs DCD | CTS.
  outb(Serial16550::kMcr, 0x1A);
  EXPECT_EQ(in(Serial16550::kMsr) & 0xF0, 0x90);
  outb(Serial16550::kMcr, 0x1F);
  EXPECT_EQ(in(Serial16550::kMsr) & 0xF0, 0xF0);
  outb(Serial16550::kRbrThr, 0x5A);
  EXPECT_TRUE(out.empty());
  EXPECT_EQ(in(Serial16550::kLsr) & 0x01, 0x01);
  EXPECT_EQ(in(Serial16550::kRbrThr), 0x5A);
  // Line input is not connected during loopback.
  const uint8_t b = 'x';
  EXPECT_EQ(serial.push_input({&b, 1}), 0u);
  outb(Serial16550::kMcr, 0x0B);
  EXPECT_EQ(in(Serial16550::kMsr) & 0xF0, 0xB0);
}

TEST_F(Serial16550Test, ModemStatusDeltasAndInterrupt) {
  outb(Serial16550::kMcr, 0x10);  // loop, all outputs low
  in(Serial16550::kMsr);          // clear deltas from entering loopback
  outb(Serial16550::kIer, 0x08);
  EXPECT_FALSE(irq());
  outb(Serial16550::kMcr, 0x12);  // RTS -> CTS changes
  EXPECT_TRUE(irq());
  EXPECT_EQ(in(Serial16550::kIirFcr) & 0x0F, 0x00);
  EXPECT_EQ(in(Serial16550::kMsr), 0x11);  // CTS | DCTS, reading clears the delta
  EXPECT_FALSE(irq());
}

TEST_F(Serial16550Test, LoopbackOverrunSetsLineStatusError) {
  outb(Serial16550::kMcr, 0x10);
  outb(Serial16550::kIer, 0x04);
  for (size_t i = 0; i <= Serial16550::kRxCapacity; ++i) outb(Serial16550::kRbrThr, 1);
  EXPECT_TRUE(irq());
  EXPECT_EQ(in(Serial16550::kIirFcr) & 0x0F, 0x06);
  EXPECT_EQ(in(Serial16550::kLsr) & 0x02, 0x02);
  EXPECT_EQ(in(Serial16550::kLsr) & 0x02, 0x00);  // cleared by reading
}

TEST_F(Serial16550Test, FcrClearsTheReceiveFifo) {
  const uint8_t b[] = {1, 2, 3};
  serial.push_input(b);
  outb(Serial16550::kIirFcr, 0x03);
  EXPECT_EQ(in(Serial16550::kLsr) & 0x01, 0);
}

TEST_F(Serial16550Test, WideAccessesTouchConsecutiveRegisters) {
  // A 16-bit write at THR writes THR then IER.
  const uint8_t w[] = {'A', 0x02};
  serial.write(0, w);
  EXPECT_EQ(out, "A");
  EXPECT_EQ(in(Serial16550::kIer), 0x02);
  // A 4-byte read at offset 4 reads MCR, LSR, MSR, SCR.
  uint8_t r[4];
  serial.read(4, r);
  EXPECT_EQ(r[0], 0x08);
  EXPECT_EQ(r[1] & 0x60, 0x60);
  // Zero-length and out-of-window accesses are harmless.
  serial.read(0, {});
  serial.write(0, {});
  uint8_t far[2] = {0, 0};
  serial.read(7, far);
  EXPECT_EQ(far[1], 0xFF);
}

TEST_F(Serial16550Test, ConcurrentInputAndGuestReadsLoseNothing) {
  constexpr int kBytes = 3000;
  std::thread feeder([&] {
    int sent = 0;
    while (sent < kBytes) {
      uint8_t b = static_cast<uint8_t>(sent);
      sent += static_cast<int>(serial.push_input({&b, 1}));
    }
  });
  int got = 0;
  while (got < kBytes) {
    if (in(Serial16550::kLsr) & 0x01) {
      EXPECT_EQ(in(Serial16550::kRbrThr), static_cast<uint8_t>(got));
      ++got;
    }
  }
  feeder.join();
}

}  // namespace
}  // namespace keel
