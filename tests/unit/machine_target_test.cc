// MachineTarget (the VMM side of the control socket) and the ConsoleInputQueue behind its console
// input: input longer than the UART's FIFO reaches the guest intact, lifecycle changes become QMP
// events.
#include "control/machine_target.h"

#include <gtest/gtest.h>

#include <chrono>
#include <deque>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "backends/console/console_input_queue.h"
#include "devices/legacy/serial16550.h"
#include "fake_console_input.h"
#include "fake_engine.h"
#include "vm/machine.h"

namespace keel {
namespace {

using testing::FakeConsoleInput;
using testing::FakeEngine;
using testing::FakeVcpu;

std::string pattern(size_t n) {
  std::string s;
  for (size_t i = 0; i < n; ++i) s += static_cast<char>('A' + i % 26);  // no 'q'
  return s;
}

std::span<const uint8_t> as_bytes(const std::string& s) {
  return {reinterpret_cast<const uint8_t*>(s.data()), s.size()};
}

TEST(ConsoleInputQueue, FeedsTheDeviceInOrderAsTheGuestDrains) {
  EventLoop loop;
  FakeConsoleInput device(16);
  ConsoleInputQueue queue(loop, device);
  const std::string input = pattern(4096);
  EXPECT_EQ(queue.write(as_bytes(input.substr(0, 1000))), 0u);
  EXPECT_EQ(queue.write(as_bytes(input.substr(1000))), 0u);
  EXPECT_EQ(queue.pending(), 4096u - 16u);
  std::string received;
  while (received.size() < input.size()) {
    std::string got = device.drain();
    ASSERT_FALSE(got.empty()) << "the queue stalled after " << received.size() << " bytes";
    received += got;
    loop.run_once(std::chrono::milliseconds(0));  // the posted pump()
  }
  EXPECT_EQ(received, input);
  EXPECT_EQ(queue.pending(), 0u);
}

TEST(ConsoleInputQueue, DropsWhatExceedsItsCapacityAndSaysHowMuch) {
  EventLoop loop;
  FakeConsoleInput device(16);
  ConsoleInputQueue queue(loop, device, 1024);
  const std::string input = pattern(4096);
  EXPECT_EQ(queue.write(as_bytes(input)), 4096u - 1024u);
  // The device took 16 of them, which made room for 16 more.
  const std::string more = "0123456789abcdefWXYZ";
  EXPECT_EQ(queue.write(as_bytes(more)), 4u);
  EXPECT_EQ(queue.pending(), 1024u);
  std::string received;
  for (std::string got; !(got = device.drain()).empty();) {
    received += got;
    loop.run_once(std::chrono::milliseconds(0));
  }
  EXPECT_EQ(received, input.substr(0, 1024) + more.substr(0, 16));
  EXPECT_EQ(queue.write(as_bytes("late")), 0u);  // room again
  EXPECT_EQ(device.drain(), "late");
}

TEST(ConsoleInputQueue, PumpPostedBeforeDestructionDoesNothingAfterIt) {
  EventLoop loop;
  FakeConsoleInput device(16);
  {
    ConsoleInputQueue queue(loop, device);
    EXPECT_TRUE(device.has_space_callback());
    queue.write(as_bytes(pattern(100)));
    device.drain();  // posts pump()
  }
  EXPECT_FALSE(device.has_space_callback());
  int pushes = device.pushes;
  EXPECT_EQ(loop.run_once(std::chrono::milliseconds(0)), 1);
  EXPECT_EQ(device.pushes, pushes);
  EXPECT_EQ(device.drain(), "");
}

VmConfig fake_config() {
  VmConfig c;
  c.test_guest = KEEL_TEST_GUEST_DIR "/exit_status.bin";
  c.memory_bytes = 64ull << 20;
  return c;
}

// A machine over a FakeEngine running `behaviour`, its serial output collected, with a
// MachineTarget on it.
struct TargetFixture {
  explicit TargetFixture(FakeVcpu::Behaviour behaviour, VmConfig config = fake_config())
      : machine(config, [behaviour](Accel, EngineContext ctx, EngineConfig) {
          return std::make_unique<FakeEngine>(ctx, behaviour);
        }) {
    machine.set_serial_output([](std::span<const uint8_t>) {});  // not stdout
    target = std::make_unique<control::MachineTarget>(machine);
    target->set_console_callback([this](std::string_view bytes) {
      std::lock_guard lock(mutex);
      console.append(bytes);
    });
    target->set_event_callback([this](const std::string& name, nlohmann::json data) {
      std::lock_guard lock(mutex);
      events.push_back(name + (data.contains("reason") ? " " + data["reason"].get<std::string>()
                                                       : std::string()));
      guest_flags.push_back(data.value("guest", false));
    });
    // A test that goes wrong ends here instead of hanging.
    machine.loop().add_timer(std::chrono::seconds(30), {}, [this] {
      machine.shutdown(ShutdownReason::kQuit, "test deadline");
    });
  }
  std::vector<std::string> seen_events() {
    std::lock_guard lock(mutex);
    return events;
  }
  std::vector<bool> seen_guest_flags() {
    std::lock_guard lock(mutex);
    return guest_flags;
  }

  Machine machine;
  std::unique_ptr<control::MachineTarget> target;
  std::mutex mutex;
  std::string console;
  std::vector<std::string> events;
  std::vector<bool> guest_flags;  // each event's data.guest (false when absent)
};

// A guest that echoes COM1 input (polling LSR) until it reads 'q', then powers off.
VcpuExit echo_until_q(FakeVcpu& v) {
  while (!v.take_kick()) {
    if (!(v.inb(0x3FD) & 0x01)) {
      std::this_thread::yield();
      continue;
    }
    uint8_t c = v.inb(0x3F8);
    v.outb(0x3F8, c);
    if (c == 'q') return VcpuExit::kPowerOff;
  }
  return VcpuExit::kStopped;
}

TEST(MachineTarget, ConsoleInputLongerThanTheUartFifoReachesTheGuestIntact) {
  TargetFixture f(echo_until_q);
  const std::string input = pattern(4096) + "q";
  ASSERT_GT(input.size(), Serial16550::kRxCapacity);
  // As the control server does: on the loop thread, in chunks.
  f.machine.loop().post([&] {
    for (size_t at = 0; at < input.size(); at += 1000) f.target->console_input(input.substr(at, 1000));
  });
  ShutdownInfo info = f.machine.run();
  EXPECT_EQ(info.reason, ShutdownReason::kPowerOff) << info.detail;
  std::lock_guard lock(f.mutex);
  ASSERT_EQ(f.console.size(), input.size());
  EXPECT_EQ(f.console, input);
}

TEST(MachineTarget, ConsoleInputReachesARealGuestOnEmu) {
  // tests/guests/serial_irq_echo.asm on the emu engine: interrupt-driven echo until 'q'.
  VmConfig c;
  c.test_guest = KEEL_TEST_GUEST_DIR "/serial_irq_echo.bin";
  c.memory_bytes = 64ull << 20;
  c.accel = Accel::kEmu;
  Machine machine(c);
  machine.set_serial_output([](std::span<const uint8_t>) {});
  control::MachineTarget target(machine);
  std::mutex mutex;
  std::string console;
  target.set_console_callback([&](std::string_view bytes) {
    std::lock_guard lock(mutex);
    console.append(bytes);
  });
  machine.loop().add_timer(std::chrono::seconds(30), {}, [&] {
    machine.shutdown(ShutdownReason::kQuit, "test deadline");
  });
  const std::string input = pattern(4096) + "q";
  machine.loop().post([&] { target.console_input(input); });
  ShutdownInfo info = machine.run();
  EXPECT_EQ(info.detail, "test guest passed (status 0)");
  std::lock_guard lock(mutex);
  ASSERT_EQ(console.size(), 7 + input.size());
  EXPECT_EQ(console, "READY\r\n" + input);
}

TEST(MachineTarget, LifecycleBecomesQmpEventsAndStatus) {
  TargetFixture f([](FakeVcpu& v) { return v.run_until_kicked(); });
  EXPECT_EQ(f.target->query_status().reason, "starting up");
  f.machine.start();
  EXPECT_EQ(f.target->query_status().state, control::RunState::kRunning);
  EXPECT_EQ(f.target->query_status().reason, "booted");
  f.target->pause();
  EXPECT_EQ(f.target->query_status().state, control::RunState::kPaused);
  EXPECT_EQ(f.target->query_status().reason, "user");
  f.target->resume();
  EXPECT_EQ(f.target->query_status().reason, "unpaused");
  ASSERT_EQ(f.target->query_cpus().size(), 1u);
  f.target->quit();
  EXPECT_EQ(f.machine.run().reason, ShutdownReason::kQuit);
  EXPECT_EQ(f.target->query_status().state, control::RunState::kShutdown);
  EXPECT_EQ(f.seen_events(),
            (std::vector<std::string>{"STOP", "RESUME", "SHUTDOWN host-qmp-quit"}));
}

TEST(MachineTarget, GuestPowerOffIsAGuestShutdownEvent) {
  TargetFixture f([](FakeVcpu&) { return VcpuExit::kPowerOff; });
  EXPECT_EQ(f.machine.run().reason, ShutdownReason::kPowerOff);
  EXPECT_EQ(f.seen_events(), (std::vector<std::string>{"SHUTDOWN guest-shutdown"}));
}

TEST(MachineTarget, SystemResetIsOneHostResetThenAHostShutdown) {
  TargetFixture f([](FakeVcpu& v) { return v.run_until_kicked(); });
  f.machine.start();
  f.target->reset();  // the control socket's system_reset
  ShutdownInfo info = f.machine.run();
  EXPECT_EQ(info.reason, ShutdownReason::kReset);
  EXPECT_TRUE(info.by_host);
  EXPECT_EQ(f.seen_events(), (std::vector<std::string>{"RESET host-qmp-system-reset",
                                                       "SHUTDOWN host-qmp-system-reset"}));
  EXPECT_EQ(f.seen_guest_flags(), (std::vector<bool>{false, false}));
}

TEST(MachineTarget, GuestResetIsOneGuestResetThenAGuestShutdown) {
  TargetFixture f([](FakeVcpu&) { return VcpuExit::kReset; });
  ShutdownInfo info = f.machine.run();
  EXPECT_EQ(info.reason, ShutdownReason::kReset);
  EXPECT_FALSE(info.by_host);
  EXPECT_EQ(f.seen_events(), (std::vector<std::string>{"RESET guest-reset", "SHUTDOWN guest-reset"}));
  EXPECT_EQ(f.seen_guest_flags(), (std::vector<bool>{true, true}));
}

TEST(MachineTarget, QuitIsNotTheGuests) {
  TargetFixture f([](FakeVcpu& v) { return v.run_until_kicked(); });
  f.machine.start();
  f.target->quit();
  f.machine.run();
  EXPECT_EQ(f.seen_guest_flags(), (std::vector<bool>{false}));
}

}  // namespace
}  // namespace keel
