// Starts that survive crashes: the daemon SIGKILLed at every point of a start, a store that
// cannot record a start, VMMs the daemon lost track of, idle clients on a VMM's control socket,
// and a guest that resets as soon as it runs. The VMM is the stand-in of e2e_manager_daemon_test.cc
// (keel_tests itself with KEEL_TEST_FAKE_VMM=1).
#include <dirent.h>

#include <fstream>

#include "control/unix_socket.h"
#include "e2e_manager_helpers.h"
#include "sandbox/cgroup.h"

namespace keel::e2e {
namespace {

std::string self_exe() { return std::filesystem::read_symlink("/proc/self/exe").string(); }

// Live processes (not zombies) whose command line names `control_path` after --control.
std::vector<pid_t> vmm_processes(const std::string& control_path) {
  std::vector<pid_t> out;
  DIR* proc = ::opendir("/proc");
  while (dirent* e = ::readdir(proc)) {
    pid_t pid = std::atoi(e->d_name);
    if (pid <= 0) continue;
    std::string cmdline = read_whole("/proc/" + std::to_string(pid) + "/cmdline");
    if (cmdline.find(std::string("--control") + '\0' + control_path + '\0') == std::string::npos)
      continue;
    std::string stat = read_whole("/proc/" + std::to_string(pid) + "/stat");
    size_t close = stat.rfind(')');
    if (close != std::string::npos && close + 2 < stat.size() && stat[close + 2] == 'Z') continue;
    out.push_back(pid);
  }
  ::closedir(proc);
  return out;
}

class ManagerCrashTest : public DaemonFixture {
 protected:
  std::vector<std::string> daemon_extra_args() override {
    std::vector<std::string> args{"--vmm", self_exe()};
    args.insert(args.end(), extra.begin(), extra.end());
    return args;
  }
  void daemon_environment() override { ::setenv("KEEL_TEST_FAKE_VMM", "1", 1); }
  void SetUp() override {
    DaemonFixture::SetUp();
    guest = dir + "/guest.bin";
    std::ofstream(guest) << "counter guest";
  }
  json definition(const std::string& name, const std::string& file) {
    return json{{"name", name}, {"vcpus", 1}, {"memory_mib", 16}, {"test_guest", file}};
  }
  std::string control_path(const std::string& name) { return state_dir + "/run/" + name + ".sock"; }

  // The daemon is gone (SIGKILLed itself): reap it.
  void expect_daemon_died() {
    int status = 0;
    ASSERT_EQ(::waitpid(daemon_pid, &status, 0), daemon_pid);
    EXPECT_TRUE(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL) << status;
    daemon_pid = -1;
  }

  std::vector<std::string> extra;
  std::string guest;
};

TEST_F(ManagerCrashTest, DaemonKilledAtEveryPointOfAStartLeavesNoOrphanAndNoStuckVm) {
  start_daemon();
  api().call("POST", "/v1/vms", definition("k", guest));
  stop_daemon(SIGTERM);
  for (int point = 1; point <= 9; ++point) {
    SCOPED_TRACE("kill point " + std::to_string(point));
    extra = {"--test-kill-point", std::to_string(point)};
    start_daemon();
    CommandResult r = keel({"start", "k"});
    EXPECT_NE(r.exit_code, 0);  // the daemon died under it
    expect_daemon_died();

    extra.clear();
    start_daemon();  // recovery has run once the API answers
    json vm = info("k");
    std::vector<pid_t> vmms = vmm_processes(control_path("k"));
    if (vm["state"] == "shut off") {
      EXPECT_TRUE(vmms.empty()) << "orphan VMM(s) " << json(vmms).dump();
    } else {
      // Recorded before the daemon died: adopted, and the only one.
      ASSERT_EQ(vmms.size(), 1u) << vm.dump();
      EXPECT_EQ(vm["pid"], vmms[0]);
      ASSERT_EQ(keel({"destroy", "k"}).exit_code, 0);
      wait_state("k", "shut off", "destroyed");
    }
    // Not stuck: it starts and stops as usual.
    r = keel({"start", "k"});
    ASSERT_EQ(r.exit_code, 0) << r.err;
    wait_state("k", "running");
    ASSERT_EQ(keel({"destroy", "k"}).exit_code, 0);
    wait_state("k", "shut off", "destroyed");
    EXPECT_TRUE(vmm_processes(control_path("k")).empty());
    EXPECT_FALSE(std::filesystem::exists(state_dir + "/run/k.pid"));
    stop_daemon(SIGTERM);
  }
}

TEST_F(ManagerCrashTest, AStoreWriteFailureDuringStartLeavesTheVmOffAndItsVmmGone) {
  extra = {"--test-fail-start-record"};
  start_daemon();
  api().call("POST", "/v1/vms", definition("s", guest));
  auto r = api().request("POST", "/v1/vms/s/start", "");
  EXPECT_EQ(r.status, 500) << r.body;
  EXPECT_NE(r.body.find("cannot record the start: store: database or disk is full"),
            std::string::npos) << r.body;
  json vm = info("s");
  EXPECT_EQ(vm["state"], "shut off");
  EXPECT_EQ(vm["reason"], "failed to start");
  EXPECT_FALSE(vm.contains("pid"));
  EXPECT_TRUE(vmm_processes(control_path("s")).empty());
  // Not wedged: with the store writable again (a daemon without the fault) it starts.
  stop_daemon(SIGTERM);
  extra.clear();
  start_daemon();
  EXPECT_EQ(info("s")["state"], "shut off");
  ASSERT_EQ(keel({"start", "s"}).exit_code, 0);
  wait_state("s", "running");
  api().call("POST", "/v1/vms/s/destroy");
}

TEST_F(ManagerCrashTest, AVmmTheDaemonLostIsFoundThroughItsCgroupAndKilled) {
  if (!sandbox::cgroup2_mount()) GTEST_SKIP() << "no cgroup v2 on this host";
  // Dies after the VMM was let run but before the start was recorded; the pidfile that would
  // have found it is lost too. The VM's cgroup still holds it.
  extra = {"--test-kill-point", "4"};
  start_daemon();
  api().call("POST", "/v1/vms", definition("c", guest));
  EXPECT_NE(keel({"start", "c"}).exit_code, 0);
  expect_daemon_died();
  std::vector<pid_t> lost = vmm_processes(control_path("c"));
  ASSERT_EQ(lost.size(), 1u);
  std::filesystem::remove(state_dir + "/run/c.pid");
  extra.clear();
  start_daemon();
  EXPECT_EQ(info("c")["state"], "shut off");
  auto deadline = Clock::now() + 10s;
  while (!vmm_processes(control_path("c")).empty() && Clock::now() < deadline)
    std::this_thread::sleep_for(10ms);
  EXPECT_TRUE(vmm_processes(control_path("c")).empty());
}

TEST_F(ManagerCrashTest, IdleClientsOnAVmmsControlSocketDoNotLockTheDaemonOut) {
  start_daemon();
  api().call("POST", "/v1/vms", definition("i", guest));
  ASSERT_EQ(keel({"start", "i"}).exit_code, 0);
  pid_t pid = wait_state("i", "running")["pid"].get<pid_t>();
  stop_daemon(SIGKILL);
  // More idle clients than the VMM has slots; none of them ever negotiates.
  std::vector<UniqueFd> idle;
  for (int i = 0; i < 80; ++i) idle.push_back(control::connect_unix(control_path("i"), 2000ms));
  start_daemon();
  json vm = wait_state("i", "running");
  EXPECT_EQ(vm["pid"], pid) << "the healthy VM was not adopted";
  EXPECT_EQ(::kill(pid, 0), 0);
  read_console_until("i", [](const std::string& s) { return last_count(s) >= 0; }, 30s, false);
  api().call("POST", "/v1/vms/i/destroy");
}

TEST_F(ManagerCrashTest, AGuestThatResetsAtOnceIsRestartedWithBackoffAndItsFirstLogKept) {
  start_daemon();
  std::string resetting = dir + "/reset.bin";
  std::ofstream(resetting) << "reset at once";
  api().call("POST", "/v1/vms", definition("r", resetting));
  EventWatcher events(socket);
  ASSERT_EQ(keel({"start", "r"}).exit_code, 0);
  // Four starts: the first by hand, then restarts 1 s, 2 s and 4 s after each reset.
  auto deadline = Clock::now() + 30s;
  while (events.all("r", "started").size() < 4 && Clock::now() < deadline)
    std::this_thread::sleep_for(10ms);
  std::vector<json> starts = events.all("r", "started");
  ASSERT_GE(starts.size(), 4u) << json(events.names("r")).dump() << "\n" << read_whole(dir + "/daemon.log");
  auto at = [](const json& e) {
    return std::chrono::microseconds(e["timestamp"]["seconds"].get<int64_t>() * 1000000 +
                                     e["timestamp"]["microseconds"].get<int64_t>());
  };
  // Each reset announces its delay, doubling from 1 s; the next start comes no earlier. (How much
  // later depends on how fast the stand-in VMM starts on a loaded host: not measured.)
  std::vector<json> reboots = events.all("r", "rebooting");
  ASSERT_GE(reboots.size(), 3u);
  for (size_t i = 0; i < 3; ++i) {
    SCOPED_TRACE("restart " + std::to_string(i + 1));
    int64_t delay = 1000 << i;
    EXPECT_NE(reboots[i]["detail"].get<std::string>().find("restarting in " + std::to_string(delay) +
                                                           " ms"),
              std::string::npos)
        << reboots[i].dump();
    EXPECT_GE(at(starts[i + 1]) - at(reboots[i]), std::chrono::milliseconds(delay));
  }
  // The log of the loop's first failure is kept aside; later runs rotate as usual.
  json vm = info("r");
  ASSERT_TRUE(vm.contains("first_failure_log")) << vm.dump();
  std::string first = read_whole(vm["first_failure_log"].get<std::string>());
  EXPECT_EQ(first.find("fake vmm pid"), first.rfind("fake vmm pid")) << first;
  ASSERT_NE(first.find("fake vmm pid"), std::string::npos) << first;
  std::string first_pid = first.substr(first.find("fake vmm pid"), first.find(':') - first.find("fake vmm pid"));
  EXPECT_EQ(read_whole(vm["log"].get<std::string>()).find(first_pid + ":"), std::string::npos);
  // While it waits for the next restart, destroy cancels it for good.
  auto wait_off = Clock::now() + 10s;
  while (info("r")["state"] != "shut off" && Clock::now() < wait_off)
    std::this_thread::sleep_for(5ms);
  EXPECT_EQ(info("r")["reason"], "restarting");
  ASSERT_EQ(keel({"destroy", "r"}).exit_code, 0);
  EXPECT_EQ(info("r")["reason"], "destroyed");
  EXPECT_NE(events.wait_for("r", "rebooting")["detail"].get<std::string>().find("restarting in"),
            std::string::npos);
}

}  // namespace
}  // namespace keel::e2e
