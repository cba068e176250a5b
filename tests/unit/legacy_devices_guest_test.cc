// The legacy devices driven by purpose-built guests (tests/guests/serial_*.asm, i8042_reset.asm)
// on every engine, through the guest harness: what a guest's driver sees, end to end through the
// engine's port-I/O dispatch and interrupt controller.
#include <gtest/gtest.h>

#include <mutex>
#include <string>

#include "devices/legacy/boot_progress.h"
#include "devices/legacy/i8042.h"
#include "devices/legacy/serial16550.h"
#include "engine/engine_factory.h"
#include "guest_harness.h"

namespace keel::guest_test {
namespace {

class LegacyDevicesGuest : public ::testing::TestWithParam<Accel> {
 protected:
  void SetUp() override {
    if (auto why = engine_unavailable(GetParam())) GTEST_SKIP() << *why;
  }
};

#define REQUIRE_BEHAVIOUR(check) \
  if (auto why = behaviour_unavailable(GetParam(), check)) GTEST_SKIP() << *why

// COM1 on the harness's buses, collecting what the guest transmits.
struct Com1 {
  explicit Com1(GuestHarness& h)
      : serial(std::make_shared<Serial16550>(
            IrqLine(&h.engine().interrupts(), Serial16550::kCom1Irq),
            [this](std::span<const uint8_t> b) {
              std::lock_guard lock(mutex);
              out.append(b.begin(), b.end());
            })) {
    h.pio().add(Serial16550::kCom1Base, Serial16550::kPortCount, serial);
  }
  std::string output() {
    std::lock_guard lock(mutex);
    return out;
  }
  std::shared_ptr<Serial16550> serial;
  std::mutex mutex;
  std::string out;
};

TEST_P(LegacyDevicesGuest, SerialOutputAndBootProgress) {
  GuestHarness h(GetParam(), "serial_hello");
  Com1 com1(h);
  auto progress = std::make_shared<BootProgress>();
  h.pio().add(BootProgress::kPort, 1, progress);
  uint64_t before = BootProgress::now_ns();
  GuestResult result = h.run();
  ASSERT_EQ(result.status, 0) << result.summary();
  EXPECT_EQ(com1.output(), "Hello from the guest on ttyS0\r\n");
  auto events = progress->events();
  ASSERT_EQ(events.size(), 1u);
  EXPECT_EQ(events[0].code, BootProgress::kInitStarted);
  EXPECT_GE(events[0].monotonic_ns, before);
}

TEST_P(LegacyDevicesGuest, SerialInputRaisesIrq4AndIsEchoed) {
  REQUIRE_BEHAVIOUR("timer_interrupt_cpl0");  // interrupt delivery to a halted CPL0 vCPU
  GuestHarness h(GetParam(), "serial_irq_echo");
  Com1 com1(h);
  // Typed before the guest enables the interrupt: enabling IER must raise it for the queued data.
  const std::string typed = "keel\rq";
  ASSERT_EQ(com1.serial->push_input({reinterpret_cast<const uint8_t*>(typed.data()), typed.size()}),
            typed.size());
  GuestResult result = h.run();
  ASSERT_EQ(result.status, 0) << result.summary();
  EXPECT_EQ(com1.output(), "READY\r\n" + typed);
}

TEST_P(LegacyDevicesGuest, I8042PulseResetEndsTheRunWithReset) {
  GuestHarness h(GetParam(), "i8042_reset");
  auto kbc = std::make_shared<I8042>(h.power(), IrqLine(&h.engine().interrupts(), 1),
                                     IrqLine(&h.engine().interrupts(), 12));
  h.pio().add(I8042::kDataPort, 1, kbc);
  h.pio().add(I8042::kCommandPort, 1, I8042::command_port(kbc));
  GuestResult result = h.run();
  EXPECT_FALSE(result.status.has_value()) << "status " << int(*result.status) << " (1: self test "
                                          << "failed, 2: reset ignored)\n" << result.summary();
  ASSERT_TRUE(result.stop.has_value()) << result.summary();
  EXPECT_EQ(*result.stop, StopReason::kReset);
  EXPECT_EQ(result.stop_detail, "i8042 reset");
}

INSTANTIATE_TEST_SUITE_P(Engines, LegacyDevicesGuest, ::testing::Values(Accel::kKvm, Accel::kEmu),
                         [](const ::testing::TestParamInfo<Accel>& info) {
                           return std::string(to_string(info.param));
                         });

}  // namespace
}  // namespace keel::guest_test
