// The VMM's confinement (src/sandbox/), seen from outside as an attacker who took over a VMM
// thread would meet it: every thread under seccomp with no capabilities and no_new_privs, a uid of
// its own, a mount namespace whose root holds nothing; a forbidden system call ends the VMM with a
// line naming the thread and the call; `--sandbox off` and a non-root `keel run` say what they do.
#include <dirent.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <fstream>
#include <map>

#include "default_guest.h"
#include "e2e_manager_helpers.h"
#include "engine/kvm/kvm_probe.h"
#include "guest_harness.h"
#include "keel_process.h"

namespace keel {
namespace {

using namespace std::chrono_literals;
using testing::contains;
using testing::KeelProcess;
using testing::ProcessResult;

std::optional<std::string> kvm_unavailable() { return guest_test::engine_unavailable(Accel::kKvm); }
#define SKIP_WITHOUT_KVM() \
  if (auto why = kvm_unavailable()) GTEST_SKIP() << *why

std::string read_file(const std::string& path) {
  std::ifstream in(path);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

// A field of /proc/.../status ("Seccomp", "CapEff", ...), trimmed.
std::string status_field(const std::string& status, const std::string& name) {
  size_t at = status.find("\n" + name + ":");
  if (at == std::string::npos) return "?";
  size_t begin = status.find_first_not_of(" \t", at + name.size() + 2);
  return status.substr(begin, status.find('\n', begin) - begin);
}

struct ThreadState {
  std::string name, seccomp, cap_eff, no_new_privs, uid;
};

// Every thread of `pid`, by thread id.
std::map<std::string, ThreadState> threads_of(pid_t pid) {
  std::map<std::string, ThreadState> out;
  std::string dir = "/proc/" + std::to_string(pid) + "/task";
  DIR* d = ::opendir(dir.c_str());
  if (!d) return out;
  while (dirent* e = ::readdir(d)) {
    if (e->d_name[0] == '.') continue;
    std::string status = read_file(dir + "/" + e->d_name + "/status");
    std::string comm = read_file(dir + "/" + e->d_name + "/comm");
    if (!comm.empty() && comm.back() == '\n') comm.pop_back();
    out[e->d_name] = {comm, status_field(status, "Seccomp"), status_field(status, "CapEff"),
                      status_field(status, "NoNewPrivs"),
                      status_field(status, "Uid").substr(0, status_field(status, "Uid").find('\t'))};
  }
  ::closedir(d);
  return out;
}

// Every thread confined: seccomp filter mode, no capabilities, no_new_privs, not root.
void expect_confined(pid_t pid, const std::vector<std::string>& must_have_threads = {}) {
  auto threads = threads_of(pid);
  ASSERT_FALSE(threads.empty());
  for (const auto& [tid, t] : threads) {
    SCOPED_TRACE("thread " + tid + " (" + t.name + ")");
    EXPECT_EQ(t.seccomp, "2");
    EXPECT_EQ(t.cap_eff, "0000000000000000");
    EXPECT_EQ(t.no_new_privs, "1");
    EXPECT_NE(t.uid, "0");
  }
  for (const std::string& name : must_have_threads) {
    bool found = false;
    for (const auto& [tid, t] : threads) found = found || t.name == name;
    EXPECT_TRUE(found) << "no thread named " << name;
  }
  // Its own mount namespace, whose root holds nothing of the host's.
  char mine[64] = {}, theirs[64] = {};
  ASSERT_GT(::readlink("/proc/self/ns/mnt", mine, sizeof mine - 1), 0);
  ASSERT_GT(::readlink(("/proc/" + std::to_string(pid) + "/ns/mnt").c_str(), theirs, sizeof theirs - 1), 0);
  EXPECT_STRNE(mine, theirs);
  std::vector<std::string> root;
  DIR* d = ::opendir(("/proc/" + std::to_string(pid) + "/root").c_str());
  ASSERT_TRUE(d);
  while (dirent* e = ::readdir(d))
    if (e->d_name[0] != '.') root.push_back(e->d_name);
  ::closedir(d);
  EXPECT_EQ(root, std::vector<std::string>{"etc"});
}

// ---- VMMs the daemon starts ------------------------------------------------------------------

class SandboxDaemonTest : public e2e::DaemonFixture {
 protected:
  void SetUp() override {
    DaemonFixture::SetUp();
    if (kvm_unavailable()) return;
    start_daemon();
  }
  void TearDown() override {
    if (daemon_pid > 0) DaemonFixture::TearDown();
    else std::filesystem::remove_all(dir);
  }
};

TEST_F(SandboxDaemonTest, AVmmTheDaemonStartsIsConfinedOnEveryThread) {
  SKIP_WITHOUT_KVM();
  std::string disk = dir + "/disk.img";
  std::ofstream(disk) << std::string(1 << 20, '\0');
  api().call("POST", "/v1/vms",
             e2e::json{{"name", "s1"}, {"vcpus", 2}, {"memory_mib", 16}, {"accel", "kvm"},
                       {"test_guest", KEEL_TEST_GUEST_DIR "/acpi_counter.bin"},
                       {"disks", {{{"path", disk}}}}, {"nets", {{{"type", "user"}}}}});
  api().call("POST", "/v1/vms/s1/start");
  e2e::json vm = wait_state("s1", "running");
  pid_t pid = vm["pid"].get<pid_t>();
  read_console_until("s1", [](const std::string& s) { return e2e::last_count(s) >= 1; });
  expect_confined(pid, {"keel-vcpu0", "keel-vcpu1", "keel-spawner"});
  // Its uid is its own: not the daemon's, not another VM's block.
  struct stat st {};
  ASSERT_EQ(::stat(("/proc/" + std::to_string(pid)).c_str(), &st), 0);
  EXPECT_GE(st.st_uid, 0x4B450000u);
  // Still managed: suspend, resume, shut down through the confined control socket.
  api().call("POST", "/v1/vms/s1/suspend");
  wait_state("s1", "paused");
  api().call("POST", "/v1/vms/s1/resume");
  wait_state("s1", "running");
  api().call("POST", "/v1/vms/s1/shutdown");
  wait_state("s1", "shut off", "shutdown");
  EXPECT_FALSE(std::filesystem::exists(state_dir + "/run/s1.sock"));
}

// ---- keel run ------------------------------------------------------------------------------

// `keel run` on kvm whose thread of `kind` makes a forbidden call: exit 159 and the line naming it.
void expect_violation_ends_the_vmm(const std::string& kind, const std::string& line) {
  ProcessResult r = testing::run_keel({"run", "--accel", "kvm", "--test-guest",
                                       testing::test_guest("acpi_counter"),
                                       "--test-seccomp-violation", kind},
                                      "", 30s);
  EXPECT_TRUE(r.exited && r.status == 159) << r.describe();
  EXPECT_TRUE(contains(r.err, line)) << r.describe();
}

TEST(Sandbox, AForbiddenSystemCallOnAVcpuThreadEndsTheVmmNamingThreadAndCall) {
  SKIP_WITHOUT_KVM();
  expect_violation_ends_the_vmm(
      "vcpu", "keel: seccomp: the keel-vcpu0 (vCPU) thread made the forbidden system call "
              "personality (135,");
}

TEST(Sandbox, AForbiddenSystemCallOnTheMainLoopEndsTheVmm) {
  SKIP_WITHOUT_KVM();
  expect_violation_ends_the_vmm(
      "main", "the main (main loop) thread made the forbidden system call personality");
}

TEST(Sandbox, OffLeavesTheVmmUnconfined) {
  SKIP_WITHOUT_KVM();
  KeelProcess p({"run", "--accel", "kvm", "--sandbox", "off", "--test-guest",
                 testing::test_guest("acpi_counter")});
  ASSERT_TRUE(p.wait_for_stdout("count 1", 30s));
  for (const auto& [tid, t] : threads_of(p.pid())) {
    EXPECT_EQ(t.seccomp, "0") << t.name;
    EXPECT_EQ(t.uid, "0") << t.name;
  }
  p.send_signal(SIGTERM);
  EXPECT_TRUE(p.wait(20s).exited);
}

TEST(Sandbox, WithoutRootKeelRunSaysWhatItCouldNotDoAndStillFilters) {
  // nobody runs the emu engine (no /dev/kvm needed) on a test guest it can read.
  std::string guest = std::filesystem::temp_directory_path() /
                      ("keel-sandbox-guest-" + std::to_string(::getpid()) + ".bin");
  std::filesystem::copy_file(testing::test_guest("serial_hello"), guest,
                             std::filesystem::copy_options::overwrite_existing);
  ::chmod(guest.c_str(), 0644);
  testing::ReachableKeel keel;  // the build tree may be out of nobody's reach
  std::string out = testing::as_user(65534, 65534, [&] {
    ProcessResult r = testing::run_keel({"run", "--accel", "emu", "--sandbox", "on", "--test-guest",
                                         guest}, "", 30s, {}, keel.path());
    return "status " + std::to_string(r.exited ? r.status : -1) + "\n" + r.out + r.err;
  });
  std::filesystem::remove(guest);
  EXPECT_EQ(out.rfind("status 0\n", 0), 0u) << out;
  EXPECT_TRUE(contains(out, "keel: warning: sandbox: could not: not root: no mount namespace, no uid of its "
                            "own, capabilities unchanged"))
      << out;
  EXPECT_TRUE(contains(out, "Hello from the guest")) << out;
}

// ---- the device worker threads (a Linux guest drives virtio-blk and virtio-net) --------------

struct LinuxEngine {
  std::string accel, why_not;
};
LinuxEngine linux_engine() {
  if (probe_kvm().can_run_stock_kernel()) return {"kvm", ""};
  const char* env = std::getenv("KEEL_LINUX_TESTS");
  if (env && std::string(env) == "off") return {"", "KEEL_LINUX_TESTS=off"};
  return {"emu", ""};
}

TEST(SandboxLinux, DeviceWorkersAreConfinedAndAViolationThereEndsTheVmm) {
  LinuxEngine engine = linux_engine();
  if (engine.accel.empty()) GTEST_SKIP() << engine.why_not;
  const auto& dg = testing::default_guest();
  if (!dg) GTEST_SKIP() << "default guest unavailable: " << dg.why_missing;
  testing::Budget budget(250s);
  std::string disk = std::filesystem::temp_directory_path() /
                     ("keel-sandbox-disk-" + std::to_string(::getpid()) + ".ext4");
  std::filesystem::copy_file(dg.disk(), disk, std::filesystem::copy_options::overwrite_existing);
  {
    KeelProcess p({"run", "--accel", engine.accel, "--disk", disk, "--net", "user"});
    ASSERT_TRUE(p.wait_for_stdout("KEEL-GUEST-READY", budget.left())) << p.wait(10s).describe();
    expect_confined(p.pid(), {"keel-vcpu0", "keel-blk", "keel-net"});
    p.write_stdin("exit\n");
    ProcessResult r = p.wait(budget.at_most(60s));
    EXPECT_TRUE(r.exited && r.status == 0) << r.describe();
  }
  // The first device worker to start (when the guest's driver sets DRIVER_OK) makes the call.
  ProcessResult r = testing::run_keel({"run", "--accel", engine.accel, "--disk", disk,
                                       "--test-seccomp-violation", "device"},
                                      "", budget.left());
  std::filesystem::remove(disk);
  EXPECT_TRUE(r.exited && r.status == 159) << r.describe();
  EXPECT_TRUE(contains(r.out + r.err, "keel: seccomp: the keel-blk (device worker) thread made the "
                                      "forbidden system call personality"))
      << r.describe();
}

}  // namespace
}  // namespace keel
