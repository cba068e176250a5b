// A snapshot of the default Linux guest on emu, through the control socket and `keel run
// --restore`: the shell typed at before the snapshot answers after the restore, and a file
// written to the disk before it is read back after it.
#include <signal.h>
#include <stdlib.h>
#include <unistd.h>

#include <filesystem>
#include <string>

#include <gtest/gtest.h>

#include "control/control_client.h"
#include "default_guest.h"
#include "keel_process.h"

namespace keel {
namespace {

namespace fs = std::filesystem;
using namespace std::chrono_literals;
using nlohmann::json;

TEST(SnapshotLinux, TheShellAndTheDiskGoOnAfterARestore) {
  if (testing::linux_tests_off()) GTEST_SKIP() << "KEEL_LINUX_TESTS=off";
  const auto& dg = testing::default_guest();
  if (!dg) GTEST_SKIP() << "default guest unavailable: " << dg.why_missing;
  testing::Budget budget;
  char tmpl[] = "/tmp/keel-snaplinux-XXXXXX";
  fs::path dir = ::mkdtemp(tmpl);
  fs::path disk = dir / "disk.ext4", snap = dir / "snap";
  std::string sock = (dir / "vm.sock").string();
  fs::copy_file(dg.disk(), disk);

  {
    testing::KeelProcess vmm({"run", "--accel", "emu", "--memory", "512M", "--sandbox", "off",
                              "--disk", disk.string(), "--control", sock});
    ASSERT_TRUE(vmm.wait_for_stdout("KEEL-GUEST-READY", budget.at_most(300s)))
        << vmm.wait(15s).describe();
    // With --control, the console's input is the control socket's console stream.
    UniqueFd console = control::ControlClient::attach_console(sock);
    std::string line = "echo before-$((6*7)) > /mnt/data/note; sync; cat /mnt/data/note\n";
    ASSERT_EQ(::write(console.get(), line.data(), line.size()), static_cast<ssize_t>(line.size()));
    ASSERT_TRUE(vmm.wait_for_stdout("\nbefore-42", budget.at_most(60s))) << vmm.wait(15s).describe();
    control::ControlClient client = control::ControlClient::connect(sock);
    client.execute("snapshot-save", json{{"path", snap.string()}, {"resume", false}}, 120s);
    client.execute("quit");
    vmm.wait(budget.at_most(30s));
  }

  testing::KeelProcess restored({"run", "--restore", snap.string(), "--sandbox", "off"});
  restored.write_stdin("\necho after-$((6*7)); cat /mnt/data/note\n");
  bool answered = restored.wait_for_stdout("\nafter-42", budget.at_most(120s));
  restored.write_stdin("exit\n");
  testing::ProcessResult r = restored.wait(budget.at_most(120s));
  EXPECT_TRUE(answered) << r.describe();
  // The file written before the snapshot, read from the disk after the restore.
  size_t after = r.out.find("\nafter-42");
  ASSERT_NE(after, std::string::npos) << r.describe();
  EXPECT_NE(r.out.find("\nbefore-42", after), std::string::npos) << r.describe();
  EXPECT_TRUE(r.exited && r.status == 0) << r.describe();
  fs::remove_all(dir);
}

}  // namespace
}  // namespace keel
