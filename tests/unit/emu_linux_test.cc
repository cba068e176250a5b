// Linux on the emu engine: the default guest (Debian's cloud kernel + busybox initramfs) boots to
// its marker, runs a command at its shell and powers off with status 0.
#include <gtest/gtest.h>
#include <signal.h>

#include <chrono>
#include <cstdlib>
#include <filesystem>

#include "keel_process.h"

namespace keel {
namespace {

using namespace std::chrono_literals;
using testing::KeelProcess;
using testing::ProcessResult;

// Boots the default guest on emu (tier chosen by `tier`), runs `command` at its shell and waits
// for `expect` in its output, then types `poweroff`. Returns what keel printed; fails the test on
// a hang or a nonzero status.
ProcessResult boot_run_poweroff(const std::string& tier, const std::string& command,
                                const std::string& expect,
                                const std::vector<std::string>& extra = {}) {
  std::vector<std::string> args = {"run", "--accel", "emu", "--emu-tier", tier};
  args.insert(args.end(), extra.begin(), extra.end());
  KeelProcess p(args, {{"KEEL_EMU_STATS", "1"}});
  testing::Budget budget;  // everything before CTest's timeout, so a hang reports keel's output
  if (!p.wait_for_stdout("KEEL-GUEST-READY", budget.left())) {
    p.send_signal(SIGTERM);
    ADD_FAILURE() << p.wait(30s).describe();
    return {};
  }
  p.write_stdin(command + "\n");
  if (!p.wait_for_stdout(expect, budget.at_most(120s))) {
    p.send_signal(SIGTERM);
    ADD_FAILURE() << "no '" << expect << "'\n" << p.wait(30s).describe();
    return {};
  }
  // What a user types: busybox's own poweroff only signals PID 1 (a shell that ignores it), so the
  // guest's profile makes it act directly (scripts/build-default-guest.sh). `exit` is tested by
  // the virtio Linux tests.
  p.write_stdin("poweroff\n");
  ProcessResult r = p.wait(budget.left());
  EXPECT_EQ(r.status, 0) << r.describe();
  return r;
}

bool default_guest_missing(std::string* why) {
  const char* env = std::getenv("KEEL_GUEST_DIR");
  std::string dir = env ? env : KEEL_DEFAULT_GUEST_DIR;
  if (std::filesystem::exists(dir + "/vmlinuz") &&
      std::filesystem::exists(dir + "/initramfs.cpio.gz"))
    return false;
  *why = "the default guest is not built in " + dir + " (ninja -C build default-guest)";
  return true;
}

// Instructions KEEL_EMU_STATS=1 says ran in translated code, and in all.
std::pair<uint64_t, uint64_t> translated_and_total(const std::string& err) {
  auto at = err.find("emu: vCPU 0 ran ");
  if (at == std::string::npos) return {0, 0};
  uint64_t total = std::stoull(err.substr(at + 16));
  auto t = err.find(" interpreted, ", at);
  if (t == std::string::npos) return {0, total};
  return {std::stoull(err.substr(t + 14)), total};
}

// On the translation tier (the default): nearly every instruction of the boot runs as host code.
TEST(EmuLinux, DefaultGuestBootsToAShellRunsACommandAndPowersOff) {
  std::string why;
  if (default_guest_missing(&why)) GTEST_SKIP() << why;
  // The shell echoes the typed line; only the command's output contains the product.
  ProcessResult r = boot_run_poweroff("jit", "echo emu-says-$((6*7))", "emu-says-42");
  auto [translated, total] = translated_and_total(r.err);
  EXPECT_GT(total, 1'000'000'000u) << r.err;
  EXPECT_GT(translated, total / 100 * 95) << r.err;
}

// Four vCPUs: Linux starts the three application processors (INIT/SIPI, its real-mode
// trampoline), runs four CPU-bound jobs at once on them, and every vCPU ran guest code.
TEST(EmuLinux, FourVcpusComeOnlineRunParallelWorkAndPowerOff) {
  std::string why;
  if (default_guest_missing(&why)) GTEST_SKIP() << why;
  ProcessResult r = boot_run_poweroff(
      "jit",
      "for i in 1 2 3 4; do (j=0; while [ $j -lt 20000 ]; do j=$((j+1)); done) & done; wait; "
      "echo cpus-$(nproc)-$(grep -c ^processor /proc/cpuinfo)-done",
      "cpus-4-4-done", {"--cpus", "4"});
  for (int i = 0; i < 4; ++i) {
    auto at = r.err.find("emu: vCPU " + std::to_string(i) + " ran ");
    ASSERT_NE(at, std::string::npos) << r.err;
    EXPECT_GT(std::stoull(r.err.substr(at + 15)), 10'000'000u) << "vCPU " << i << "\n" << r.err;
  }
}

// The interpreter alone (--emu-tier interp) still boots the same guest: the reference tier.
TEST(EmuLinux, InterpreterTierBootsToAShell) {
  std::string why;
  if (default_guest_missing(&why)) GTEST_SKIP() << why;
  ProcessResult r = boot_run_poweroff("interp", "echo interp-says-$((6*7))", "interp-says-42");
  auto [translated, total] = translated_and_total(r.err);
  EXPECT_GT(total, 1'000'000'000u) << r.err;
  EXPECT_EQ(translated, 0u) << r.err;
}

// The default command line has no mitigations=off: the kernel must find a CPU without Meltdown and
// its relatives (IA32_ARCH_CAPABILITIES), so no page-table isolation and no retpolines on emu.
TEST(EmuLinux, KernelSeesNoSpeculationFlawsAndTurnsOnNoCostlyMitigation) {
  std::string why;
  if (default_guest_missing(&why)) GTEST_SKIP() << why;
  ProcessResult r = boot_run_poweroff(
      "jit",
      "cd /sys/devices/system/cpu/vulnerabilities && echo vuln-$(cat meltdown)-$(cat mds)-$(cat "
      "l1tf)-$(grep -c Retpoline spectre_v2)-$(grep -c 'SW loop' spectre_v2) | tr ' ' _",
      "vuln-Not_affected-Not_affected-Not_affected-0-0");
  EXPECT_EQ(r.out.find("mitigations=off"), std::string::npos);
}

}  // namespace
}  // namespace keel
