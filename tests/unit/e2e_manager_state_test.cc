// VM state through the daemon, end to end through the CLI with real (confined) VMMs running the
// counter guest (tests/guests/acpi_counter.asm) on emu: `keel save` and `keel restore` continue
// the count, `keel snapshot` keeps the VM running and restores as a second VM, bad restores leave
// nothing behind, and `keel migrate` moves a running VM to a second daemon, both daemons then
// saying where it is.
#include <signal.h>
#include <sys/wait.h>

#include <filesystem>
#include <fstream>

#include "e2e_manager_helpers.h"

namespace keel::e2e {
namespace {

namespace fs = std::filesystem;

std::string counter_guest() { return KEEL_TEST_GUEST_DIR "/acpi_counter.bin"; }

// The first "count N" of a console, -1 if none.
long first_count(const std::string& console) {
  size_t pos = console.find("count ");
  while (pos != std::string::npos) {
    size_t end = console.find('\n', pos);
    if (end == std::string::npos) return -1;
    try {
      return std::stol(console.substr(pos + 6, end - pos - 6));
    } catch (...) {
      pos = console.find("count ", end);
    }
  }
  return -1;
}

class ManagerStateTest : public DaemonFixture {
 protected:
  void SetUp() override {
    DaemonFixture::SetUp();
    start_daemon();
  }
  json definition(const std::string& name) {
    return json{{"name", name}, {"vcpus", 1}, {"memory_mib", 32}, {"accel", "emu"},
                {"test_guest", counter_guest()}};
  }
  // Starts `name` and waits until its console has counted to `n`; returns the console so far.
  std::string start_counting(const std::string& name, long n) {
    EXPECT_EQ(keel({"start", name}).exit_code, 0);
    wait_state(name, "running");
    return read_console_until(name, [n](const std::string& s) { return last_count(s) >= n; });
  }
  // The console of the run that ended last (the daemon keeps it after the VM stopped).
  long last_count_of_last_run(const std::string& name) {
    std::string seen;
    api().stream("/v1/vms/" + name + "/console?history=1", [&](std::string_view b) {
      seen.append(b);
      return true;
    });
    return last_count(seen);
  }
};

TEST_F(ManagerStateTest, SaveStopsTheVmAndRestoreContinuesItsCount) {
  api().call("POST", "/v1/vms", definition("c1"));
  start_counting("c1", 3);
  std::string save_dir = dir + "/saves/c1";
  CommandResult r = keel({"save", "c1", save_dir});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.out.find("Domain 'c1' saved to " + save_dir), std::string::npos) << r.out;
  json vm = wait_state("c1", "shut off", "saved");
  EXPECT_EQ(vm["location"]["saved_to"], save_dir) << vm.dump();
  for (const char* file : {"state", "memory", "vm.json"}) EXPECT_TRUE(fs::exists(save_dir + "/" + file)) << file;
  EXPECT_FALSE(fs::exists(save_dir + "/state.tmp"));
  long saved_at = last_count_of_last_run("c1");
  ASSERT_GE(saved_at, 3);

  r = keel({"restore", save_dir});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.out.find("Domain 'c1' restored from " + save_dir), std::string::npos) << r.out;
  vm = wait_state("c1", "running", "restored");
  EXPECT_EQ(vm["location"]["restored_from"], save_dir) << vm.dump();
  // The count goes on from where it was saved: the restored run never printed an early line.
  std::string console = read_console_until("c1", [&](const std::string& s) { return last_count(s) >= saved_at + 3; });
  EXPECT_GE(first_count(console), saved_at) << console;
  EXPECT_EQ(console.find("count 0\n"), std::string::npos) << console;

  ASSERT_EQ(keel({"destroy", "c1"}).exit_code, 0);
  wait_state("c1", "shut off", "destroyed");
}

TEST_F(ManagerStateTest, ASnapshotKeepsTheVmRunningAndRestoresAsASecondVm) {
  api().call("POST", "/v1/vms", definition("c1"));
  start_counting("c1", 2);
  std::string snap = dir + "/snap";
  CommandResult r = keel({"snapshot", "c1", snap});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  json vm = info("c1");
  EXPECT_EQ(vm["state"], "running") << vm.dump();
  long at_snapshot = last_count(read_console_until("c1", [](const std::string& s) { return last_count(s) >= 0; }));

  // The original runs: restoring under its own name is refused, under a new one it is a second VM.
  r = keel({"restore", snap});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.err.find("VM 'c1' is running; restore it under another name"), std::string::npos) << r.err;
  r = keel({"restore", snap, "--name", "c2"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  vm = wait_state("c2", "running", "restored");
  EXPECT_EQ(vm["definition"]["test_guest"], counter_guest()) << vm.dump();
  std::string c2 = read_console_until("c2", [&](const std::string& s) { return last_count(s) >= at_snapshot + 2; });
  EXPECT_EQ(c2.find("count 0\n"), std::string::npos) << c2;
  // Both count on, independently.
  read_console_until("c1", [&](const std::string& s) { return last_count(s) >= at_snapshot + 2; }, 30s, false);
  json list = api().call("GET", "/v1/vms");
  EXPECT_EQ(list.size(), 2u) << list.dump();

  // One snapshot restores any number of times: c2 stopped, then restored again into itself.
  ASSERT_EQ(keel({"destroy", "c2"}).exit_code, 0);
  wait_state("c2", "shut off", "destroyed");
  r = keel({"restore", snap, "--name", "c2", "--paused"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  wait_state("c2", "paused");
  ASSERT_EQ(keel({"destroy", "c2"}).exit_code, 0);
  ASSERT_EQ(keel({"destroy", "c1"}).exit_code, 0);
}

TEST_F(ManagerStateTest, BadSavesAndRestoresAreRefusedAndLeaveNothingBehind) {
  api().call("POST", "/v1/vms", definition("c1"));
  // A VM that is off has no state to save.
  CommandResult r = keel({"save", "c1", dir + "/never"});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.err.find("cannot save VM 'c1': it is shut off"), std::string::npos) << r.err;
  EXPECT_FALSE(fs::exists(dir + "/never"));
  // A directory that holds no save.
  r = keel({"restore", dir + "/nothing-here"});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.err.find(dir + "/nothing-here/vm.json"), std::string::npos) << r.err;

  start_counting("c1", 2);
  std::string snap = dir + "/snap";
  ASSERT_EQ(keel({"snapshot", "c1", snap}).exit_code, 0);
  // A damaged state file: the restoring VMM refuses it by name, and the VM the restore would
  // have defined is not left defined.
  {
    std::fstream f(snap + "/state", std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(200);
    char byte = 0;
    f.read(&byte, 1);
    f.seekp(200);
    byte ^= 0x5A;
    f.write(&byte, 1);
  }
  r = keel({"restore", snap, "--name", "c3"});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.err.find("VM 'c3' failed to start"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find(snap + "/state: section 'vm' fails its checksum"), std::string::npos) << r.err;
  EXPECT_EQ(keel({"info", "c3"}).exit_code, 1);
  // A saved VM.json naming nothing: refused before anything starts.
  std::ofstream(snap + "/vm.json") << "{\"name\": 7}";
  r = keel({"restore", snap, "--name", "c4"});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.err.find("not a saved VM"), std::string::npos) << r.err;
  EXPECT_EQ(keel({"info", "c4"}).exit_code, 1);
  // Through all of it the original ran on.
  EXPECT_EQ(info("c1")["state"], "running");
  ASSERT_EQ(keel({"destroy", "c1"}).exit_code, 0);
}

// A second daemon on this host: its own state directory and API socket.
class SecondDaemon {
 public:
  explicit SecondDaemon(const std::string& dir, const std::string& suffix = "2")
      : state_dir(dir + "/state" + suffix), socket(dir + "/api" + suffix + ".sock") {
    pid_ = ::fork();
    if (pid_ == 0) {
      std::string log = dir + "/daemon" + suffix + ".log";
      int fd = ::open(log.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0600);
      ::dup2(fd, 1);
      ::dup2(fd, 2);
      ::execl(KEEL_BINARY, KEEL_BINARY, "daemon", "--state-dir", state_dir.c_str(), "--socket",
              socket.c_str(), nullptr);
      ::_exit(127);
    }
    for (auto deadline = Clock::now() + 20s; Clock::now() < deadline;) {
      try {
        api().call("GET", "/v1/version");
        return;
      } catch (const Error&) {
        std::this_thread::sleep_for(10ms);  // polling the daemon's start, not synchronising work
      }
    }
    ADD_FAILURE() << "the second daemon did not come up";
  }
  ~SecondDaemon() {
    if (pid_ < 0) return;
    try {
      for (auto& vm : api().call("GET", "/v1/vms"))
        if (vm.contains("pid")) ::kill(vm["pid"].get<pid_t>(), SIGKILL);
    } catch (...) {
    }
    stop();
  }
  // SIGTERM; returns how long the daemon took to exit.
  std::chrono::milliseconds stop() {
    auto start = Clock::now();
    ::kill(pid_, SIGTERM);
    int status;
    ::waitpid(pid_, &status, 0);
    pid_ = -1;
    return std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - start);
  }
  manager::ApiClient api() { return manager::ApiClient(socket, 30s); }
  json wait_state(const std::string& name, const std::string& state, const std::string& reason) {
    json vm;
    for (auto deadline = Clock::now() + 60s; Clock::now() < deadline;) {
      try {
        vm = api().call("GET", "/v1/vms/" + name);
        if (vm["state"] == state && vm["reason"] == reason) return vm;
      } catch (const manager::ApiError&) {
      }
      std::this_thread::sleep_for(10ms);
    }
    ADD_FAILURE() << name << " never reached " << state << " (" << reason << ") on the second daemon: " << vm.dump();
    return vm;
  }

  std::string state_dir, socket;

 private:
  pid_t pid_ = -1;
};

TEST_F(ManagerStateTest, MigrateMovesARunningVmToAnotherDaemon) {
  SecondDaemon target(dir);
  api().call("POST", "/v1/vms", definition("c1"));
  start_counting("c1", 3);

  // A target that is not there: refused, and the VM goes on here.
  CommandResult r = keel({"migrate", "c1", "--to", dir + "/nobody.sock"});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.err.find("the daemon at " + dir + "/nobody.sock refused it"), std::string::npos) << r.err;
  EXPECT_EQ(info("c1")["state"], "running");

  r = keel({"migrate", "c1", "--to", target.socket});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.out.find("Domain 'c1' migrated to " + target.socket), std::string::npos) << r.out;
  // Both daemons say where it is: off here (migrated, and to where), running there.
  json here = wait_state("c1", "shut off", "migrated");
  EXPECT_EQ(here["location"]["migrated_to"], target.socket) << here.dump();
  json there = target.wait_state("c1", "running", "migrated");
  EXPECT_EQ(there["location"]["migrated_in"], true) << there.dump();
  long moved_at = last_count_of_last_run("c1");
  ASSERT_GE(moved_at, 3);

  // The count goes on over there.
  std::string seen;
  target.api().stream("/v1/vms/c1/console?history=1", [&](std::string_view b) {
    seen.append(b);
    return last_count(seen) < moved_at + 3;
  }, [deadline = Clock::now() + 60s] { return Clock::now() > deadline; });
  EXPECT_GE(last_count(seen), moved_at + 3) << seen;
  EXPECT_EQ(seen.find("count 0\n"), std::string::npos) << seen;

  // Moving it back, paused: the definition here matches, so it is taken in again, and stays
  // paused as it was.
  ASSERT_EQ(run_keel({"suspend", "c1", "--socket", target.socket}, dir).exit_code, 0);
  CommandResult back = run_keel({"migrate", "c1", "--to", socket, "--socket", target.socket}, dir);
  ASSERT_EQ(back.exit_code, 0) << back.err;
  wait_state("c1", "paused");
  ASSERT_EQ(keel({"resume", "c1"}).exit_code, 0);
  wait_state("c1", "running");
  target.wait_state("c1", "shut off", "migrated");
  ASSERT_EQ(keel({"destroy", "c1"}).exit_code, 0);
}

// A target whose stream never comes: the daemon's stop does not wait for it, and the VM it
// defined for the migration is not left behind.
TEST_F(ManagerStateTest, AnIncomingMigrationThatNeverComesLeavesNothingBehind) {
  auto target = std::make_unique<SecondDaemon>(dir);
  json answer = target->api().call("POST", "/v1/vms/c9/incoming", json{{"definition", definition("c9")}});
  ASSERT_TRUE(answer.contains("uri")) << answer.dump();
  EXPECT_EQ(answer["uri"].get<std::string>().rfind("tcp:127.0.0.1:", 0), 0u) << answer.dump();
  // Defined and shut off while it waits; a second incoming for it is refused only once it runs.
  EXPECT_EQ(target->api().call("GET", "/v1/vms/c9")["state"], "shut off");
  auto took = target->stop();
  EXPECT_LT(took, 20s);
  target = std::make_unique<SecondDaemon>(dir);
  try {
    target->api().call("GET", "/v1/vms/c9");
    ADD_FAILURE() << "c9 is still defined";
  } catch (const manager::ApiError& e) {
    EXPECT_EQ(e.status(), 404) << e.what();
  }
  // A definition it cannot take is refused before anything listens.
  try {
    target->api().call("POST", "/v1/vms/c8/incoming", json{{"definition", json{{"vcpus", 1}}}});
    ADD_FAILURE() << "an incomplete definition was taken";
  } catch (const manager::ApiError& e) {
    EXPECT_EQ(e.status(), 422) << e.what();
  }
}

}  // namespace
}  // namespace keel::e2e
