// Snapshots and migration of a confined VMM (the sandbox's default as root), which can open no
// file and no socket: the client opens them and passes the descriptors with `getfd`
// (SCM_RIGHTS), as the daemon does. snapshot-save writes into "state-fd"/"memory-fd", `migrate`
// sends over "fd:NAME", and `keel run --incoming fd:N` takes an inherited socket.
#include <fcntl.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <string>

#include <gtest/gtest.h>

#include "base/fd.h"
#include "control/control_client.h"
#include "counter_guest.h"
#include "keel_process.h"
#include "qemu_img.h"

namespace keel {
namespace {

namespace fs = std::filesystem;
using namespace std::chrono_literals;
using nlohmann::json;

// The counter guest in a VMM confined as `keel run` confines itself by default (as root).
testing::KeelProcess confined_counter(const std::string& sock) {
  return testing::KeelProcess({"run", "--accel", "emu", "--memory", "32M", "--sandbox", "on",
                               "--test-guest", testing::test_guest("acpi_counter"), "--control", sock});
}

UniqueFd create_file(const fs::path& path) {
  UniqueFd fd(::open(path.c_str(), O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600));
  EXPECT_TRUE(fd) << path << ": " << std::strerror(errno);
  return fd;
}

std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const control::ControlError& e) {
    return e.what();
  }
  return "(accepted)";
}

TEST(ConfinedSnapshot, FilesPassedWithGetfdHoldASnapshotThatRestores) {
  testing::TempDir dir;
  std::string sock = (dir.path() / "vm.sock").string();
  fs::path snap = dir.path() / "snap";
  fs::create_directories(snap);
  testing::KeelProcess vmm = confined_counter(sock);
  ASSERT_TRUE(vmm.wait_for_stdout("count 3\n", 60s)) << vmm.wait(10s).describe();
  control::ControlClient client = control::ControlClient::connect(sock);

  // The confined VMM cannot create a directory of its own: the path form fails by name.
  if (::geteuid() == 0) {
    std::string refused = error_of([&] { client.execute("snapshot-save", json{{"path", (dir.path() / "by-path").string()}}, 60s); });
    EXPECT_NE(refused.find("snapshot: cannot create"), std::string::npos) << refused;
  }

  // Old contents of the passed files must not survive (holes in the memory file included).
  UniqueFd state = create_file(snap / "state"), memory = create_file(snap / "memory");
  std::string junk(1 << 16, 'x');
  ASSERT_EQ(::write(memory.get(), junk.data(), junk.size()), static_cast<ssize_t>(junk.size()));
  client.execute_passing("getfd", json{{"fdname", "state"}}, state.get());
  client.execute_passing("getfd", json{{"fdname", "memory"}}, memory.get());
  client.execute("snapshot-save", json{{"state-fd", "state"}, {"memory-fd", "memory"}, {"resume", false}}, 60s);
  EXPECT_EQ(client.execute("query-status")["status"], "paused");
  // Each name was used up by the save.
  EXPECT_NE(error_of([&] { client.execute("closefd", json{{"fdname", "state"}}); }).find("has not been found"),
            std::string::npos);
  client.execute("quit");
  testing::ProcessResult first = vmm.wait(30s);
  int saved_at = testing::last_count(first.out);
  ASSERT_GE(saved_at, 3) << first.describe();

  testing::KeelProcess restored({"run", "--restore", snap.string(), "--sandbox", "off"});
  EXPECT_TRUE(restored.wait_for_stdout("count " + std::to_string(saved_at + 2) + "\n", 60s));
  restored.send_signal(SIGTERM);
  testing::ProcessResult second = restored.wait(30s);
  EXPECT_EQ(second.out.find("count " + std::to_string(saved_at) + "\n"), std::string::npos) << second.describe();
}

TEST(ConfinedSnapshot, BadDescriptorRequestsAreRefusedByName) {
  testing::TempDir dir;
  std::string sock = (dir.path() / "vm.sock").string();
  testing::KeelProcess vmm = confined_counter(sock);
  ASSERT_TRUE(vmm.wait_for_stdout("count 1\n", 60s)) << vmm.wait(10s).describe();
  control::ControlClient client = control::ControlClient::connect(sock);
  UniqueFd file = create_file(dir.path() / "f");

  EXPECT_NE(error_of([&] { client.execute("getfd", json{{"fdname", "x"}}); }).find("No file descriptor supplied"),
            std::string::npos);
  EXPECT_NE(error_of([&] { client.execute_passing("getfd", json{{"fdname", "9lives"}}, file.get()); })
                .find("expects an identifier"),
            std::string::npos);
  EXPECT_NE(error_of([&] { client.execute("snapshot-save", json{{"state-fd", "a"}}); }).find("'memory-fd' is missing"),
            std::string::npos);
  EXPECT_NE(error_of([&] { client.execute("snapshot-save", json{{"state-fd", "a"}, {"memory-fd", "b"}}); })
                .find("named 'a' has not been found"),
            std::string::npos);
  EXPECT_NE(error_of([&] {
              client.execute("snapshot-save", json{{"state-fd", "a"}, {"memory-fd", "b"}, {"path", "/x"}});
            }).find("not both"),
            std::string::npos);
  // A file is no socket to migrate over.
  client.execute_passing("getfd", json{{"fdname", "notasocket"}}, file.get());
  EXPECT_NE(error_of([&] { client.execute("migrate", json{{"uri", "fd:notasocket"}}); }).find("not a connected stream socket"),
            std::string::npos);
  if (::geteuid() == 0) {
    // Confined, it refuses to open a socket itself and says how to do it instead.
    std::string refused = error_of([&] { client.execute("migrate", json{{"uri", "unix:/nonexistent.sock"}}); });
    EXPECT_NE(refused.find("fd:NAME"), std::string::npos) << refused;
  }
  client.execute_passing("getfd", json{{"fdname", "f"}}, file.get());
  client.execute("closefd", json{{"fdname", "f"}});
  EXPECT_EQ(client.execute("query-status")["status"], "running");
  client.execute("quit");
  testing::ProcessResult result = vmm.wait(30s);
  EXPECT_TRUE(result.exited && result.status == 0) << result.describe();
}

TEST(ConfinedMigration, ASocketPassedWithGetfdCarriesTheVmToTheTarget) {
  testing::TempDir dir;
  std::string src_sock = (dir.path() / "src.sock").string();
  fs::path target_path = dir.path() / "in.sock";
  testing::KeelProcess target({"run", "--incoming", "unix:" + target_path.string(), "--sandbox", "off"});
  testing::KeelProcess source = confined_counter(src_sock);
  ASSERT_TRUE(source.wait_for_stdout("count 3\n", 60s)) << source.wait(10s).describe();

  UniqueFd connection;
  for (auto deadline = std::chrono::steady_clock::now() + 20s; std::chrono::steady_clock::now() < deadline;) {
    connection.reset(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    std::strcpy(addr.sun_path, target_path.c_str());
    if (::connect(connection.get(), reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0) break;
    connection.reset();
    target.wait_for_stdout("never", 50ms);  // lets the target start listening
  }
  ASSERT_TRUE(connection);
  control::ControlClient client = control::ControlClient::connect(src_sock);
  client.execute_passing("getfd", json{{"fdname", "migration"}}, connection.get());
  connection.reset();  // the VMM holds its own copy
  client.execute("migrate", json{{"uri", "fd:migration"}});
  std::vector<std::string> states;
  for (auto deadline = std::chrono::steady_clock::now() + 60s;
       std::chrono::steady_clock::now() < deadline && (states.empty() || states.back() == "active");) {
    if (auto event = client.next_event(1s); event && (*event)["event"] == "MIGRATION")
      states.push_back((*event)["data"]["status"]);
  }
  EXPECT_EQ(states, (std::vector<std::string>{"active", "completed"}));
  testing::ProcessResult src = source.wait(120s);
  EXPECT_TRUE(src.exited && src.status == 0) << src.describe();
  int moved_at = testing::last_count(src.out);
  EXPECT_TRUE(target.wait_for_stdout("count " + std::to_string(moved_at + 2) + "\n", 60s));
  target.send_signal(SIGTERM);
  target.wait(30s);
}

TEST(ConfinedMigration, IncomingFdRefusesWhatIsNoInheritedSocket) {
  testing::KeelProcess closed({"run", "--incoming", "fd:77", "--sandbox", "off"});
  testing::ProcessResult r = closed.wait(30s);
  EXPECT_FALSE(r.exited && r.status == 0);
  EXPECT_NE(r.err.find("descriptor 77 is not open"), std::string::npos) << r.describe();
  testing::KeelProcess low({"run", "--incoming", "fd:1", "--sandbox", "off"});
  testing::ProcessResult l = low.wait(30s);
  EXPECT_NE(l.err.find("is not fd:N"), std::string::npos) << l.describe();
}

}  // namespace
}  // namespace keel

namespace keel {
namespace {

// A restoring or incoming VMM told which VM to run (as the daemon's are) refuses a snapshot that
// brings another one: a user's snapshot cannot make a root VMM open a file its definition does
// not name.
TEST(ConfinedSnapshot, AVmmToldItsVmRefusesASnapshotOfAnother) {
  testing::TempDir dir;
  std::string sock = (dir.path() / "vm.sock").string();
  fs::path snap = dir.path() / "snap";
  fs::path disk = dir.path() / "disk.img", other = dir.path() / "other.img";
  for (const fs::path& p : {disk, other}) {
    std::ofstream(p) << std::string(1 << 20, '\0');
  }
  std::string guest = testing::test_guest("acpi_counter");
  testing::KeelProcess vmm({"run", "--accel", "emu", "--memory", "32M", "--sandbox", "off", "--test-guest",
                            guest, "--disk", disk.string(), "--control", sock});
  ASSERT_TRUE(vmm.wait_for_stdout("count 1\n", 60s)) << vmm.wait(10s).describe();
  control::ControlClient client = control::ControlClient::connect(sock);
  client.execute("snapshot-save", json{{"path", snap.string()}, {"resume", false}}, 60s);
  client.execute("quit");
  vmm.wait(30s);
  std::string files = (snap / "state").string() + "," + (snap / "memory").string();

  testing::KeelProcess wrong({"run", "--restore-files", files, "--sandbox", "off", "--memory", "32M",
                              "--test-guest", guest, "--disk", other.string()});
  testing::ProcessResult r = wrong.wait(30s);
  EXPECT_FALSE(r.exited && r.status == 0) << r.describe();
  EXPECT_NE(r.err.find("the saved VM's disk 0 path is '" + disk.string() + "', the VM to run has '" +
                       other.string() + "'"),
            std::string::npos)
      << r.describe();
  testing::KeelProcess more_ram({"run", "--restore-files", files, "--sandbox", "off", "--memory", "64M",
                                 "--test-guest", guest, "--disk", disk.string()});
  testing::ProcessResult m = more_ram.wait(30s);
  EXPECT_NE(m.err.find("the saved VM's RAM size"), std::string::npos) << m.describe();

  // The same VM named: it continues.
  testing::KeelProcess right({"run", "--restore-files", files, "--sandbox", "off", "--memory", "32M",
                              "--test-guest", guest, "--disk", disk.string()});
  EXPECT_TRUE(right.wait_for_stdout("count ", 60s));
  right.send_signal(SIGTERM);
  right.wait(30s);
}

}  // namespace
}  // namespace keel
