// keel run with virtio devices: option errors, disk refusals, and Linux guests using the devices.
//
// The Linux tests boot the default guest: on kvm where `keel probe` says KVM can run a stock
// kernel, otherwise on emu (about 20 s per boot). KEEL_LINUX_TESTS=off skips them.
#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <optional>
#include <regex>
#include <thread>

#include "backends/block/raw_image.h"
#include "default_guest.h"
#include "engine/kvm/kvm_probe.h"
#include "keel_process.h"

namespace keel {
namespace {

using namespace std::chrono_literals;
using testing::KeelProcess;
using testing::ProcessResult;
using testing::run_keel;

using testing::contains;

std::string guest(const std::string& name) { return testing::test_guest(name); }

std::optional<std::string> kvm_unavailable() {
  static const std::optional<std::string> why = []() -> std::optional<std::string> {
    KvmProbeResult probe = probe_kvm();
    if (probe.can_run_guests()) return std::nullopt;
    return probe.reason();
  }();
  return why;
}

class TempFile {
 public:
  explicit TempFile(const std::string& tag, uint64_t bytes = 1 << 20) {
    path_ = std::filesystem::temp_directory_path() /
            ("keel-" + tag + "-" + std::to_string(getpid()) + ".img");
    std::ofstream(path_, std::ios::binary).close();
    std::filesystem::resize_file(path_, bytes);
  }
  ~TempFile() { std::filesystem::remove(path_); }
  std::string path() const { return path_.string(); }

 private:
  std::filesystem::path path_;
};

TEST(VirtioCli, MissingDiskExitsOneNamingIt) {
  if (auto why = kvm_unavailable()) GTEST_SKIP() << "KVM cannot run test guests: " << *why;
  ProcessResult r = run_keel({"run", "--accel", "kvm", "--test-guest", guest("serial_hello"), "--disk",
                              "/nonexistent/keel-vda.img"});
  EXPECT_EQ(r.status, 1) << r.describe();
  EXPECT_TRUE(contains(r.err, "/nonexistent/keel-vda.img")) << r.err;
}

TEST(VirtioCli, DiskLockedByAnotherKeelIsRefused) {
  if (auto why = kvm_unavailable()) GTEST_SKIP() << "KVM cannot run test guests: " << *why;
  TempFile disk("locked");
  auto held = RawImage::open(disk.path(), false);  // stands in for the other keel
  ProcessResult r =
      run_keel({"run", "--accel", "kvm", "--test-guest", guest("serial_hello"), "--disk", disk.path()});
  EXPECT_EQ(r.status, 1) << r.describe();
  EXPECT_TRUE(contains(r.err, disk.path())) << r.err;
  EXPECT_TRUE(contains(r.err, "locked")) << r.err;
}

TEST(VirtioCli, BadDeviceOptionsAreUsageErrors) {
  EXPECT_EQ(run_keel({"run", "--net", "bridge"}).status, 2);
  EXPECT_EQ(run_keel({"run", "--net", "user,hostfwd=tcp:notaport-:22"}).status, 2);
  EXPECT_EQ(run_keel({"run", "--net", "tap:"}).status, 2);
  EXPECT_EQ(run_keel({"run", "--disk", "/x.img,writeback"}).status, 2);
  EXPECT_EQ(run_keel({"run", "--console", "vga"}).status, 2);
}

TEST(VirtioCli, TestGuestRunsWithEveryVirtioDevice) {
  if (auto why = kvm_unavailable()) GTEST_SKIP() << "KVM cannot run test guests: " << *why;
  TempFile a("vda"), b("vdb");
  uint16_t port = testing::free_loopback_port();
  ProcessResult r = run_keel({"run", "--accel", "kvm", "--test-guest", guest("serial_hello"), "--disk",
                              a.path(), "--disk", b.path() + ",readonly", "--net",
                              "user,hostfwd=tcp:127.0.0.1:" + std::to_string(port) + "-:22",
                              "--net", "--console", "virtio", "--rng"});
  EXPECT_EQ(r.status, 0) << r.describe();
}

// --- Linux guests

struct LinuxEngine {
  std::string accel;    // empty: skip
  std::string why_not;  // when skipping
};

const LinuxEngine& linux_engine() {
  static const LinuxEngine engine = [] {
    KvmProbeResult probe = probe_kvm();
    if (probe.can_run_stock_kernel()) return LinuxEngine{"kvm", ""};
    const char* env = std::getenv("KEEL_LINUX_TESTS");
    if (env && std::string(env) == "off") return LinuxEngine{"", "KEEL_LINUX_TESTS=off"};
    return LinuxEngine{"emu", ""};
  }();
  return engine;
}

#define SKIP_WITHOUT_LINUX()                                                    \
  const auto& engine = linux_engine();                                          \
  if (engine.accel.empty()) GTEST_SKIP() << engine.why_not;                     \
  const auto& dg = testing::default_guest();                                    \
  if (!dg) GTEST_SKIP() << "default guest unavailable: " << dg.why_missing

// One boot's share of the test's budget: a test boots at most twice, and both must end (and
// report) before CTest's timeout.
constexpr auto kBootBudget = 250s;
static_assert(2 * kBootBudget + 30s < testing::kCtestTimeout);

// Boots the default guest with `extra` options, waits for the shell, types `commands` and then
// `exit` (which powers off), and returns everything keel printed. Within kBootBudget: a guest
// that hangs is killed and the test fails with keel's output.
ProcessResult boot_and_run(const std::string& accel, std::vector<std::string> extra,
                           const std::string& commands, const std::string& ready = "KEEL-GUEST-READY") {
  testing::Budget budget(kBootBudget);
  std::vector<std::string> args = {"run", "--accel", accel, "--memory", "512M"};
  args.insert(args.end(), extra.begin(), extra.end());
  KeelProcess p(args);
  if (!p.wait_for_stdout(ready, budget.left())) {
    p.send_signal(SIGTERM);
    ProcessResult r = p.wait(15s);
    ADD_FAILURE() << "the guest never printed " << ready << ": " << r.describe();
    return r;
  }
  p.write_stdin(commands + "\nexit\n");
  ProcessResult r = p.wait(budget.left());
  if (r.timed_out) ADD_FAILURE() << "the guest did not power off after its commands: " << r.describe();
  return r;
}

TEST(VirtioLinux, DiskChecksumSurvivesTwoBoots) {
  SKIP_WITHOUT_LINUX();
  auto disk = std::filesystem::temp_directory_path() / ("keel-linux-disk-" + std::to_string(getpid()) + ".ext4");
  std::filesystem::copy_file(dg.disk(), disk, std::filesystem::copy_options::overwrite_existing);
  std::regex sum_re("([0-9a-f]{64})  /mnt/data/blob");
  std::smatch m;
  ProcessResult first = boot_and_run(
      engine.accel, {"--disk", disk.string()},
      "dd if=/dev/urandom of=/mnt/data/blob bs=1024 count=512 2>/dev/null; sync; "
      "sha256sum /mnt/data/blob; umount /mnt/data");  // clean, so a read-only mount works
  ASSERT_TRUE(std::regex_search(first.out, m, sum_re)) << first.describe();
  std::string sum = m[1];
  ProcessResult second =
      boot_and_run(engine.accel, {"--disk", disk.string() + ",readonly"}, "sha256sum /mnt/data/blob");
  std::filesystem::remove(disk);
  ASSERT_TRUE(std::regex_search(second.out, m, sum_re)) << second.describe();
  EXPECT_EQ(m[1], sum);
  EXPECT_EQ(second.status, 0) << second.describe();
}

// The guest's /init configures eth0 by DHCP; this prints what it got so the tests can check the
// lease slirp served (10.0.2.15, gateway 10.0.2.2, DNS 10.0.2.3).
constexpr const char* kShowLease =
    "ip -4 addr show eth0 | sed -n 's/.*inet \\([0-9.]*\\).*/LEASE-ADDR=\\1/p'; "
    "ip route | sed -n 's/^default via \\([0-9.]*\\).*/LEASE-GW=\\1/p'; "
    "sed -n 's/^nameserver /LEASE-DNS=/p' /etc/resolv.conf; ";

TEST(VirtioLinux, GuestFetchesFromAHostServerThroughUserNetworking) {
  SKIP_WITHOUT_LINUX();
  int server = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in sa{};
  sa.sin_family = AF_INET;
  sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ASSERT_EQ(bind(server, reinterpret_cast<sockaddr*>(&sa), sizeof sa), 0);
  socklen_t len = sizeof sa;
  getsockname(server, reinterpret_cast<sockaddr*>(&sa), &len);
  listen(server, 1);
  std::thread t([server] {
    int c = accept(server, nullptr, nullptr);
    if (c < 0) return;
    char buf[1024];
    (void)!read(c, buf, sizeof buf);
    const char reply[] = "HTTP/1.0 200 OK\r\nContent-Length: 12\r\n\r\nkeel-net-ok\n";
    (void)!write(c, reply, sizeof reply - 1);
    close(c);
  });
  std::string url = "http://10.0.2.2:" + std::to_string(ntohs(sa.sin_port)) + "/";
  // The server listens on the host's loopback, which the guest reaches only when allowed.
  ProcessResult r = boot_and_run(engine.accel, {"--net", "user,host-loopback=on"},
                                 std::string(kShowLease) + "wget -q -O - " + url + " | tr a-z A-Z");
  shutdown(server, SHUT_RDWR);
  close(server);
  t.join();
  EXPECT_TRUE(contains(r.out, "LEASE-ADDR=10.0.2.15")) << r.describe();
  EXPECT_TRUE(contains(r.out, "LEASE-GW=10.0.2.2")) << r.describe();
  EXPECT_TRUE(contains(r.out, "LEASE-DNS=10.0.2.3")) << r.describe();
  EXPECT_TRUE(contains(r.out, "KEEL-NET-OK")) << r.describe();  // upper-cased by the guest
}

TEST(VirtioLinux, HostReachesAGuestServerThroughHostfwd) {
  SKIP_WITHOUT_LINUX();
  uint16_t port = testing::free_loopback_port();
  KeelProcess p({"run", "--accel", engine.accel, "--net",
                 "user,hostfwd=tcp:127.0.0.1:" + std::to_string(port) + "-:8080"});
  testing::Budget budget;
  ASSERT_TRUE(p.wait_for_stdout("KEEL-GUEST-READY", budget.left())) << p.wait(15s).describe();
  // The host retries its connection until nc listens, so the guest needs no pause here.
  p.write_stdin("echo keel-hostfwd-ok | nc -l -p 8080 & echo SERVER-$((1+1))-UP\n");
  ASSERT_TRUE(p.wait_for_stdout("SERVER-2-UP", budget.at_most(300s))) << p.wait(15s).describe();
  std::string got;
  for (int attempt = 0; attempt < 30 && got.empty(); ++attempt) {
    int c = socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in sa{};
    sa.sin_family = AF_INET;
    sa.sin_port = htons(port);
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (connect(c, reinterpret_cast<sockaddr*>(&sa), sizeof sa) == 0) {
      char buf[64] = {};
      timeval tv{10, 0};
      setsockopt(c, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
      ssize_t n = read(c, buf, sizeof buf - 1);
      if (n > 0) got.assign(buf, n);
    }
    close(c);
    if (got.empty()) std::this_thread::sleep_for(1s);  // retry pacing, not synchronisation
  }
  p.write_stdin("exit\n");
  ProcessResult r = p.wait(budget.left());
  EXPECT_EQ(got, "keel-hostfwd-ok\n") << r.describe();
}

TEST(VirtioLinux, Hvc0ConsoleAndHwrng) {
  SKIP_WITHOUT_LINUX();
  ProcessResult r = boot_and_run(
      engine.accel, {"--console", "virtio", "--rng"},
      "cat /sys/class/misc/hw_random/rng_current; head -c 16 /dev/hwrng | od -An -tx1 | wc -w | "
      "sed 's/^/HWRNG-BYTES=/'");
  EXPECT_TRUE(contains(r.out, "virtio_rng")) << r.describe();
  EXPECT_TRUE(contains(r.out, "HWRNG-BYTES=16")) << r.describe();
}

}  // namespace
}  // namespace keel
