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

TEST(EmuLinux, DefaultGuestBootsToAShellRunsACommandAndPowersOff) {
  const char* env = std::getenv("KEEL_GUEST_DIR");
  std::string dir = env ? env : KEEL_DEFAULT_GUEST_DIR;
  if (!std::filesystem::exists(dir + "/vmlinuz") ||
      !std::filesystem::exists(dir + "/initramfs.cpio.gz"))
    GTEST_SKIP() << "the default guest is not built in " << dir
                 << " (ninja -C build default-guest)";
  KeelProcess p({"run", "--accel", "emu"});
  testing::Budget budget;  // everything before CTest's timeout, so a hang reports keel's output
  if (!p.wait_for_stdout("KEEL-GUEST-READY", budget.left())) {
    p.send_signal(SIGTERM);
    FAIL() << p.wait(30s).describe();
  }
  // The shell echoes the typed line; only the command's output contains the product.
  p.write_stdin("echo emu-says-$((6*7))\n");
  if (!p.wait_for_stdout("emu-says-42", budget.at_most(120s))) {
    p.send_signal(SIGTERM);
    FAIL() << p.wait(30s).describe();
  }
  // What a user types: busybox's own poweroff only signals PID 1 (a shell that ignores it), so the
  // guest's profile makes it act directly (scripts/build-default-guest.sh). `exit` is tested by
  // the virtio Linux tests.
  p.write_stdin("poweroff\n");
  ProcessResult r = p.wait(budget.left());
  EXPECT_EQ(r.status, 0) << r.describe();
}

}  // namespace
}  // namespace keel
