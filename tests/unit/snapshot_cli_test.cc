// Snapshots through the control socket and `keel run --restore` (the `keel` binary, the emu
// engine): snapshot-save writes the running counter guest (tests/guests/acpi_counter.asm) to a
// directory; a new keel restored from it prints the next count; bad requests and bad snapshots
// are refused with the cause named.
#include <stdlib.h>

#include <filesystem>
#include <string>

#include <gtest/gtest.h>

#include "control/control_client.h"
#include "counter_guest.h"
#include "keel_process.h"
#include "qemu_img.h"

namespace keel {
namespace {

namespace fs = std::filesystem;
using namespace std::chrono_literals;
using nlohmann::json;

TEST(SnapshotCli, SnapshotSaveThenRunRestoreContinuesTheCount) {
  testing::TempDir dir;
  std::string sock = (dir.path() / "vm.sock").string();
  fs::path snap = dir.path() / "snap";
  testing::KeelProcess vmm({"run", "--accel", "emu", "--memory", "32M", "--sandbox", "off",
                            "--test-guest", testing::test_guest("acpi_counter"), "--control", sock});
  ASSERT_TRUE(vmm.wait_for_stdout("count 3\n", 60s)) << "the guest never counted";
  control::ControlClient client = control::ControlClient::connect(sock);

  // Bad arguments are refused by name; the VM goes on.
  try {
    client.execute("snapshot-save", json{{"resume", false}});
    ADD_FAILURE() << "snapshot-save without a path accepted";
  } catch (const control::ControlError& e) {
    EXPECT_NE(std::string(e.what()).find("'path' is missing"), std::string::npos) << e.what();
  }
  try {
    client.execute("snapshot-save", json{{"path", snap.string()}, {"resume", "no"}});
    ADD_FAILURE() << "a string resume accepted";
  } catch (const control::ControlError& e) {
    EXPECT_NE(std::string(e.what()).find("'resume'"), std::string::npos) << e.what();
  }
  EXPECT_EQ(client.execute("query-status")["status"], "running");

  client.execute("snapshot-save", json{{"path", snap.string()}, {"resume", false}}, 60s);
  EXPECT_EQ(client.execute("query-status")["status"], "paused");
  client.execute("quit");
  testing::ProcessResult first = vmm.wait(30s);
  int saved_at = testing::last_count(first.out);
  ASSERT_GE(saved_at, 3) << first.describe();

  testing::KeelProcess restored({"run", "--restore", snap.string(), "--sandbox", "off"});
  std::string next = "count " + std::to_string(saved_at + 2) + "\n";
  EXPECT_TRUE(restored.wait_for_stdout(next, 60s));
  restored.send_signal(SIGTERM);
  testing::ProcessResult second = restored.wait(30s);
  // The restored guest printed nothing it had printed before: its first full line is the next.
  size_t first_line = second.out.find("count ");
  ASSERT_NE(first_line, std::string::npos) << second.describe();
  EXPECT_GT(testing::last_count(second.out), saved_at) << second.describe();
  EXPECT_EQ(second.out.find("count " + std::to_string(saved_at) + "\n"), std::string::npos)
      << second.describe();

  // --verify-memory reads and checks all of RAM first; the same snapshot restores as well.
  testing::KeelProcess verified({"run", "--restore", snap.string(), "--verify-memory", "--sandbox", "off"});
  EXPECT_TRUE(verified.wait_for_stdout(next, 60s));
  verified.send_signal(SIGTERM);
  verified.wait(30s);
}

TEST(SnapshotCli, RunRestoreRefusesAMissingOrDamagedSnapshot) {
  testing::TempDir dir;
  testing::ProcessResult missing =
      testing::run_keel({"run", "--restore", (dir.path() / "none").string(), "--sandbox", "off"});
  EXPECT_NE(missing.status, 0);
  EXPECT_NE(missing.err.find("cannot open its state file"), std::string::npos) << missing.describe();

  fs::create_directories(dir.path() / "bad");
  {
    std::FILE* f = std::fopen((dir.path() / "bad" / "state").c_str(), "wb");
    std::fputs("KEELSTAT\x01", f);
    std::fclose(f);
  }
  testing::ProcessResult bad =
      testing::run_keel({"run", "--restore", (dir.path() / "bad").string(), "--sandbox", "off"});
  EXPECT_NE(bad.status, 0);
  EXPECT_NE(bad.err.find("truncated"), std::string::npos) << bad.describe();

  testing::ProcessResult both = testing::run_keel(
      {"run", "--restore", (dir.path() / "bad").string(), "--test-guest", testing::test_guest("spin")});
  EXPECT_NE(both.status, 0);
  EXPECT_NE(both.err.find("--restore takes"), std::string::npos) << both.describe();

  testing::ProcessResult verify_alone =
      testing::run_keel({"run", "--verify-memory", "--test-guest", testing::test_guest("spin")});
  EXPECT_EQ(verify_alone.status, 2) << verify_alone.describe();
  EXPECT_NE(verify_alone.err.find("--verify-memory goes with --restore"), std::string::npos)
      << verify_alone.describe();
}

}  // namespace
}  // namespace keel
