// The default Linux guest (Debian's cloud kernel, busybox initramfs, ext4 data disk) managed by the
// daemon on the emu engine, end to end through the CLI: define with a disk, `keel start
// --console` (output from the first byte, input typed into the console reaches the guest's shell
// through the daemon), `keel shutdown` (the ACPI power button: the guest's acpid powers it off)
// and the state and store afterwards. A boot takes 15-60 s on emu; KEEL_LINUX_TESTS=off skips it.
#include <signal.h>

#include <cstdlib>
#include <optional>

#include "default_guest.h"
#include "e2e_manager_helpers.h"
#include "keel_process.h"

namespace keel::e2e {
namespace {

constexpr char kDetach = 0x1d;        // Ctrl-]

std::optional<std::string> linux_unavailable() {
  if (testing::linux_tests_off()) return "KEEL_LINUX_TESTS=off";
  const auto& guest = testing::default_guest();
  if (!guest) return "default guest unavailable: " + guest.why_missing;
  return std::nullopt;
}

#define SKIP_WITHOUT_LINUX() \
  if (auto why = linux_unavailable()) GTEST_SKIP() << *why

class ManagerLinuxTest : public DaemonFixture {
 protected:
  void SetUp() override {
    DaemonFixture::SetUp();
    if (linux_unavailable()) return;  // the test skips
    start_daemon();
  }
  void TearDown() override {
    if (daemon_pid > 0) DaemonFixture::TearDown();
    else std::filesystem::remove_all(dir);
  }
};

// The file `path` of an ext4 image, read on the host with debugfs; empty if it is not there.
std::string ext4_file(const std::string& image, const std::string& path) {
  std::string out = image + ".cat";
  std::string cmd = "PATH=\"$PATH:/usr/sbin:/sbin\" debugfs -R 'cat " + path + "' '" + image +
                    "' >'" + out + "' 2>/dev/null";
  if (std::system(cmd.c_str()) != 0) return {};
  return read_whole(out);
}

TEST_F(ManagerLinuxTest, DefaultGuestOnEmuStartsTakesConsoleInputAndShutsDownWithAcpi) {
  SKIP_WITHOUT_LINUX();
  const auto& guest = testing::default_guest();
  std::string disk = dir + "/data.ext4";
  std::filesystem::copy_file(guest.disk(), disk);
  write_definition("lin.json", json{{"name", "lin"},
                                    {"vcpus", 1},
                                    {"memory_mib", 512},
                                    {"accel", "emu"},
                                    {"kernel", guest.kernel().string()},
                                    {"initrd", guest.initrd().string()},
                                    {"disks", json::array({json{{"path", disk}}})}});
  ASSERT_EQ(keel({"define", dir + "/lin.json"}).exit_code, 0);
  EventWatcher events(socket);

  // keel start --console: started paused, attached, resumed, so the console has every byte.
  testing::KeelProcess console({"start", "lin", "--console", "--socket", socket});
  // Every wait draws on one budget inside CTest's timeout, so a hang reports keel's output.
  testing::Budget budget(480s);
  events.wait_for("lin", "started");
  if (!console.wait_for_stdout("KEEL-GUEST-READY", budget.left())) {
    console.send_signal(SIGTERM);
    FAIL() << "the guest never became ready: " << console.wait(30s).describe() << "\nVMM log:\n"
           << read_whole(state_dir + "/log/lin.log");
  }
  json vm = info("lin");
  EXPECT_EQ(vm["state"], "running") << vm.dump();  // (unpaused: --console resumed it)

  // Input through the CLI, the daemon and the VMM to the guest's shell: the shell echoes the
  // line, so only the commands' output holds the product and the checksum verdict.
  console.write_stdin(
      "echo keel-was-here >/mnt/data/from-the-console; "
      "cd /mnt/data && sha256sum -c numbers.sha256; cd /; echo typed-$((6*7))-through-keel\n");
  ASSERT_TRUE(console.wait_for_stdout("typed-42-through-keel", budget.at_most(300s)))
      << console.wait(30s).describe();
  console.write_stdin(std::string(1, kDetach));
  testing::ProcessResult attached = console.wait(30s);
  EXPECT_EQ(attached.status, 0) << attached.describe();
  EXPECT_NE(attached.out.find("numbers.txt: OK"), std::string::npos) << attached.describe();
  EXPECT_NE(attached.err.find("Connected to domain 'lin'"), std::string::npos) << attached.err;

  // keel shutdown presses the ACPI power button; the guest powers itself off.
  CommandResult r = keel({"shutdown", "lin"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  events.wait_for("lin", "powerdown");
  json stopped = events.wait_for("lin", "stopped", "shutdown", budget.at_most(300s));
  EXPECT_EQ(stopped.value("state", ""), "shut off") << stopped.dump();
  vm = info("lin");
  EXPECT_EQ(vm["state"], "shut off") << vm.dump();
  EXPECT_EQ(vm["reason"], "shutdown") << vm.dump();
  EXPECT_FALSE(vm.contains("pid")) << vm.dump();
  std::string history = read_console_until("lin", [](const std::string& s) {
    return s.find("reboot: Power down") != std::string::npos;
  });
  EXPECT_NE(history.find("power button pressed"), std::string::npos) << history;
  r = keel({"list", "--all"});
  EXPECT_NE(r.out.find("shut off (shutdown)"), std::string::npos) << r.out;

  // The guest synced and unmounted its disk on the way down: the file it wrote is there.
  EXPECT_EQ(ext4_file(disk, "/from-the-console"), "keel-was-here\n");
  // The store is checked by TearDown (PRAGMA integrity_check); the definition is intact.
  json def = info("lin")["definition"];
  EXPECT_EQ(def["disks"][0]["path"], disk) << def.dump();
  EXPECT_EQ(def["accel"], "emu") << def.dump();
}

// keel save stops the booted guest with its state in a directory; keel restore continues it:
// its shell answers a command typed after the restore, and the file it wrote to its disk
// before the save is there.
TEST_F(ManagerLinuxTest, SaveAndRestoreContinueTheShellAndTheDisk) {
  SKIP_WITHOUT_LINUX();
  const auto& guest = testing::default_guest();
  std::string disk = dir + "/data.ext4";
  std::filesystem::copy_file(guest.disk(), disk);
  api().call("POST", "/v1/vms", json{{"name", "lin"},
                                     {"vcpus", 1},
                                     {"memory_mib", 512},
                                     {"accel", "emu"},
                                     {"kernel", guest.kernel().string()},
                                     {"initrd", guest.initrd().string()},
                                     {"disks", json::array({json{{"path", disk}}})}});
  testing::Budget budget(480s);
  ASSERT_EQ(keel({"start", "lin"}).exit_code, 0);
  read_console_until("lin", [](const std::string& s) { return s.find("KEEL-GUEST-READY") != std::string::npos; },
                     budget.at_most(300s));
  auto type = [&](const std::string& line) {
    auto r = api().request("POST", "/v1/vms/lin/console", line, "application/octet-stream");
    ASSERT_EQ(r.status, 200) << r.body;
  };
  // Written before the save; the shell echoes the line, so the marker is the command's output.
  type("echo written-before-the-save >/mnt/data/saved; sync; echo wrote-$((40+2))\n");
  read_console_until("lin", [](const std::string& s) { return s.find("wrote-42") != std::string::npos; },
                     budget.at_most(120s));

  std::string save_dir = dir + "/lin-save";
  CommandResult r = keel({"save", "lin", save_dir});
  ASSERT_EQ(r.exit_code, 0) << r.err << "\nVMM log:\n" << read_whole(state_dir + "/log/lin.log");
  wait_state("lin", "shut off", "saved");
  // The daemon's VMM had its disk as a descriptor: `keel run --restore` says where to go instead.
  testing::KeelProcess direct({"run", "--restore", save_dir, "--sandbox", "off"});
  testing::ProcessResult refused = direct.wait(60s);
  EXPECT_NE(refused.err.find("restore this snapshot through the daemon (keel restore DIR)"), std::string::npos)
      << refused.describe();
  r = keel({"restore", save_dir});
  ASSERT_EQ(r.exit_code, 0) << r.err << "\nVMM log:\n" << read_whole(state_dir + "/log/lin.log");
  wait_state("lin", "running", "restored");
  // The page cache dropped first: the file comes from the disk the restored VMM opened.
  type("echo 3 >/proc/sys/vm/drop_caches; cat /mnt/data/saved; echo answer-$((6*7))\n");
  std::string console = read_console_until("lin", [](const std::string& s) {
    return s.find("answer-42") != std::string::npos;
  }, budget.at_most(120s), false);
  EXPECT_NE(console.find("written-before-the-save"), std::string::npos) << console;
  // The restored guest did not boot again.
  EXPECT_EQ(console.find("Linux version"), std::string::npos) << console;
  ASSERT_EQ(keel({"destroy", "lin"}).exit_code, 0);
}

}  // namespace
}  // namespace keel::e2e
