// The daemon end to end, with real VMM *processes* that run a stand-in VM: keel_tests itself,
// started by the daemon with KEEL_TEST_FAKE_VMM=1, serves the real ControlServer over a fake
// ControlTarget whose "guest" prints a progress counter on its console. This exercises the
// daemon, store, supervision, restart safety and the CLI independently of an engine; the same
// flows with purpose-built guests on the kvm engine live in e2e_manager_guest_test.cc.
#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>

#include <atomic>
#include <cstring>
#include <condition_variable>
#include <fstream>
#include <mutex>

#include "control/control_server.h"
#include "control/unix_socket.h"
#include "manager/vmm_process.h"
#include "e2e_manager_helpers.h"
#include "manager/vm_definition.h"

namespace keel::e2e {
namespace {

// ---- the stand-in VMM ------------------------------------------------------------------------

class CounterVm : public control::ControlTarget {
 public:
  // `resets`: the "guest" resets itself as soon as it runs (a crash loop). `panics`: it reports a
  // kernel panic as soon as it runs, as keel run --on-panic pause does (GUEST_PANICKED, paused).
  CounterVm(bool paused, bool resets = false, bool panics = false)
      : running_(!paused), resets_(resets), panics_(panics) {
    counter_ = std::thread([this] { count(); });
  }
  ~CounterVm() override {
    {
      std::lock_guard lock(mutex_);
      exiting_ = true;
    }
    cv_.notify_all();
    counter_.join();
  }
  control::RunStatus query_status() override {
    std::lock_guard lock(mutex_);
    if (panicked_) return control::RunStatus{control::RunState::kGuestPanicked, "panicked"};
    return running_ ? control::RunStatus{control::RunState::kRunning, "booted"}
                    : control::RunStatus{control::RunState::kPaused, "user"};
  }
  void pause() override {
    set_running(false);
    emit(control::event::kStop, json::object());
  }
  void resume() override {
    set_running(true);
    emit(control::event::kResume, json::object());
    if (resets_) {
      emit(control::event::kReset, json{{"guest", true}, {"reason", "guest-reset"}});
      emit(control::event::kShutdown, json{{"guest", true}, {"reason", "guest-reset"}});
      finish(0);
    }
    if (panics_) {
      set_running(false);
      {
        std::lock_guard lock(mutex_);
        panicked_ = true;
      }
      emit(control::event::kGuestPanicked, json{{"action", "pause"}});
    }
  }
  void powerdown() override {
    emit(control::event::kPowerdown, json::object());
    // The "guest" reacts to the power button by powering off.
    emit(control::event::kShutdown, json{{"guest", true}, {"reason", "guest-shutdown"}});
    finish(0);
  }
  void reset() override {
    emit(control::event::kReset, json{{"guest", false}, {"reason", "host-qmp-system-reset"}});
    emit(control::event::kShutdown, json{{"guest", false}, {"reason", "host-qmp-system-reset"}});
    finish(0);
  }
  void quit() override { finish(0); }
  std::vector<control::CpuInfo> query_cpus() override { return {{0, ::gettid(), false}}; }
  void set_event_callback(EventCallback cb) override {
    std::lock_guard lock(mutex_);
    on_event_ = std::move(cb);
  }
  void set_console_callback(ConsoleCallback cb) override {
    std::lock_guard lock(mutex_);
    on_console_ = std::move(cb);
  }
  void console_input(std::string_view bytes) override { print("echo: " + std::string(bytes) + "\n"); }

  bool finished(int& code) {
    std::lock_guard lock(mutex_);
    code = exit_code_;
    return done_;
  }

 private:
  void count() {
    std::unique_lock lock(mutex_);
    long n = 0;
    while (!exiting_) {
      cv_.wait_for(lock, 20ms, [&] { return exiting_; });
      if (running_ && !done_) {
        lock.unlock();
        print("count " + std::to_string(n++) + "\n");
        lock.lock();
      }
    }
  }
  void print(const std::string& text) {
    ConsoleCallback cb;
    {
      std::lock_guard lock(mutex_);
      cb = on_console_;
    }
    if (cb) cb(text);
  }
  void emit(const char* name, json data) {
    EventCallback cb;
    {
      std::lock_guard lock(mutex_);
      cb = on_event_;
    }
    if (cb) cb(name, std::move(data));
  }
  void set_running(bool on) {
    std::lock_guard lock(mutex_);
    running_ = on;
  }
  void finish(int code) {
    std::lock_guard lock(mutex_);
    done_ = true;
    exit_code_ = code;
  }

  std::mutex mutex_;
  std::condition_variable cv_;
  bool running_;
  bool resets_;
  bool panics_;
  bool panicked_ = false;
  bool exiting_ = false;
  bool done_ = false;
  int exit_code_ = 0;
  EventCallback on_event_;
  ConsoleCallback on_console_;
  std::thread counter_;
};

// `keel_tests run --control PATH [--paused] ... --test-guest FILE`, as the daemon runs a VMM. A
// test guest file whose content starts with "fail" makes it exit 1 at once, like a VMM that
// cannot load its guest.
int fake_vmm_main(const std::vector<std::string>& args) {
  std::string control_path, guest;
  bool paused = false;
  int ready_fd = -1;
  for (size_t i = 0; i < args.size(); ++i) {
    if (args[i] == "--control" && i + 1 < args.size()) control_path = args[i + 1];
    if (args[i] == "--ready-fd" && i + 1 < args.size()) ready_fd = std::stoi(args[i + 1]);
    if (args[i] == "--test-guest" && i + 1 < args.size()) guest = args[i + 1];
    if (args[i] == "--paused") paused = true;
  }
  if (control_path.empty()) return 2;
  std::string content = read_whole(guest);
  if (content.rfind("fail", 0) == 0) {
    std::fprintf(stderr, "keel: cannot load %s: not a guest\n", guest.c_str());
    return 1;
  }
  // "ready-error": a VMM that fails before it is ready reports its error on the ready pipe, as
  // keel run does, and prints a line meant for a terminal that must not reach the API.
  if (content.rfind("ready-error", 0) == 0 && ready_fd >= 0) {
    std::fprintf(stderr, "keel: error: cannot lock the disk\nRun 'keel help' for more information.\n");
    std::string report = "Ecannot lock the disk /x.img: held by another keel";
    [[maybe_unused]] ssize_t n = ::write(ready_fd, report.data(), report.size());
    return 1;
  }
  // "ignore-term": a VMM that does not end on SIGTERM (destroy must fall back to SIGKILL).
  if (content.rfind("ignore-term", 0) == 0) ::signal(SIGTERM, SIG_IGN);
  CounterVm vm(paused, content.rfind("reset", 0) == 0, content.rfind("panic", 0) == 0);
  control::ControlServerOptions options;
  if (const char* token = std::getenv("KEEL_CONTROL_TOKEN")) options.daemon_token = token;
  std::fprintf(stderr, "fake vmm pid %d: %s\n", ::getpid(), content.c_str());
  control::ControlServer server(control_path, vm, options);
  if (ready_fd >= 0) {  // as `keel run --ready-fd`: listening now
    [[maybe_unused]] ssize_t n = ::write(ready_fd, "R", 1);
    ::close(ready_fd);
  }
  int code = 0;
  while (!vm.finished(code)) server.run_once(20ms);
  server.flush(500ms);
  return code;
}

// Runs before main() when the daemon started this binary as its VMM.
struct FakeVmmHook {
  FakeVmmHook() {
    if (!std::getenv("KEEL_TEST_FAKE_VMM")) return;
    std::ifstream in("/proc/self/cmdline", std::ios::binary);
    std::vector<std::string> args;
    for (std::string arg; std::getline(in, arg, '\0');) args.push_back(arg);
    if (args.size() < 2 || args[1] != "run") return;
    std::exit(fake_vmm_main(args));
  }
} fake_vmm_hook;

std::string self_exe() { return std::filesystem::read_symlink("/proc/self/exe").string(); }

// ---- the tests -------------------------------------------------------------------------------

class ManagerDaemonTest : public DaemonFixture {
 protected:
  std::vector<std::string> daemon_extra_args() override { return {"--vmm", self_exe()}; }
  void daemon_environment() override { ::setenv("KEEL_TEST_FAKE_VMM", "1", 1); }

  void SetUp() override {
    DaemonFixture::SetUp();
    guest = dir + "/guest.bin";
    std::ofstream(guest) << "counter guest";
    start_daemon();
  }
  json definition(const std::string& name) {
    return json{{"name", name}, {"vcpus", 1}, {"memory_mib", 16}, {"test_guest", guest}};
  }
  void define(const std::string& name) { api().call("POST", "/v1/vms", definition(name)); }

  std::string guest;
};

TEST_F(ManagerDaemonTest, LifecycleThroughTheCli) {
  write_definition("web1.json", definition("web1"));
  CommandResult r = keel({"define", dir + "/web1.json"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.out.find("Domain 'web1' defined"), std::string::npos);

  r = keel({"list"});
  EXPECT_EQ(r.exit_code, 0);
  EXPECT_EQ(r.out.find("web1"), std::string::npos);  // shut off VMs only with --all
  r = keel({"list", "--all", "--json"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  json listed = json::parse(r.out);
  ASSERT_EQ(listed.size(), 1u);
  EXPECT_EQ(listed[0]["state"], "shut off");

  r = keel({"start", "web1"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  json vm = wait_state("web1", "running", "booted");
  pid_t pid = vm["pid"].get<pid_t>();
  EXPECT_GT(pid, 0);
  r = keel({"list"});
  EXPECT_NE(r.out.find("running (booted)"), std::string::npos) << r.out;
  r = keel({"info", "web1", "--json"});
  EXPECT_EQ(json::parse(r.out)["pid"], pid);

  // The console counts.
  std::string console = read_console_until("web1", [](const std::string& s) {
    return last_count(s) >= 3;
  });
  EXPECT_NE(console.find("count 0\n"), std::string::npos);

  // Suspended, the counter stops; resumed, it goes on from where it stopped.
  expect_suspend_stops_and_resume_continues("web1", 0, 300ms);

  // Shutdown: the guest powers off.
  r = keel({"shutdown", "web1"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  wait_state("web1", "shut off", "shutdown");
  EXPECT_FALSE(info("web1").contains("pid"));

  // Destroy.
  ASSERT_EQ(keel({"start", "web1"}).exit_code, 0);
  wait_state("web1", "running");
  r = keel({"destroy", "web1"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  wait_state("web1", "shut off", "destroyed");

  // Undefine.
  r = keel({"undefine", "web1"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  r = keel({"info", "web1"});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.err.find("no VM named 'web1'"), std::string::npos) << r.err;
}

TEST_F(ManagerDaemonTest, StartPausedThenConsoleInputEchoes) {
  define("p1");
  ASSERT_EQ(keel({"start", "p1", "--paused"}).exit_code, 0);
  wait_state("p1", "paused", "user");
  api().call("POST", "/v1/vms/p1/resume");
  wait_state("p1", "running", "unpaused");
  auto r = api().request("POST", "/v1/vms/p1/console", "hello", "application/octet-stream");
  EXPECT_EQ(r.status, 200);
  read_console_until("p1", [](const std::string& s) {
    return s.find("echo: hello\n") != std::string::npos;
  });
  api().call("POST", "/v1/vms/p1/destroy");
}

TEST_F(ManagerDaemonTest, RebootStartsAFreshVmm) {
  define("r1");
  json vm = api().call("POST", "/v1/vms/r1/start");
  pid_t first = vm["pid"].get<pid_t>();
  ASSERT_EQ(keel({"reboot", "r1"}).exit_code, 0);
  auto deadline = Clock::now() + 30s;
  while (Clock::now() < deadline) {
    vm = info("r1");
    if (vm["state"] == "running" && vm.contains("pid") && vm["pid"] != first) break;
    std::this_thread::sleep_for(10ms);
  }
  EXPECT_EQ(vm["state"], "running");
  EXPECT_NE(vm.value("pid", 0), first);
  read_console_until("r1", [](const std::string& s) { return s.find("count 0\n") != std::string::npos; });
}

// reboot asks the guest (the power button: it shuts down, and a fresh VMM boots it again), as
// virsh reboot; reset restarts it without asking, as virsh reset.
TEST_F(ManagerDaemonTest, RebootAsksTheGuestAndResetDoesNot) {
  EventWatcher events(socket);
  define("b1");
  api().call("POST", "/v1/vms/b1/start");
  ASSERT_EQ(keel({"reboot", "b1"}).exit_code, 0);
  events.wait_for("b1", "started", "", 30s, 2);
  CommandResult r = keel({"reset", "b1"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.out.find("Domain 'b1' was reset"), std::string::npos) << r.out;
  events.wait_for("b1", "started", "", 30s, 3);
  EXPECT_EQ(events.names("b1"),
            (std::vector<std::string>{"defined", "started", "powerdown", "shutdown", "rebooting",
                                      "started", "reset", "shutdown", "rebooting", "started"}));
  api().call("POST", "/v1/vms/b1/destroy");
}

// destroy: SIGTERM first; a VMM that ignores it is killed once the grace period is over.
class ManagerDestroyTest : public ManagerDaemonTest {
 protected:
  std::vector<std::string> daemon_extra_args() override {
    return {"--vmm", self_exe(), "--test-destroy-grace-ms", "200"};
  }
};

TEST_F(ManagerDestroyTest, AVmmThatIgnoresSigtermIsKilledAfterTheGrace) {
  std::string stubborn = dir + "/stubborn.bin";
  std::ofstream(stubborn) << "ignore-term";
  api().call("POST", "/v1/vms", json{{"name", "s1"}, {"test_guest", stubborn}});
  api().call("POST", "/v1/vms/s1/start");
  CommandResult r = keel({"destroy", "s1"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  wait_state("s1", "shut off", "destroyed");
  EXPECT_NE(read_whole(dir + "/daemon.log").find("did not end within 200 ms of SIGTERM"),
            std::string::npos);
}

// A guest panic (GUEST_PANICKED from the VMM): on_crash preserve keeps the VMM, paused, for
// inspection; destroy (the default) ends it.
TEST_F(ManagerDaemonTest, OnCrashPreserveKeepsThePanickedVmAndDestroyEndsIt) {
  std::string panics = dir + "/panic.bin";
  std::ofstream(panics) << "panic";
  api().call("POST", "/v1/vms", json{{"name", "p1"}, {"test_guest", panics}, {"on_crash", "preserve"}});
  api().call("POST", "/v1/vms", json{{"name", "p2"}, {"test_guest", panics}});
  api().call("POST", "/v1/vms/p1/start");
  api().call("POST", "/v1/vms/p2/start");
  json vm = wait_state("p1", "crashed", "panicked");
  EXPECT_GT(vm.value("pid", 0), 0);
  wait_state("p2", "shut off", "crashed");
  CommandResult r = keel({"list"});
  EXPECT_NE(r.out.find("crashed (panicked)"), std::string::npos) << r.out;
  EXPECT_EQ(keel({"suspend", "p1"}).exit_code, 1);
  ASSERT_EQ(keel({"destroy", "p1"}).exit_code, 0);
  wait_state("p1", "shut off", "destroyed");
}

// define of an existing name replaces a shut-off VM's definition (virsh define); while it runs
// only what needs no restart may change. dumpdef prints what define takes; edit round-trips it.
TEST_F(ManagerDaemonTest, RedefineDumpdefAndEdit) {
  write_definition("v1.json", definition("v1"));
  ASSERT_EQ(keel({"define", dir + "/v1.json"}).exit_code, 0);
  json changed = definition("v1");
  changed["vcpus"] = 2;
  write_definition("v1.json", changed);
  CommandResult r = keel({"define", dir + "/v1.json"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  r = keel({"dumpdef", "v1"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  json dumped = json::parse(r.out);
  EXPECT_EQ(dumped["vcpus"], 2);
  EXPECT_EQ(dumped["test_guest"], guest);

  // EDITOR is run through the shell with the file as its argument, as git and virsh do.
  std::string editor = "sed -i 's/\"vcpus\": 2/\"vcpus\": 3/'";
  ::setenv("EDITOR", editor.c_str(), 1);  // inherited by keel (this test's own process)
  ::unsetenv("VISUAL");
  CommandResult edited = keel({"edit", "v1"});
  ::unsetenv("EDITOR");
  ASSERT_EQ(edited.exit_code, 0) << edited.err;
  EXPECT_EQ(info("v1")["definition"]["vcpus"], 3);

  api().call("POST", "/v1/vms/v1/start");
  changed["vcpus"] = 4;
  auto put = api().request("PUT", "/v1/vms/v1", changed.dump());
  EXPECT_EQ(put.status, 409);
  EXPECT_NE(put.body.find("shut it down to change vcpus"), std::string::npos) << put.body;
  ASSERT_EQ(keel({"autostart", "v1"}).exit_code, 0);  // needs no restart: allowed while running
  EXPECT_EQ(info("v1")["definition"]["autostart"], true);
  CommandResult shown = keel({"info", "v1"});
  EXPECT_NE(shown.out.find("Autostart:       enable\n"), std::string::npos) << shown.out;
  EXPECT_NE(shown.out.find("On crash:        destroy\n"), std::string::npos) << shown.out;
  api().call("POST", "/v1/vms/v1/destroy");
  // A PUT of a new name defines it; a body naming another VM is refused.
  EXPECT_EQ(api().request("PUT", "/v1/vms/v2", definition("v2").dump()).status, 201);
  EXPECT_EQ(api().request("PUT", "/v1/vms/v3", definition("v2").dump()).status, 422);
}

// autostart VMs start with the daemon once per host boot (a VM shut down by hand stays down
// across daemon restarts); removing the boot marker stands in for a host reboot.
TEST_F(ManagerDaemonTest, AutostartVmsStartWhenTheDaemonStartsAfterABoot) {
  json def = definition("a1");
  def["autostart"] = true;
  api().call("POST", "/v1/vms", def);
  stop_daemon(SIGTERM);
  std::filesystem::remove(state_dir + "/autostarted");
  start_daemon();
  wait_state("a1", "running", "booted");
  EXPECT_NE(read_whole(dir + "/daemon.log").find("VM 'a1': autostart"), std::string::npos);
  api().call("POST", "/v1/vms/a1/destroy");
}

// keel --version, keel version and GET /v1/version agree.
TEST_F(ManagerDaemonTest, VersionAgreesWithTheDaemon) {
  CommandResult plain = run_keel({"--version"}, dir);
  ASSERT_EQ(plain.exit_code, 0) << plain.err;
  CommandResult r = keel({"version"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  std::string version = api().call("GET", "/v1/version")["version"];
  EXPECT_EQ(plain.out, "keel " + version + "\n");
  EXPECT_EQ(r.out.rfind(plain.out, 0), 0u) << r.out;
  EXPECT_NE(r.out.find("daemon: keel " + version + " (API 1)"), std::string::npos) << r.out;
}

TEST_F(ManagerDaemonTest, AStartFailureReportsTheVmmsMessageAlone) {
  std::string bad = dir + "/ready-error.bin";
  std::ofstream(bad) << "ready-error";
  api().call("POST", "/v1/vms", json{{"name", "re"}, {"test_guest", bad}});
  auto r = api().request("POST", "/v1/vms/re/start", "");
  EXPECT_NE(r.status, 200);
  json body = json::parse(r.body);
  EXPECT_EQ(body["error"]["message"], "VM 're' failed to start: cannot lock the disk /x.img: held by another keel") << r.body;
  wait_state("re", "shut off", "failed to start");
}

// Run by systemd (Type=notify, NOTIFY_SOCKET) with --pidfile: the daemon says READY=1 with its
// pid once the API serves, keeps its pid in the file while it runs and removes it at exit.
class ManagerServiceTest : public ManagerDaemonTest {
 protected:
  void SetUp() override {
    DaemonFixture::SetUp();
    guest = dir + "/guest.bin";
    std::ofstream(guest) << "counter guest";
    notify_path = dir + "/notify";
    notify.reset(::socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0));
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    std::strncpy(addr.sun_path, notify_path.c_str(), sizeof addr.sun_path - 1);
    ASSERT_EQ(::bind(notify.get(), reinterpret_cast<sockaddr*>(&addr), sizeof addr), 0);
    start_daemon();
  }
  std::vector<std::string> daemon_extra_args() override {
    return {"--vmm", self_exe(), "--pidfile", dir + "/keel.pid"};
  }
  void daemon_environment() override {
    ManagerDaemonTest::daemon_environment();
    ::setenv("NOTIFY_SOCKET", notify_path.c_str(), 1);
  }
  std::string notify_path;
  UniqueFd notify;
};

TEST_F(ManagerServiceTest, TellsSystemdItIsReadyAndKeepsAPidfile) {
  pollfd p{notify.get(), POLLIN, 0};
  ASSERT_EQ(::poll(&p, 1, 20000), 1) << "no sd_notify datagram";
  char buf[256];
  ssize_t n = ::recv(notify.get(), buf, sizeof buf, 0);
  ASSERT_GT(n, 0);
  EXPECT_EQ(std::string(buf, size_t(n)), "READY=1\nMAINPID=" + std::to_string(daemon_pid));
  EXPECT_EQ(read_whole(dir + "/keel.pid"), std::to_string(daemon_pid) + "\n");
  stop_daemon(SIGTERM);
  n = ::recv(notify.get(), buf, sizeof buf, MSG_DONTWAIT);
  ASSERT_GT(n, 0);
  EXPECT_EQ(std::string(buf, size_t(n)), "STOPPING=1");
  EXPECT_FALSE(std::filesystem::exists(dir + "/keel.pid"));
  start_daemon();  // for the fixture's teardown
}

TEST_F(ManagerDaemonTest, VmmKilledWithSigkillIsCrashed) {
  define("k1");
  json vm = api().call("POST", "/v1/vms/k1/start");
  ASSERT_EQ(::kill(vm["pid"].get<pid_t>(), SIGKILL), 0);
  wait_state("k1", "shut off", "crashed");
  // And it starts again.
  api().call("POST", "/v1/vms/k1/start");
  wait_state("k1", "running", "booted");
  api().call("POST", "/v1/vms/k1/destroy");
}

TEST_F(ManagerDaemonTest, DaemonKilledAndRestartedWhileVmRuns) {
  define("d1");
  define("d2");
  json vm = api().call("POST", "/v1/vms/d1/start");
  pid_t pid = vm["pid"].get<pid_t>();
  api().call("POST", "/v1/vms/d2/start", json{{"paused", true}});
  read_console_until("d1", [](const std::string& s) { return last_count(s) >= 1; });

  kill_daemon_and_expect_adoption("d1", pid);
  wait_state("d2", "paused");
  // Still controllable: suspend/resume, destroy.
  api().call("POST", "/v1/vms/d1/suspend");
  wait_state("d1", "paused", "user");
  api().call("POST", "/v1/vms/d1/resume");
  wait_state("d1", "running");
  api().call("POST", "/v1/vms/d1/destroy");
  wait_state("d1", "shut off", "destroyed");
  api().call("POST", "/v1/vms/d2/destroy");
}

TEST_F(ManagerDaemonTest, VmmThatDiedWhileTheDaemonWasDownIsCrashed) {
  define("g1");
  json vm = api().call("POST", "/v1/vms/g1/start");
  pid_t pid = vm["pid"].get<pid_t>();
  stop_daemon(SIGKILL);
  ::kill(pid, SIGKILL);
  // The VMM was the killed daemon's child: now adopted by init (or a subreaper), which reaps it.
  auto deadline = Clock::now() + 10s;
  while (manager::process_start_time(pid) != 0 && Clock::now() < deadline) {
    std::this_thread::sleep_for(10ms);
  }
  start_daemon();
  wait_state("g1", "shut off", "crashed");
}

TEST_F(ManagerDaemonTest, FailedStartIsRecordedWithTheVmmsMessage) {
  std::string bad = dir + "/bad.bin";
  std::ofstream(bad) << "fail please";
  api().call("POST", "/v1/vms", json{{"name", "bad"}, {"test_guest", bad}});
  CommandResult r = keel({"start", "bad"});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.err.find("not a guest"), std::string::npos) << r.err;
  json vm = info("bad");
  EXPECT_EQ(vm["state"], "shut off");
  EXPECT_EQ(vm["reason"], "failed to start");
  // A file that vanished after define is refused at start, naming the field.
  std::string gone = dir + "/gone.bin";
  std::ofstream(gone) << "x";
  api().call("POST", "/v1/vms", json{{"name", "gone"}, {"test_guest", gone}});
  std::filesystem::remove(gone);
  r = keel({"start", "gone"});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.err.find("field 'test_guest'"), std::string::npos) << r.err;
}

TEST_F(ManagerDaemonTest, MalformedDefinitionsAndRequestsAreRefused) {
  // CLI: bad definitions name the field, exit 1; usage errors exit 2.
  json bad = definition("x");
  bad["vcpus"] = "two";
  write_definition("bad.json", bad);
  CommandResult r = keel({"define", dir + "/bad.json"});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.err.find("field 'vcpus'"), std::string::npos) << r.err;
  std::ofstream(dir + "/garbage.json") << "{not json";
  r = keel({"define", dir + "/garbage.json"});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.err.find("malformed JSON"), std::string::npos) << r.err;
  r = keel({"define", dir + "/does-not-exist.json"});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_EQ(keel({"start"}).exit_code, 2);
  EXPECT_EQ(keel({"list", "--bogus"}).exit_code, 2);
  EXPECT_EQ(run_keel({"no-such-verb"}, dir).exit_code, 2);

  // Duplicates.
  define("x");
  auto dup = api().request("POST", "/v1/vms", definition("x").dump());
  EXPECT_EQ(dup.status, 409);
  EXPECT_NE(dup.body.find("already defined"), std::string::npos);

  // API: statuses and JSON error bodies.
  struct Case {
    const char* method;
    std::string path;
    std::string body;
    int status;
  };
  std::vector<Case> cases{
      {"POST", "/v1/vms", "", 422},
      {"POST", "/v1/vms", "[1,2]", 422},
      {"POST", "/v1/vms", "\xff\xfe{", 422},
      {"POST", "/v1/vms", R"({"name": "y", "test_guest": ")" + guest + R"(", "extra": 1})", 422},
      {"GET", "/v1/vms/nope", "", 404},
      {"GET", "/v1/vms/..%2Fetc", "", 404},
      {"POST", "/v1/vms/nope/start", "", 404},
      {"POST", "/v1/vms/x/start", "{\"paused\": 3}", 400},
      {"POST", "/v1/vms/x/start", "{\"turbo\": true}", 400},
      {"POST", "/v1/vms/x/start", "not json", 400},
      {"POST", "/v1/vms/x/suspend", "", 409},  // not running
      {"GET", "/v1/nothing-here", "", 404},
      {"POST", "/v1/vms", std::string(2 << 20, 'x'), 413},
  };
  for (const Case& c : cases) {
    auto resp = api().request(c.method, c.path, c.body);
    EXPECT_EQ(resp.status, c.status) << c.method << " " << c.path << ": " << resp.body;
    json body = json::parse(resp.body, nullptr, false);
    EXPECT_TRUE(body.is_object() && body.contains("error")) << c.path << ": " << resp.body;
  }
  // Garbage that is not HTTP at all.
  {
    UniqueFd fd = control::connect_unix(socket);
    control::write_all(fd.get(), std::string("\x00\x01garbage\r\n\r\n", 13));
  }
  api().call("POST", "/v1/vms/x/start");
  auto conflict = api().request("DELETE", "/v1/vms/x");
  EXPECT_EQ(conflict.status, 409);
  conflict = api().request("POST", "/v1/vms/x/start");
  EXPECT_EQ(conflict.status, 409);
  api().call("POST", "/v1/vms/x/destroy");
  EXPECT_EQ(api().request("DELETE", "/v1/vms/x").status, 200);
}

TEST_F(ManagerDaemonTest, TwentyConcurrentClients) {
  define("shared");
  api().call("POST", "/v1/vms/shared/start");
  std::atomic<int> failures{0};
  std::vector<std::thread> clients;
  for (int i = 0; i < 20; ++i) {
    clients.emplace_back([&, i] {
      try {
        manager::ApiClient c(socket, 60s);
        std::string name = "c" + std::to_string(i);
        c.call("POST", "/v1/vms", definition(name));
        c.call("POST", "/v1/vms/" + name + "/start");
        c.call("POST", "/v1/vms/" + name + "/suspend");
        c.call("POST", "/v1/vms/" + name + "/resume");
        c.call("GET", "/v1/vms");
        c.call("POST", "/v1/vms/" + name + "/destroy");
        c.call("DELETE", "/v1/vms/" + name);
        // Everyone also pokes the shared VM: the per-VM lock keeps these from interleaving, so
        // each either succeeds or is refused for the state it finds.
        for (const char* verb : {"suspend", "resume"}) {
          auto r = c.request("POST", std::string("/v1/vms/shared/") + verb);
          if (r.status != 200 && r.status != 409) ++failures;
        }
      } catch (const std::exception& e) {
        ADD_FAILURE() << "client " << i << ": " << e.what();
        ++failures;
      }
    });
  }
  for (auto& t : clients) t.join();
  EXPECT_EQ(failures, 0);
  json vms = api().call("GET", "/v1/vms");
  ASSERT_EQ(vms.size(), 1u);
  EXPECT_EQ(vms[0]["name"], "shared");
  std::string state = vms[0]["state"];
  EXPECT_TRUE(state == "running" || state == "paused") << state;
  EXPECT_EQ(integrity_check(state_dir + "/keel.db"), "ok");
  api().call("POST", "/v1/vms/shared/destroy");
}

TEST_F(ManagerDaemonTest, EventsStreamLifecycleChanges) {
  EventWatcher events(socket);
  define("e0");
  api().call("POST", "/v1/vms/e0/start");
  api().call("POST", "/v1/vms/e0/suspend");
  api().call("POST", "/v1/vms/e0/destroy");
  json stopped = events.wait_for("e0", "stopped", "destroyed");
  EXPECT_TRUE(stopped.contains("timestamp")) << stopped.dump();
  // Each change once, in order (start records the running state itself: no "resumed" for it).
  EXPECT_EQ(events.names("e0"),
            (std::vector<std::string>{"defined", "started", "suspended", "stopped"}));
}

TEST_F(ManagerDaemonTest, SecondDaemonOnTheSameStateIsRefused) {
  CommandResult r = run_keel({"daemon", "--state-dir", state_dir, "--socket", dir + "/other.sock"}, dir);
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.err.find("another keel daemon"), std::string::npos) << r.err;
}

}  // namespace
}  // namespace keel::e2e
