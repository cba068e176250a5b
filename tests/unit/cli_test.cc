// Tests of the `keel` binary itself: exit statuses, messages, and test guests run end to end
// through `keel run`.
#include <poll.h>
#include <pty.h>
#include <signal.h>
#include <termios.h>

#include <gtest/gtest.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <optional>
#include <sstream>

#include "control/control_client.h"
#include "engine/kvm/kvm_probe.h"
#include "keel_process.h"

namespace keel {
namespace {

using namespace std::chrono_literals;
using testing::KeelProcess;
using testing::ProcessResult;
using testing::contains;
using testing::run_keel;

std::string guest(const std::string& name) { return testing::test_guest(name); }

// --- usage errors: exit 2

TEST(Cli, NoVerbIsAUsageError) {
  ProcessResult r = run_keel({});
  EXPECT_EQ(r.status, 2) << r.describe();
}

TEST(Cli, UnknownVerbAndOptionAreUsageErrors) {
  ProcessResult r = run_keel({"frobnicate"});
  EXPECT_EQ(r.status, 2) << r.describe();
  r = run_keel({"run", "--bogus"});
  EXPECT_EQ(r.status, 2) << r.describe();
  EXPECT_TRUE(contains(r.err, "--bogus")) << r.err;
}

TEST(Cli, MalformedMemoryIsAUsageErrorNamingTheText) {
  ProcessResult r = run_keel({"run", "--memory", "12X"});
  EXPECT_EQ(r.status, 2) << r.describe();
  EXPECT_TRUE(contains(r.err, "invalid size '12X'")) << r.err;
  r = run_keel({"run", "--memory", "99999999999999999999G"});
  EXPECT_EQ(r.status, 2) << r.describe();
  EXPECT_TRUE(contains(r.err, "too large")) << r.err;
  r = run_keel({"run", "--memory", "1M", "--test-guest", guest("serial_hello")});
  EXPECT_EQ(r.status, 2) << r.describe();
  EXPECT_TRUE(contains(r.err, "below the minimum")) << r.err;
}

TEST(Cli, BadAccelAndCpuCountAreUsageErrors) {
  EXPECT_EQ(run_keel({"run", "--accel", "tcg"}).status, 2);
  EXPECT_EQ(run_keel({"run", "--cpus", "0"}).status, 2);
  EXPECT_EQ(run_keel({"run", "--cpus", "many"}).status, 2);
}

TEST(Cli, ConflictingGuestOptionsAreUsageErrors) {
  ProcessResult r = run_keel({"run", "--kernel", "/k", "--test-guest", guest("serial_hello")});
  EXPECT_EQ(r.status, 2) << r.describe();
  EXPECT_TRUE(contains(r.err, "mutually exclusive")) << r.err;
}

TEST(Cli, HelpExitsZero) {
  ProcessResult r = run_keel({"run", "--help"});
  EXPECT_EQ(r.status, 0) << r.describe();
  EXPECT_TRUE(contains(r.out, "--kernel")) << r.out;
  EXPECT_FALSE(contains(r.out, "--test-guest")) << "the test flag is hidden";
}

// --- VMM errors: exit 1 with a message naming the cause

TEST(Cli, MissingKernelExitsOneNamingThePath) {
  ProcessResult r = run_keel({"run", "--accel", "kvm", "--kernel", "/nonexistent/vmlinuz-x"});
  EXPECT_EQ(r.status, 1) << r.describe();
  EXPECT_TRUE(contains(r.err, "/nonexistent/vmlinuz-x")) << r.err;
}

TEST(Cli, MissingInitrdExitsOneNamingThePath) {
  ProcessResult r = run_keel({"run", "--accel", "kvm", "--kernel", KEEL_BINARY, "--initrd",
                              "/nonexistent/initrd.img"});
  EXPECT_EQ(r.status, 1) << r.describe();
  EXPECT_TRUE(contains(r.err, "/nonexistent/initrd.img")) << r.err;
}

TEST(Cli, MissingDefaultGuestExitsOneNamingThePath) {
  ProcessResult r = run_keel({"run", "--accel", "kvm"}, "", 60s,
                             {{"KEEL_GUEST_DIR", "/nonexistent-guest-dir"}});
  EXPECT_EQ(r.status, 1) << r.describe();
  EXPECT_TRUE(contains(r.err, "/nonexistent-guest-dir/vmlinuz")) << r.err;
}

// --- test guests through `keel run` on KVM

std::optional<std::string> kvm_unavailable() {
  static const std::optional<std::string> why = []() -> std::optional<std::string> {
    KvmProbeResult probe = probe_kvm();
    if (probe.can_run_guests()) return std::nullopt;
    return probe.reason();
  }();
  return why;
}

#define SKIP_WITHOUT_KVM()                                          \
  if (auto why = kvm_unavailable()) GTEST_SKIP() << "KVM cannot run test guests: " << *why

TEST(CliGuest, SerialOutputReachesStdout) {
  SKIP_WITHOUT_KVM();
  ProcessResult r = run_keel({"run", "--accel", "kvm", "--test-guest", guest("serial_hello")});
  EXPECT_EQ(r.status, 0) << r.describe();
  EXPECT_EQ(r.out, "Hello from the guest on ttyS0\r\n");
}

TEST(CliGuest, LogFileTakesStdoutAndStderr) {
  // The daemon runs each VMM with --log-file (bounded: base/log_file.h, log_file_test.cc).
  auto path = std::filesystem::temp_directory_path() /
              ("keel-cli-log-" + std::to_string(::getpid()) + ".log");
  std::filesystem::remove(path);
  ProcessResult r = run_keel({"run", "--accel", "emu", "--test-guest", guest("serial_hello"),
                              "--log-file", path.string()});
  std::stringstream text;
  text << std::ifstream(path).rdbuf();
  std::filesystem::remove(path);
  EXPECT_EQ(r.status, 0) << r.describe();
  EXPECT_EQ(r.out, "");
  EXPECT_EQ(text.str(), "Hello from the guest on ttyS0\r\n");
}

TEST(CliGuest, SerialInputIsDeliveredByInterruptAndEchoed) {
  SKIP_WITHOUT_KVM();
  ProcessResult r = run_keel({"run", "--accel", "kvm", "--test-guest", guest("serial_irq_echo")},
                             "hello, guest\rq");
  EXPECT_EQ(r.status, 0) << r.describe();
  EXPECT_EQ(r.out, "READY\r\nhello, guest\rq");
}

TEST(CliGuest, InputTypedAfterTheGuestIsWaitingIsDelivered) {
  SKIP_WITHOUT_KVM();
  KeelProcess p({"run", "--accel", "kvm", "--test-guest", guest("serial_irq_echo")});
  ASSERT_TRUE(p.wait_for_stdout("READY\r\n", 30s));
  p.write_stdin("x");
  ASSERT_TRUE(p.wait_for_stdout("READY\r\nx", 30s));
  p.write_stdin("yq");
  ProcessResult r = p.wait(30s);
  EXPECT_EQ(r.status, 0) << r.describe();
  EXPECT_EQ(r.out, "READY\r\nxyq");
}

TEST(CliGuest, I8042ResetExitsZeroSayingWhichReset) {
  SKIP_WITHOUT_KVM();
  ProcessResult r = run_keel({"run", "--accel", "kvm", "--test-guest", guest("i8042_reset")});
  EXPECT_EQ(r.status, 0) << r.describe();
  EXPECT_EQ(r.err, "keel: guest reset (i8042 reset)\n");
}

TEST(CliGuest, FailingTestGuestExitsOneNamingItsStatus) {
  SKIP_WITHOUT_KVM();
  ProcessResult r = run_keel({"run", "--accel", "kvm", "--test-guest", guest("exit_status")});
  EXPECT_EQ(r.status, 1) << r.describe();
  EXPECT_TRUE(contains(r.err, "test guest failed with status 3")) << r.err;
}

TEST(CliGuest, TraceBootPrintsTimestampedProgressCodes) {
  SKIP_WITHOUT_KVM();
  ProcessResult r = run_keel(
      {"run", "--accel", "kvm", "--trace-boot", "--test-guest", guest("serial_hello")});
  EXPECT_EQ(r.status, 0) << r.describe();
  EXPECT_TRUE(contains(r.err, "keel: boot-progress code=1 (init started) monotonic_ns=")) << r.err;
}

TEST(CliGuest, AutoSaysWhichEngineItChoseAndWhy) {
  SKIP_WITHOUT_KVM();
  ProcessResult r = run_keel({"run", "--test-guest", guest("serial_hello")});
  ASSERT_TRUE(contains(r.err, "keel: auto chose ")) << r.describe();
  // One line, before anything else.
  EXPECT_EQ(r.err.rfind("keel: auto chose ", 0), 0u) << r.err;
  if (contains(r.err, "auto chose kvm")) {
    EXPECT_EQ(r.status, 0) << r.describe();
  }
}

TEST(CliGuest, MoreVcpusThanKvmAllowsIsAnError) {
  SKIP_WITHOUT_KVM();
  ProcessResult r = run_keel({"run", "--accel", "kvm", "--cpus", "255", "--test-guest",
                              guest("serial_hello")});
  // Either the host runs 255 vCPUs (exit 0) or the error names the limit.
  if (r.status != 0) {
    EXPECT_EQ(r.status, 1) << r.describe();
    EXPECT_TRUE(contains(r.err, "vCPUs")) << r.err;
  }
}

TEST(CliGuest, SigtermEndsTheVmCleanly) {
  SKIP_WITHOUT_KVM();
  KeelProcess p({"run", "--accel", "kvm", "--test-guest", guest("serial_irq_echo")});
  ASSERT_TRUE(p.wait_for_stdout("READY", 30s));
  p.send_signal(SIGTERM);
  ProcessResult r = p.wait(30s);
  EXPECT_EQ(r.status, 0) << r.describe();
  EXPECT_TRUE(contains(r.err, "terminated by TERM")) << r.err;
}

TEST(CliGuest, CtrlAxQuits) {
  SKIP_WITHOUT_KVM();
  ProcessResult r =
      run_keel({"run", "--accel", "kvm", "--test-guest", guest("serial_irq_echo")}, "\x01x");
  EXPECT_EQ(r.status, 0) << r.describe();
  EXPECT_TRUE(contains(r.err, "quit (Ctrl-A x)")) << r.err;
}

// --- the control socket of `keel run --control`

std::string control_path(const char* name) {
  return "/tmp/keel-cli-test-" + std::to_string(getpid()) + "-" + name + ".sock";
}

TEST(CliControl, PausedStartThenContStopAndSystemReset) {
  SKIP_WITHOUT_KVM();
  std::string path = control_path("lifecycle");
  KeelProcess p({"run", "--accel", "kvm", "--paused", "--control", path, "--test-guest",
                 guest("serial_irq_echo")});
  auto client = control::ControlClient::connect(path);
  nlohmann::json status = client.execute("query-status");
  EXPECT_EQ(status["status"], "paused") << status;
  client.execute("cont");
  auto resumed = client.next_event(10s);
  ASSERT_TRUE(resumed.has_value());
  EXPECT_EQ((*resumed)["event"], "RESUME");
  ASSERT_TRUE(p.wait_for_stdout("READY", 30s));
  EXPECT_EQ(client.execute("query-status")["status"], "running");
  auto cpus = client.execute("query-cpus");
  ASSERT_EQ(cpus.size(), 1u);
  EXPECT_GT(cpus[0]["thread-id"].get<long>(), 0);

  client.execute("stop");
  auto stopped = client.next_event(10s);
  ASSERT_TRUE(stopped.has_value());
  EXPECT_EQ((*stopped)["event"], "STOP");
  status = client.execute("query-status");
  EXPECT_EQ(status["status"], "paused");
  EXPECT_EQ(status["reason"], "user");

  client.execute("system_reset");
  std::vector<std::string> events;
  while (auto e = client.next_event(10s)) {
    events.push_back((*e)["event"]);
    if (events.back() == "SHUTDOWN") break;
  }
  EXPECT_NE(std::find(events.begin(), events.end(), "RESET"), events.end());
  ASSERT_FALSE(events.empty());
  EXPECT_EQ(events.back(), "SHUTDOWN");
  ProcessResult r = p.wait(30s);
  EXPECT_EQ(r.status, 0) << r.describe();
  EXPECT_TRUE(contains(r.err, "guest reset (system_reset from the control socket)")) << r.err;
}

TEST(CliControl, ConsoleAttachRelaysOutputAndInput) {
  SKIP_WITHOUT_KVM();
  std::string path = control_path("console");
  KeelProcess p({"run", "--accel", "kvm", "--paused", "--control", path, "--test-guest",
                 guest("serial_irq_echo")});
  UniqueFd console = control::ControlClient::attach_console(path);
  auto client = control::ControlClient::connect(path);
  client.execute("cont");
  std::string seen;
  auto read_until = [&](const std::string& marker) {
    auto end = std::chrono::steady_clock::now() + 30s;
    while (!contains(seen, marker) && std::chrono::steady_clock::now() < end) {
      pollfd pfd{console.get(), POLLIN, 0};
      if (poll(&pfd, 1, 100) <= 0) continue;
      char buf[256];
      ssize_t n = read(console.get(), buf, sizeof buf);
      if (n <= 0) break;
      seen.append(buf, static_cast<size_t>(n));
    }
    return contains(seen, marker);
  };
  ASSERT_TRUE(read_until("READY\r\n")) << seen;
  ASSERT_EQ(write(console.get(), "via socket q", 12), 12);
  EXPECT_TRUE(read_until("via socket q")) << seen;
  ProcessResult r = p.wait(30s);
  EXPECT_EQ(r.status, 0) << r.describe();
  EXPECT_EQ(r.out, "READY\r\nvia socket q");  // the terminal shows the same console
}

TEST(CliControl, QuitEndsTheVmAfterAnIgnoredPowerButton) {
  SKIP_WITHOUT_KVM();
  std::string path = control_path("quit");
  KeelProcess p({"run", "--accel", "kvm", "--control", path, "--test-guest",
                 guest("serial_irq_echo")});
  auto client = control::ControlClient::connect(path);
  // The button is pressed (POWERDOWN); this guest ignores it and runs on until `quit`.
  client.execute("system_powerdown");
  EXPECT_EQ(client.execute("query-status")["status"], "running");
  client.execute("quit");
  ProcessResult r = p.wait(30s);
  EXPECT_EQ(r.status, 0) << r.describe();
  EXPECT_TRUE(contains(r.err, "quit from the control socket")) << r.err;
}

// --- the terminal: raw while keel runs, restored on every exit path

class CliTerminal : public ::testing::Test {
 protected:
  void SetUp() override {
    int m, s;
    ASSERT_EQ(openpty(&m, &s, nullptr, nullptr, nullptr), 0);
    master_.reset(m);
    slave_.reset(s);
    ASSERT_EQ(tcgetattr(slave_.get(), &before_), 0);
  }
  termios now() {
    termios t{};
    tcgetattr(slave_.get(), &t);
    return t;
  }
  // Reads the pty until `marker` shows up (keel's output and the guest's share it).
  bool read_until(const std::string& marker, std::chrono::milliseconds deadline) {
    auto end = std::chrono::steady_clock::now() + deadline;
    while (!contains(seen_, marker)) {
      if (std::chrono::steady_clock::now() >= end) return false;
      pollfd pfd{master_.get(), POLLIN, 0};
      if (poll(&pfd, 1, 100) <= 0) continue;
      char buf[1024];
      ssize_t n = read(master_.get(), buf, sizeof buf);
      if (n <= 0) return false;
      seen_.append(buf, static_cast<size_t>(n));
    }
    return true;
  }
  void expect_restored() {
    termios after = now();
    EXPECT_EQ(after.c_lflag, before_.c_lflag);
    EXPECT_EQ(after.c_iflag, before_.c_iflag);
    EXPECT_EQ(after.c_oflag, before_.c_oflag);
  }
  UniqueFd master_, slave_;
  termios before_{};
  std::string seen_;
};

TEST_F(CliTerminal, RawWhileRunningRestoredAfterCtrlAx) {
  SKIP_WITHOUT_KVM();
  KeelProcess p({"run", "--accel", "kvm", "--test-guest", guest("serial_irq_echo")}, {},
                slave_.get());
  ASSERT_TRUE(read_until("READY", 30s)) << seen_;
  termios during = now();
  EXPECT_FALSE(during.c_lflag & (ICANON | ECHO | ISIG)) << "not in raw mode";
  // Ctrl-C is a byte for the guest in raw mode, not a signal for keel.
  ASSERT_EQ(write(master_.get(), "\x03", 1), 1);
  ASSERT_TRUE(read_until("\x03", 30s)) << seen_;
  ASSERT_EQ(write(master_.get(), "\x01x", 2), 2);
  ProcessResult r = p.wait(30s);
  EXPECT_EQ(r.status, 0) << r.describe() << seen_;
  expect_restored();
}

TEST_F(CliTerminal, RestoredAfterSigterm) {
  SKIP_WITHOUT_KVM();
  KeelProcess p({"run", "--accel", "kvm", "--test-guest", guest("serial_irq_echo")}, {},
                slave_.get());
  ASSERT_TRUE(read_until("READY", 30s)) << seen_;
  p.send_signal(SIGTERM);
  ProcessResult r = p.wait(30s);
  EXPECT_EQ(r.status, 0) << r.describe() << seen_;
  expect_restored();
}

TEST_F(CliTerminal, RestoredAfterAFatalSignal) {
  SKIP_WITHOUT_KVM();
  KeelProcess p({"run", "--accel", "kvm", "--test-guest", guest("serial_irq_echo")}, {},
                slave_.get());
  ASSERT_TRUE(read_until("READY", 30s)) << seen_;
  p.send_signal(SIGSEGV);
  ProcessResult r = p.wait(30s);
  EXPECT_FALSE(r.exited);
  EXPECT_EQ(r.signal, SIGSEGV);
  expect_restored();
}

TEST_F(CliTerminal, RestoredAfterAGuestReset) {
  SKIP_WITHOUT_KVM();
  KeelProcess p({"run", "--accel", "kvm", "--test-guest", guest("i8042_reset")}, {}, slave_.get());
  ProcessResult r = p.wait(60s);
  EXPECT_EQ(r.status, 0) << r.describe();
  expect_restored();
}

// --- Linux: the default guest on KVM, where the probe says KVM can run a stock kernel

TEST(CliLinux, DefaultGuestBootsOnKvmToItsMarker) {
  KvmProbeResult probe = probe_kvm();
  if (!probe.can_run_stock_kernel()) GTEST_SKIP() << probe.reason();
  KeelProcess p({"run", "--accel", "kvm"});
  bool ready = p.wait_for_stdout("KEEL-GUEST-READY", 180s);
  if (!ready) {
    p.send_signal(SIGTERM);
    FAIL() << p.wait(30s).describe();
  }
  p.write_stdin("exit\n");  // leaving the shell powers the guest off
  ProcessResult r = p.wait(120s);
  EXPECT_EQ(r.status, 0) << r.describe();
}

}  // namespace
}  // namespace keel
