// What a new user of `keel` meets first (issue 13): --version, unknown verbs with the keel
// spelling of virsh/QEMU habits, help per verb, completion and man page from the verb table,
// keel's messages on stderr only, -q, pvpanic, a silent boot, --accel kvm where KVM cannot run
// a stock kernel, and --exec.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>

#include "base/version.h"
#include "control/control_client.h"
#include "default_guest.h"
#include "engine/kvm/kvm_probe.h"
#include "keel_process.h"

namespace keel {
namespace {

using namespace std::chrono_literals;
using testing::contains;
using testing::KeelProcess;
using testing::ProcessResult;
using testing::run_keel;

std::string guest(const std::string& name) { return testing::test_guest(name); }

TEST(CliDailyUse, VersionFlag) {
  ProcessResult r = run_keel({"--version"});
  EXPECT_EQ(r.status, 0) << r.describe();
  EXPECT_EQ(r.out, std::string("keel ") + kVersion + "\n");
}

TEST(CliDailyUse, UnknownVerbsNameTheWordAndTheKeelSpelling) {
  ProcessResult r = run_keel({"dominfo", "web1"});
  EXPECT_EQ(r.status, 2) << r.describe();
  EXPECT_TRUE(contains(r.err, "keel: unknown command 'dominfo'; virsh's dominfo is `keel info NAME`"))
      << r.err;
  r = run_keel({"strat", "web1"});
  EXPECT_EQ(r.status, 2);
  EXPECT_TRUE(contains(r.err, "unknown command 'strat'; did you mean 'start'?")) << r.err;
  r = run_keel({"run", "-smp", "2"});
  EXPECT_EQ(r.status, 2);
  EXPECT_TRUE(contains(r.err, "QEMU's -smp is `keel run --cpus N`")) << r.err;
  r = run_keel({"run", "--m=512"});  // QEMU's options take one dash or two, and =VALUE
  EXPECT_TRUE(contains(r.err, "QEMU's -m is `keel run --memory SIZE`")) << r.err;
  r = run_keel({"lsit"});
  EXPECT_TRUE(contains(r.err, "did you mean 'list'?")) << r.err;
  // No binary path in what keel prints about itself.
  EXPECT_FALSE(contains(r.err, KEEL_BINARY)) << r.err;
}

TEST(CliDailyUse, HelpPerVerbWithACleanUsageLine) {
  ProcessResult r = run_keel({"help", "run"});
  EXPECT_EQ(r.status, 0) << r.describe();
  EXPECT_TRUE(contains(r.out, "\nUsage: keel run [OPTIONS]\n")) << r.out;
  EXPECT_TRUE(contains(r.out, "--exec")) << r.out;
  r = run_keel({"run", "--help"});
  EXPECT_TRUE(contains(r.out, "Usage: keel run")) << r.out;
  r = run_keel({"help"});
  EXPECT_EQ(r.status, 0);
  for (const char* verb : {"run", "define", "dumpdef", "edit", "reset", "autostart", "version"})
    EXPECT_TRUE(contains(r.out, verb)) << verb << " missing from: " << r.out;
  r = run_keel({"help", "frobnicate"});
  EXPECT_EQ(r.status, 2);
  EXPECT_TRUE(contains(r.err, "unknown command 'frobnicate'")) << r.err;
}

TEST(CliDailyUse, CompletionAndManPageComeFromTheVerbTable) {
  ProcessResult r = run_keel({"completion", "bash"});
  EXPECT_EQ(r.status, 0) << r.describe();
  EXPECT_TRUE(contains(r.out, "complete -F _keel keel")) << r.out;
  EXPECT_TRUE(contains(r.out, "run) case $prev in --accel) COMPREPLY=($(compgen -W 'auto kvm emu'"))
      << r.out;
  EXPECT_TRUE(contains(r.out, "dumpdef) opts=")) << r.out;
  // And bash completes with it: values of --accel, verbs, a verb's options.
  std::filesystem::path script = std::filesystem::temp_directory_path() /
                                 ("keel-completion-" + std::to_string(::getpid()) + ".bash");
  std::ofstream(script) << r.out;
  std::string command = "bash -c 'source " + script.string() +
                        "; COMP_WORDS=(keel run --accel \"\"); COMP_CWORD=3; _keel; echo \"${COMPREPLY[*]}\";"
                        " COMP_WORDS=(keel du); COMP_CWORD=1; _keel; echo \"${COMPREPLY[*]}\";"
                        " COMP_WORDS=(keel run --ex); COMP_CWORD=2; _keel; echo \"${COMPREPLY[*]}\"'";
  std::string completed;
  if (FILE* out = ::popen(command.c_str(), "r")) {
    char buf[256];
    while (std::fgets(buf, sizeof buf, out)) completed += buf;
    ::pclose(out);
  }
  std::filesystem::remove(script);
  EXPECT_EQ(completed, "auto kvm emu\ndumpdef\n--exec\n");

  r = run_keel({"manpage"});
  EXPECT_EQ(r.status, 0) << r.describe();
  EXPECT_EQ(r.out.rfind(".TH KEEL 1", 0), 0u) << r.out;
  EXPECT_TRUE(contains(r.out, ".SS \"keel dumpdef name\"")) << r.out;
  EXPECT_TRUE(contains(r.out, "\\fB\\-\\-exec\\fR")) << r.out;
}

// cmake --install puts what running keel as a service needs in place.
TEST(CliDailyUse, InstallPutsTheBinaryUnitCompletionAndManPageInPlace) {
  std::filesystem::path build = std::filesystem::path(KEEL_BINARY).parent_path();
  std::filesystem::path prefix = std::filesystem::temp_directory_path() /
                                 ("keel-install-" + std::to_string(::getpid()));
  std::string command = "cmake --install '" + build.string() + "' --prefix '" + prefix.string() +
                        "' >/dev/null";
  ASSERT_EQ(std::system(command.c_str()), 0) << command;
  EXPECT_TRUE(std::filesystem::exists(prefix / "bin/keel"));
  EXPECT_TRUE(std::filesystem::exists(prefix / "share/bash-completion/completions/keel"));
  EXPECT_TRUE(std::filesystem::exists(prefix / "share/man/man1/keel.1"));
  std::ifstream unit(prefix / "lib/systemd/system/keel.service");
  std::string text((std::istreambuf_iterator<char>(unit)), {});
  EXPECT_TRUE(contains(text, "Type=notify")) << text;
  EXPECT_TRUE(contains(text, "KillMode=process")) << text;  // VMMs outlive a daemon restart
  EXPECT_TRUE(contains(text, "/bin/keel daemon --state-dir /var/lib/keel")) << text;
  std::filesystem::remove_all(prefix);
}

// stdout carries the guest's console alone; keel's own lines go to stderr, in one style.
TEST(CliDailyUse, KeelsMessagesGoToStderrAndQuietSilencesThem) {
  ProcessResult r = run_keel({"run", "--test-guest", guest("serial_hello")});
  EXPECT_EQ(r.out, "Hello from the guest on ttyS0\r\n") << r.describe();
  ASSERT_FALSE(r.err.empty());
  for (size_t at = 0; at < r.err.size(); at = r.err.find('\n', at) + 1)
    EXPECT_EQ(r.err.compare(at, 6, "keel: "), 0) << r.err;
  r = run_keel({"-q", "run", "--test-guest", guest("serial_hello")});
  EXPECT_EQ(r.out, "Hello from the guest on ttyS0\r\n") << r.describe();
  EXPECT_EQ(r.err, "");
}

// pvpanic (port 0x505): a guest panic ends keel run with status 1 naming it, or pauses the vCPUs
// and reports GUEST_PANICKED on the control socket.
TEST(CliDailyUse, PvpanicEndsTheRunOrPausesIt) {
  ProcessResult r = run_keel({"run", "--accel", "emu", "--test-guest", guest("pvpanic")});
  EXPECT_EQ(r.status, 1) << r.describe();
  EXPECT_TRUE(contains(r.err, "keel: error: guest panicked (pvpanic")) << r.err;

  std::string path = std::filesystem::temp_directory_path() /
                     ("keel-pvpanic-" + std::to_string(::getpid()) + ".sock");
  KeelProcess p({"run", "--accel", "emu", "--on-panic", "pause", "--paused", "--control", path,
                 "--test-guest", guest("pvpanic")});
  auto client = control::ControlClient::connect(path);
  client.execute("cont");
  std::optional<nlohmann::json> event;
  while ((event = client.next_event(30s)) && (*event)["event"] != "GUEST_PANICKED") {
  }
  ASSERT_TRUE(event) << "no GUEST_PANICKED";
  EXPECT_EQ((*event)["data"]["action"], "pause");
  EXPECT_EQ(client.execute("query-status")["status"], "guest-panicked");
  std::string registers =
      client.execute("human-monitor-command", {{"command-line", "info registers"}});
  EXPECT_TRUE(contains(registers, "RIP=")) << registers;
  client.execute("quit");
  EXPECT_EQ(p.wait(30s).status, 0);
}

TEST(CliDailyUse, ASilentBootIsReportedOnStderr) {
  KeelProcess p({"run", "--accel", "emu", "--silence-warning", "1", "--test-guest", guest("spin")});
  EXPECT_TRUE(p.wait_for_stderr("the guest has printed nothing on its console for 1 s", 60s));
  p.send_signal(SIGTERM);
  p.wait(30s);
}

TEST(CliDailyUse, ProbeExitsOneWhereKvmCannotRunAStockKernel) {
  bool can = probe_kvm().can_run_stock_kernel();
  ProcessResult r = run_keel({"probe"});
  EXPECT_EQ(r.status, can ? 0 : 1) << r.describe();
}

TEST(CliDailyUse, AccelKvmIsRefusedWhereKvmCannotRunAStockKernel) {
  KvmProbeResult probe = probe_kvm();
  if (probe.can_run_stock_kernel()) GTEST_SKIP() << "KVM runs a stock kernel here";
  const auto& dg = testing::default_guest();
  if (!dg) GTEST_SKIP() << dg.why_missing;
  ProcessResult r = run_keel({"run", "--accel", "kvm", "--kernel", dg.kernel().string()});
  EXPECT_EQ(r.status, 1) << r.describe();
  if (probe.device_ok) {
    EXPECT_TRUE(contains(r.err, "KVM cannot run a stock kernel on this host")) << r.err;
    EXPECT_TRUE(contains(r.err, "--force")) << r.err;
  } else {
    // No KVM at all: the device's error, and no --force, which could not help.
    EXPECT_TRUE(contains(r.err, "cannot open /dev/kvm")) << r.err;
    EXPECT_FALSE(contains(r.err, "--force")) << r.err;
  }
  EXPECT_TRUE(contains(r.err, "--accel emu")) << r.err;
  // The one-line verdict, not the probe's register dumps.
  EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << r.err;
}

// Input given before the guest is up (here: all of it, at once, before the kernel starts) is not
// lost: the UART holds it until Linux's driver is ready, and the shell reads it when it starts.
TEST(CliDailyUse, InputTypedBeforeTheGuestIsReadyReachesItsShell) {
  const auto& dg = testing::default_guest();
  if (!dg) GTEST_SKIP() << dg.why_missing;
  ProcessResult r = run_keel({"run", "--accel", "emu", "--kernel", dg.kernel().string(), "--initrd",
                              dg.initrd().string()},
                             "echo typed-early-$((6*7))\nexit\n", 240s);
  EXPECT_EQ(r.status, 0) << r.describe();
  EXPECT_TRUE(contains(r.out, "typed-early-42\r\n")) << r.out;
}

// --exec: the default guest runs one command, prints its output and powers off; keel exits with
// the command's status. A panic in the guest (sysrq c) is seen through pvpanic.
TEST(CliDailyUse, ExecRunsACommandInTheDefaultGuestAndReturnsItsStatus) {
  const auto& dg = testing::default_guest();
  if (!dg) GTEST_SKIP() << dg.why_missing;
  testing::Budget budget;
  ProcessResult r = run_keel({"run", "--accel", "emu", "--kernel", dg.kernel().string(), "--initrd",
                              dg.initrd().string(), "--exec", "echo exec-says-$((6*7)); exit 7"},
                             "", budget.at_most(240s));
  EXPECT_EQ(r.status, 7) << r.describe();
  EXPECT_TRUE(contains(r.out, "exec-says-42\r\n")) << r.out;  // the guest's tty: ONLCR
  EXPECT_FALSE(contains(r.out, "KEEL-GUEST-READY")) << r.out;
  // Errors reach the console even with `quiet`: the ACPI model gives Linux what it probes.
  EXPECT_FALSE(contains(r.out, "ACPI Error")) << r.out;

  r = run_keel({"run", "--accel", "emu", "--kernel", dg.kernel().string(), "--initrd",
                dg.initrd().string(), "--exec", "echo c > /proc/sysrq-trigger"},
               "", budget.at_most(240s));
  EXPECT_EQ(r.status, 1) << r.describe();
  EXPECT_TRUE(contains(r.err, "guest panicked")) << r.err;
}

}  // namespace
}  // namespace keel
