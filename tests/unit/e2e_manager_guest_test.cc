// The management layer with REAL VMMs: the `keel` binary running the purpose-built guest
// tests/guests/acpi_counter.asm on the kvm engine (it prints "count N" lines and powers itself off
// when the ACPI power button is pressed). First `keel run --control` alone (system_powerdown ->
// POWERDOWN, SHUTDOWN, exit 0), then the daemon supervising such VMMs (the same flows as
// e2e_manager_daemon_test.cc's stand-in VMM, but with a guest that really runs).
#include <signal.h>

#include <future>
#include <optional>
#include <utility>

#include "control/control_client.h"
#include "e2e_manager_helpers.h"
#include "guest_harness.h"
#include "keel_process.h"

namespace keel::e2e {
namespace {

std::string counter_guest() { return KEEL_TEST_GUEST_DIR "/acpi_counter.bin"; }

std::optional<std::string> kvm_unavailable() {
  return guest_test::engine_unavailable(Accel::kKvm);
}

#define SKIP_WITHOUT_KVM() \
  if (auto why = kvm_unavailable()) GTEST_SKIP() << *why

// The next event from `client`, failing the test if none comes within the deadline.
json expect_event(control::ControlClient& client, const std::string& name) {
  auto deadline = Clock::now() + 20s;
  while (Clock::now() < deadline) {
    auto event = client.next_event(1s);
    if (event && (*event)["event"] == name) return *event;
  }
  ADD_FAILURE() << "no " << name << " event";
  return json();
}

TEST(ManagerGuest, SystemPowerdownMakesTheGuestPowerItselfOff) {
  SKIP_WITHOUT_KVM();
  char tmpl[] = "/tmp/keel-pwr-XXXXXX";
  std::string dir = ::mkdtemp(tmpl);
  std::string sock = dir + "/vm.sock";
  testing::KeelProcess vmm(
      {"run", "--accel", "kvm", "--test-guest", counter_guest(), "--control", sock});
  ASSERT_TRUE(vmm.wait_for_stdout("count 2\n", 30s)) << "the guest never counted";

  control::ControlClient client = control::ControlClient::connect(sock);
  client.execute("system_powerdown");
  expect_event(client, "POWERDOWN");
  json shutdown = expect_event(client, "SHUTDOWN");
  EXPECT_EQ(shutdown["data"]["guest"], true) << shutdown.dump();
  EXPECT_EQ(shutdown["data"]["reason"], "guest-shutdown") << shutdown.dump();

  testing::ProcessResult r = vmm.wait(30s);
  EXPECT_TRUE(r.exited) << r.describe();
  EXPECT_EQ(r.status, 0) << r.describe();
  EXPECT_NE(r.out.find("power button\n"), std::string::npos) << r.describe();
  std::filesystem::remove_all(dir);
}

// The daemon runs its own executable (the keel binary) as the VMM.
class ManagerGuestDaemonTest : public DaemonFixture {
 protected:
  void SetUp() override {
    DaemonFixture::SetUp();
    if (kvm_unavailable()) return;  // the test skips
    start_daemon();
  }
  json definition(const std::string& name) {
    return json{{"name", name}, {"vcpus", 1}, {"memory_mib", 16}, {"accel", "kvm"},
                {"test_guest", counter_guest()}};
  }
  void define(const std::string& name) { api().call("POST", "/v1/vms", definition(name)); }
  void TearDown() override {
    if (daemon_pid > 0) DaemonFixture::TearDown();
    else std::filesystem::remove_all(dir);
  }
};

TEST_F(ManagerGuestDaemonTest, LifecycleThroughTheCli) {
  SKIP_WITHOUT_KVM();
  write_definition("c1.json", definition("c1"));
  CommandResult r = keel({"define", dir + "/c1.json"});
  ASSERT_EQ(r.exit_code, 0) << r.err;

  r = keel({"start", "c1"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  json vm = wait_state("c1", "running", "booted");
  EXPECT_GT(vm["pid"].get<pid_t>(), 0);
  r = keel({"list"});
  EXPECT_NE(r.out.find("c1"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("running (booted)"), std::string::npos) << r.out;

  // Console output: the guest counts.
  std::string console =
      read_console_until("c1", [](const std::string& s) { return last_count(s) >= 3; });
  EXPECT_NE(console.find("count 0\n"), std::string::npos) << console;

  // Suspended, the counter stops (at most a line already on its way when the vCPU stopped);
  // resumed, it goes on from where it stopped.
  expect_suspend_stops_and_resume_continues("c1", 1, 500ms);

  // keel shutdown: the ACPI power button; the guest powers itself off. A console session open
  // meanwhile sees it and ends with the VM.
  std::promise<void> attached;  // the session has replayed the history: it is open
  auto session = std::async(std::launch::async, [&] {
    bool first = true;
    return read_console_until("c1", [&](const std::string& s) {
      if (std::exchange(first, false)) attached.set_value();
      return s.find("power button\n") != std::string::npos;
    });
  });
  ASSERT_EQ(attached.get_future().wait_for(30s), std::future_status::ready);
  r = keel({"shutdown", "c1"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  wait_state("c1", "shut off", "shutdown");
  EXPECT_FALSE(info("c1").contains("pid"));
  session.get();
  // The console of a VM that is off is refused, not a silent session.
  r = keel({"console", "c1"});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.err.find("domain 'c1' is not running (shut off)"), std::string::npos) << r.err;

  // Start again, destroy.
  ASSERT_EQ(keel({"start", "c1"}).exit_code, 0);
  wait_state("c1", "running");
  read_console_until("c1", [](const std::string& s) { return last_count(s) >= 1; }, 30s, false);
  r = keel({"destroy", "c1"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  wait_state("c1", "shut off", "destroyed");

  r = keel({"undefine", "c1"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(keel({"info", "c1"}).exit_code, 1);
}

TEST_F(ManagerGuestDaemonTest, VmmKilledWithSigkillIsCrashed) {
  SKIP_WITHOUT_KVM();
  define("k1");
  json vm = api().call("POST", "/v1/vms/k1/start");
  read_console_until("k1", [](const std::string& s) { return last_count(s) >= 1; });
  ASSERT_EQ(::kill(vm["pid"].get<pid_t>(), SIGKILL), 0);
  wait_state("k1", "shut off", "crashed");
}

TEST_F(ManagerGuestDaemonTest, DaemonKilledAndRestartedWhileVmRuns) {
  SKIP_WITHOUT_KVM();
  define("d1");
  json vm = api().call("POST", "/v1/vms/d1/start");
  pid_t pid = vm["pid"].get<pid_t>();
  read_console_until("d1", [](const std::string& s) { return last_count(s) >= 1; });

  kill_daemon_and_expect_adoption("d1", pid);
  // Still counting, and controllable: suspend/resume, then the power button.
  api().call("POST", "/v1/vms/d1/suspend");
  wait_state("d1", "paused", "user");
  api().call("POST", "/v1/vms/d1/resume");
  wait_state("d1", "running");
  read_console_until("d1", [](const std::string& s) { return last_count(s) >= 0; }, 30s, false);
  ASSERT_EQ(keel({"shutdown", "d1"}).exit_code, 0);
  wait_state("d1", "shut off", "shutdown");
}

}  // namespace
}  // namespace keel::e2e
