#include "vm/machine.h"

#include <gtest/gtest.h>

#include <string>
#include <thread>

#include "base/error.h"
#include "devices/legacy/boot_progress.h"
#include "devices/legacy/serial16550.h"
#include "fake_engine.h"

namespace keel {
namespace {

using testing::FakeEngine;
using testing::FakeVcpu;

VmConfig test_config(uint32_t cpus = 1) {
  VmConfig c;
  c.test_guest = KEEL_TEST_GUEST_DIR "/exit_status.bin";
  c.memory_bytes = 64ull << 20;
  c.cpus = cpus;
  return c;
}

// Builds a Machine over a FakeEngine whose vCPUs all run `behaviour`.
struct Fixture {
  explicit Fixture(FakeVcpu::Behaviour behaviour, VmConfig config = test_config(),
                   uint32_t max_vcpus = 8)
      : machine(config, [&, behaviour, max_vcpus](Accel, EngineContext ctx, EngineConfig) {
          auto e = std::make_unique<FakeEngine>(ctx, behaviour, max_vcpus);
          engine = e.get();
          return e;
        }) {}
  FakeEngine* engine = nullptr;
  Machine machine;
};

TEST(Machine, EnginePowerOffEndsTheMachine) {
  Fixture f([](FakeVcpu&) { return VcpuExit::kPowerOff; });
  EXPECT_EQ(f.machine.state(), MachineState::kCreated);
  ShutdownInfo info = f.machine.run();
  EXPECT_EQ(info.reason, ShutdownReason::kPowerOff);
  EXPECT_EQ(f.machine.state(), MachineState::kShutDown);
}

TEST(Machine, TripleFaultAndResetExitsAreReported) {
  {
    Fixture f([](FakeVcpu&) { return VcpuExit::kShutdown; });
    ShutdownInfo info = f.machine.run();
    EXPECT_EQ(info.reason, ShutdownReason::kTripleFault);
    EXPECT_EQ(info.detail, "vCPU 0: triple fault");
  }
  {
    Fixture f([](FakeVcpu&) { return VcpuExit::kReset; });
    EXPECT_EQ(f.machine.run().reason, ShutdownReason::kReset);
  }
}

TEST(Machine, SerialOutputGoesThroughThePortBusToTheSink) {
  Fixture f([](FakeVcpu& v) {
    for (char c : std::string("hello\n")) v.outb(0x3F8, static_cast<uint8_t>(c));
    return VcpuExit::kPowerOff;
  });
  std::string out;
  f.machine.set_serial_output([&](std::span<const uint8_t> b) { out.append(b.begin(), b.end()); });
  f.machine.run();
  EXPECT_EQ(out, "hello\n");
}

TEST(Machine, SerialInputReachesTheGuestAndRaisesIrq4) {
  Fixture f([](FakeVcpu& v) {
    v.outb(0x3F9, 0x01);  // IER: receive interrupts
    while (!(v.inb(0x3FD) & 0x01)) {
      if (v.take_kick()) return VcpuExit::kStopped;
      std::this_thread::yield();
    }
    v.outb(0x3F8, v.inb(0x3F8));  // echo
    return VcpuExit::kPowerOff;
  });
  std::string out;
  f.machine.set_serial_output([&](std::span<const uint8_t> b) { out.append(b.begin(), b.end()); });
  const uint8_t key = 'k';
  f.machine.loop().post([&] { f.machine.serial().push_input({&key, 1}); });
  EXPECT_EQ(f.machine.run().reason, ShutdownReason::kPowerOff);
  EXPECT_EQ(out, "k");
  EXPECT_GE(f.engine->irqs.edges(4), 1);
}

TEST(Machine, I8042ResetLineEndsTheMachineWithReset) {
  Fixture f([](FakeVcpu& v) {
    v.outb(0x64, 0xFE);
    return v.run_until_kicked();
  });
  ShutdownInfo info = f.machine.run();
  EXPECT_EQ(info.reason, ShutdownReason::kReset);
  EXPECT_EQ(info.detail, "i8042 reset");
}

TEST(Machine, RtcAndBootProgressAreMapped) {
  Fixture f([](FakeVcpu& v) {
    v.outb(0x70, 0x0D);
    if (v.inb(0x71) != 0x80) return VcpuExit::kShutdown;  // RTC status D: valid time
    v.outb(BootProgress::kPort, 1);
    return VcpuExit::kPowerOff;
  });
  EXPECT_EQ(f.machine.run().reason, ShutdownReason::kPowerOff);
  auto events = f.machine.boot_progress().events();
  ASSERT_EQ(events.size(), 1u);
  EXPECT_EQ(events[0].code, 1);
}

TEST(Machine, VcpuErrorShutsDownWithTheCause) {
  Fixture f([](FakeVcpu&) -> VcpuExit { throw Error("KVM_EXIT_INTERNAL_ERROR at RIP 0x1234"); });
  ShutdownInfo info = f.machine.run();
  EXPECT_EQ(info.reason, ShutdownReason::kError);
  EXPECT_EQ(info.detail, "vCPU 0: KVM_EXIT_INTERNAL_ERROR at RIP 0x1234");
}

TEST(Machine, EveryVcpuHaltedEndsTheMachine) {
  Fixture f([](FakeVcpu&) { return VcpuExit::kHalted; }, test_config(3));
  EXPECT_EQ(f.machine.run().reason, ShutdownReason::kHalted);
}

TEST(Machine, PauseStopsEveryVcpuAndResumeRestartsThem) {
  Fixture f([](FakeVcpu& v) { return v.run_until_kicked(); }, test_config(2));
  std::vector<MachineState> seen;
  std::mutex seen_mutex;
  f.machine.add_listener([&](const MachineEvent& e) {
    std::lock_guard lock(seen_mutex);
    seen.push_back(e.state);
  });
  std::thread main([&] { f.machine.run(); });

  // Wait for both vCPUs to be inside the guest.
  for (auto* v : f.engine->vcpus)
    while (v->spins == 0) std::this_thread::yield();
  for (long tid : f.machine.vcpu_thread_ids()) EXPECT_NE(tid, 0);
  f.machine.pause();
  EXPECT_EQ(f.machine.state(), MachineState::kPaused);
  uint64_t runs[2];
  for (int i = 0; i < 2; ++i) {
    EXPECT_FALSE(f.engine->vcpus[i]->in_run) << "vCPU " << i << " still runs after pause()";
    runs[i] = f.engine->vcpus[i]->runs;
  }
  f.machine.pause();  // no-op while paused
  f.machine.resume();
  EXPECT_EQ(f.machine.state(), MachineState::kRunning);
  for (int i = 0; i < 2; ++i)
    while (f.engine->vcpus[i]->runs == runs[i]) std::this_thread::yield();

  f.machine.shutdown(ShutdownReason::kQuit, "test");
  main.join();
  EXPECT_EQ(f.machine.wait().reason, ShutdownReason::kQuit);
  std::lock_guard lock(seen_mutex);
  EXPECT_EQ(seen, (std::vector<MachineState>{MachineState::kRunning, MachineState::kPaused,
                                             MachineState::kRunning, MachineState::kShutDown}));
}

TEST(Machine, StartPausedRunsNoGuestCodeUntilResumed) {
  VmConfig c = test_config(2);
  c.start_paused = true;
  Fixture f([](FakeVcpu& v) { return v.run_until_kicked(); }, c);
  f.machine.start();
  EXPECT_EQ(f.machine.state(), MachineState::kPaused);
  f.machine.pause();  // returns once both vCPU threads are parked
  for (auto* v : f.engine->vcpus) EXPECT_EQ(v->runs, 0u);
  f.machine.resume();
  for (auto* v : f.engine->vcpus)
    while (v->runs == 0) std::this_thread::yield();
  f.machine.shutdown(ShutdownReason::kQuit, "test");
  EXPECT_EQ(f.machine.run().reason, ShutdownReason::kQuit);  // run() after shutdown returns
}

TEST(Machine, FirstShutdownReasonWins) {
  Fixture f([](FakeVcpu& v) { return v.run_until_kicked(); });
  f.machine.start();
  f.machine.request_stop(StopReason::kPowerOff, "ACPI S5");
  f.machine.shutdown(ShutdownReason::kError, "late");
  ShutdownInfo info = f.machine.run();
  EXPECT_EQ(info.reason, ShutdownReason::kPowerOff);
  EXPECT_EQ(info.detail, "ACPI S5");
  f.machine.resume();  // no-ops once shut down
  f.machine.pause();
  EXPECT_EQ(f.machine.state(), MachineState::kShutDown);
}

TEST(Machine, WaitFromAnotherThreadSeesTheShutdown) {
  Fixture f([](FakeVcpu& v) { return v.run_until_kicked(); });
  ShutdownInfo seen;
  std::thread waiter([&] { seen = f.machine.wait(); });
  std::thread main([&] { f.machine.run(); });
  f.machine.loop().post([&] { f.machine.shutdown(ShutdownReason::kQuit, "Ctrl-A x"); });
  main.join();
  waiter.join();
  EXPECT_EQ(seen.reason, ShutdownReason::kQuit);
  EXPECT_EQ(seen.detail, "Ctrl-A x");
}

TEST(Machine, LoopCallbackErrorShutsDownWithError) {
  Fixture f([](FakeVcpu& v) { return v.run_until_kicked(); });
  f.machine.loop().post([] { throw Error("control socket: bind failed"); });
  ShutdownInfo info = f.machine.run();
  EXPECT_EQ(info.reason, ShutdownReason::kError);
  EXPECT_EQ(info.detail, "control socket: bind failed");
}

TEST(Machine, DestroyingARunningMachineStopsItsVcpus) {
  Fixture f([](FakeVcpu& v) { return v.run_until_kicked(); }, test_config(2));
  f.machine.start();
  // The destructor kicks and joins: the test ends instead of hanging.
}

TEST(Machine, MoreVcpusThanTheEngineRunsIsRefused) {
  try {
    Fixture f([](FakeVcpu&) { return VcpuExit::kPowerOff; }, test_config(4), 2);
    FAIL() << "accepted 4 vCPUs";
  } catch (const Error& e) {
    EXPECT_STREQ(e.what(), "the fake engine runs at most 2 vCPUs, 4 requested");
  }
}

TEST(Machine, InvalidConfigIsAUsageError) {
  VmConfig c = test_config();
  c.memory_bytes = 1 << 20;
  EXPECT_THROW(Fixture([](FakeVcpu&) { return VcpuExit::kPowerOff; }, c), UsageError);
  c = test_config();
  c.test_guest.clear();
  EXPECT_THROW(Fixture([](FakeVcpu&) { return VcpuExit::kPowerOff; }, c), UsageError);
}

TEST(Machine, MissingTestGuestNamesThePath) {
  VmConfig c = test_config();
  c.test_guest = "/nonexistent/guest.bin";
  try {
    Fixture f([](FakeVcpu&) { return VcpuExit::kPowerOff; }, c);
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("/nonexistent/guest.bin"), std::string::npos);
  }
}

}  // namespace
}  // namespace keel
