// A real distribution booted with --boot disk: the Debian 12 image scripts/build-debian-image.sh
// makes (systemd, Debian's kernel and initramfs-tools initrd, grub.cfg) boots on emu from a qcow2
// overlay to multi-user.target with no failed units, root logs in on the serial console, and
// `poweroff` ends keel with status 0.
//
// Slow (minutes: mmdebstrap the first time, then ~2 min per boot on emu), so opt-in:
//   KEEL_DEBIAN_TESTS=on ctest --test-dir build -R DebianImage --output-on-failure
// The image is $KEEL_DEBIAN_IMAGE or ~/.cache/keel/debian12.qcow2, built when missing or stale.
#include <gtest/gtest.h>
#include <signal.h>

#include <cstdlib>
#include <filesystem>

#include "keel_process.h"
#include "qemu_img.h"

namespace keel {
namespace {

using namespace std::chrono_literals;
namespace fs = std::filesystem;

fs::path debian_image() {
  if (const char* env = std::getenv("KEEL_DEBIAN_IMAGE"); env && *env) return env;
  const char* home = std::getenv("HOME");
  return fs::path(home ? home : "/root") / ".cache/keel/debian12.qcow2";
}

TEST(DebianImage, BootsToMultiUserLogsInAndPowersOff) {
  const char* on = std::getenv("KEEL_DEBIAN_TESTS");
  if (!on || std::string(on) != "on")
    GTEST_SKIP() << "opt-in: KEEL_DEBIAN_TESTS=on builds a Debian 12 image and boots it on emu";
  testing::Budget budget;
  fs::path img = debian_image();
  fs::create_directories(img.parent_path());
  testing::Shell built = testing::sh(std::string(KEEL_SOURCE_DIR) + "/scripts/build-debian-image.sh " + img.string());
  ASSERT_EQ(built.status, 0) << built.out;
  testing::TempDir dir;
  std::string overlay = (dir / "debian.qcow2").string();
  ASSERT_EQ(testing::run_keel({"img", "create", "--backing", img.string(), overlay}).status, 0);

  testing::KeelProcess p({"run", "--accel", "emu", "--memory", "1G", "--boot", "disk", "--disk", overlay});
  auto fail = [&](const std::string& what) {
    p.send_signal(SIGTERM);
    ADD_FAILURE() << what << ": " << p.wait(15s).describe();
  };
  if (!p.wait_for_stdout("keel-debian login: ", budget.at_most(420s))) return fail("no login prompt");
  p.write_stdin("root\n");
  if (!p.wait_for_stdout("Password:", budget.at_most(60s))) return fail("no password prompt");
  p.write_stdin("keel\n");
  // login flushes what was typed ahead: wait for the shell's prompt.
  if (!p.wait_for_stdout("root@keel-debian:", budget.at_most(120s))) return fail("no shell prompt");
  // $((1+1)) keeps the markers out of the echoed command line.
  p.write_stdin("echo STATE-$((1+1))=$(systemctl is-system-running --wait); "
                "systemctl --failed --no-legend --plain | sed \"s/^/FAILED-$((1+1))-UNIT /\"; echo CHECKED-$((1+1))\n");
  if (!p.wait_for_stdout("CHECKED-2", budget.at_most(240s))) return fail("the checks did not finish");
  p.write_stdin("poweroff\n");
  testing::ProcessResult r = p.wait(budget.left());
  EXPECT_EQ(r.status, 0) << r.describe();
  EXPECT_TRUE(testing::contains(r.out, "booting entry 0 'Debian GNU/Linux'")) << r.describe();
  EXPECT_TRUE(testing::contains(r.out, "STATE-2=running")) << r.describe();
  EXPECT_FALSE(testing::contains(r.out, "FAILED-2-UNIT ")) << r.describe();
}

}  // namespace
}  // namespace keel
