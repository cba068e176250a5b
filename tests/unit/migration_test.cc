// Live migration between two `keel` processes on the emu engine (vm/migration.h): the counter
// guest (tests/guests/acpi_counter.asm) moves from a source to a `keel run --incoming` target while
// it counts, the count goes on there, and the source ends as migrated. A target that goes away
// leaves the source running; a target fed garbage refuses it by name.
#include <signal.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <netinet/in.h>
#include <sys/un.h>
#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <iomanip>
#include <map>
#include <sstream>
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

std::vector<std::string> source_args(const std::string& sock) {
  return {"run", "--accel", "emu", "--memory", "64M", "--sandbox", "off",
          "--test-guest", testing::test_guest("acpi_counter"), "--control", sock};
}

TEST(Migration, TheCounterMovesToTheTargetAndGoesOn) {
  testing::TempDir dir;
  std::string src_sock = (dir.path() / "src.sock").string();
  std::string uri = "unix:" + (dir.path() / "migrate.sock").string();
  testing::KeelProcess target({"run", "--incoming", uri, "--sandbox", "off"});
  testing::KeelProcess source(source_args(src_sock));
  ASSERT_TRUE(source.wait_for_stdout("count 3\n", 60s)) << source.wait(10s).describe();
  control::ControlClient client = control::ControlClient::connect(src_sock);
  EXPECT_EQ(client.execute("query-migrate")["status"], "none");
  client.execute("migrate", json{{"uri", uri}});
  // MIGRATION events mark its states.
  std::vector<std::string> states;
  for (auto deadline = std::chrono::steady_clock::now() + 60s;
       std::chrono::steady_clock::now() < deadline && (states.empty() || states.back() == "active");) {
    if (auto event = client.next_event(1s); event && (*event)["event"] == "MIGRATION")
      states.push_back((*event)["data"]["status"]);
  }
  EXPECT_EQ(states, (std::vector<std::string>{"active", "completed"}));

  // The source ends once the target has the VM (keel logs on stdout).
  testing::ProcessResult src = source.wait(120s);
  EXPECT_TRUE(src.exited && src.status == 0) << src.describe();
  EXPECT_NE((src.out + src.err).find("migrated to the target"), std::string::npos) << src.describe();
  EXPECT_NE((src.out + src.err).find("downtime"), std::string::npos) << src.describe();
  int moved_at = testing::last_count(src.out);
  ASSERT_GE(moved_at, 3) << src.describe();

  EXPECT_TRUE(target.wait_for_stdout("count " + std::to_string(moved_at + 3) + "\n", 60s));
  target.send_signal(SIGTERM);
  testing::ProcessResult dst = target.wait(30s);
  EXPECT_EQ(dst.out.find("count " + std::to_string(moved_at) + "\n"), std::string::npos) << dst.describe();
  EXPECT_GT(testing::last_count(dst.out), moved_at + 2) << dst.describe();
}

TEST(Migration, ASourceWhoseTargetGoesAwayKeepsRunning) {
  testing::TempDir dir;
  std::string src_sock = (dir.path() / "src.sock").string();
  fs::path target_path = dir.path() / "gone.sock";
  // A "target" that accepts the connection and hangs up at once.
  int listener = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::strcpy(addr.sun_path, target_path.c_str());
  ASSERT_EQ(::bind(listener, reinterpret_cast<sockaddr*>(&addr), sizeof addr), 0);
  ASSERT_EQ(::listen(listener, 1), 0);

  testing::KeelProcess source(source_args(src_sock));
  ASSERT_TRUE(source.wait_for_stdout("count 2\n", 60s)) << source.wait(10s).describe();
  control::ControlClient client = control::ControlClient::connect(src_sock);
  client.execute("migrate", json{{"uri", "unix:" + target_path.string()}});
  ::close(::accept(listener, nullptr, nullptr));
  ::close(listener);
  // query-migrate reports the failure once the migration thread has seen the hang-up.
  json status;
  for (auto deadline = std::chrono::steady_clock::now() + 30s; std::chrono::steady_clock::now() < deadline;) {
    status = client.execute("query-migrate");
    if (status["status"] != "active") break;
    client.next_event(100ms);  // paces the polling on the control socket, not a sleep
  }
  EXPECT_EQ(status["status"], "failed") << status.dump();
  EXPECT_TRUE(status.contains("error-desc")) << status.dump();
  EXPECT_EQ(client.execute("query-status")["status"], "running");
  client.execute("quit");
  testing::ProcessResult src = source.wait(30s);
  EXPECT_NE((src.out + src.err).find("migration failed, the VM goes on here"), std::string::npos) << src.describe();
}

TEST(Migration, ATargetRefusesGarbageByName) {
  testing::TempDir dir;
  fs::path path = dir.path() / "in.sock";
  testing::KeelProcess target({"run", "--incoming", "unix:" + path.string(), "--sandbox", "off"});
  int fd = -1;
  for (auto deadline = std::chrono::steady_clock::now() + 20s; std::chrono::steady_clock::now() < deadline;) {
    fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    std::strcpy(addr.sun_path, path.c_str());
    if (::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0) break;
    ::close(fd);
    fd = -1;
    target.wait_for_stdout("never", 50ms);  // lets the target start listening
  }
  ASSERT_GE(fd, 0);
  std::string garbage = "this is not a keel migration stream";
  ASSERT_EQ(::send(fd, garbage.data(), garbage.size(), MSG_NOSIGNAL), static_cast<ssize_t>(garbage.size()));
  ::close(fd);
  testing::ProcessResult r = target.wait(30s);
  EXPECT_NE(r.status, 0) << r.describe();
  EXPECT_NE(r.err.find("migration stream from unix:"), std::string::npos) << r.describe();
  EXPECT_NE(r.err.find("bad magic"), std::string::npos) << r.describe();
}

// A loopback TCP port nobody listens on now (the kernel's choice for a bound, closed socket).
uint16_t free_tcp_port() {
  int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof a;
  if (::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0 ||
      ::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len) != 0)
    ADD_FAILURE() << "no loopback port: " << std::strerror(errno);
  ::close(fd);
  return ntohs(a.sin_port);
}

// The "round R sum S" lines of tests/guests/memory_pattern.asm in `out`, by round.
std::map<uint64_t, uint64_t> pattern_sums(const std::string& out) {
  std::map<uint64_t, uint64_t> sums;
  std::istringstream lines(out);
  for (std::string line; std::getline(lines, line);) {
    if (line.rfind("round ", 0) != 0 || line.size() != 6 + 16 + 5 + 16 || line.substr(22, 5) != " sum ")
      continue;
    sums[std::stoull(line.substr(6, 16), nullptr, 16)] = std::stoull(line.substr(27, 16), nullptr, 16);
  }
  return sums;
}

// What memory_pattern.asm's sum is after round `round`: S(r) = K * S(r-1) + N * r + A (mod 2^64).
uint64_t pattern_sum(uint64_t round) {
  const uint64_t k = 0x9E3779B97F4A7C15ull, n = (256ull << 20) / 8, base = 0x1000000;
  const uint64_t a = n * base + 4 * n * (n - 1);  // the sum of the qwords' addresses
  uint64_t s = 0;
  for (uint64_t r = 0; r <= round; ++r) s = k * s + n * r + a;
  return s;
}

// The test: the guest rewrites 256 MiB without pause while it moves over TCP; every round
// the target prints has the right checksum (a page lost or stale in the move would change every
// later one), the source ends as migrated and the downtime is reported.
TEST(Migration, AGuestRewriting256MiBMovesOverTcpWithItsPatternIntact) {
  testing::TempDir dir;
  std::string src_sock = (dir.path() / "src.sock").string();
  std::string uri = "tcp:127.0.0.1:" + std::to_string(free_tcp_port());
  testing::KeelProcess target({"run", "--incoming", uri, "--sandbox", "off"});
  testing::KeelProcess source({"run", "--accel", "emu", "--memory", "272M", "--sandbox", "off",
                               "--test-guest", testing::test_guest("memory_pattern"), "--control",
                               src_sock});
  ASSERT_TRUE(source.wait_for_stdout("round 0000000000000001 sum", 120s)) << source.wait(10s).describe();
  control::ControlClient client = control::ControlClient::connect(src_sock);
  client.execute("migrate", json{{"uri", uri}});
  std::vector<std::string> states;
  json progress;
  for (auto deadline = std::chrono::steady_clock::now() + 120s;
       std::chrono::steady_clock::now() < deadline && (states.empty() || states.back() == "active");) {
    if (auto event = client.next_event(1s); event && (*event)["event"] == "MIGRATION")
      states.push_back((*event)["data"]["status"]);
    if (states.size() == 1) progress = client.execute("query-migrate");  // while it is active
  }
  EXPECT_EQ(states, (std::vector<std::string>{"active", "completed"}));
  EXPECT_EQ(progress["ram"]["total"], 272ull << 20) << progress.dump();

  // The source ends once the target has the VM, the downtime in its log.
  testing::ProcessResult src = source.wait(120s);
  EXPECT_TRUE(src.exited && src.status == 0) << src.describe();
  const std::string log = src.out + src.err;
  size_t at = log.find("migrated to the target in ");
  ASSERT_NE(at, std::string::npos) << src.describe();
  at = log.find("(downtime ", at);
  ASSERT_NE(at, std::string::npos) << src.describe();
  EXPECT_GT(std::stoul(log.substr(at + 10)), 0u) << src.describe();
  auto before = pattern_sums(src.out);
  ASSERT_FALSE(before.empty()) << src.describe();
  const uint64_t moved_after = before.rbegin()->first;
  for (auto [round, sum] : before) EXPECT_EQ(sum, pattern_sum(round)) << "source, round " << round;

  // Two more rounds on the target, each checked: once round +3 starts its line, round +2's is
  // complete (the guest prints "round N sum" before it has summed).
  std::ostringstream want;
  want << "round " << std::hex << std::setw(16) << std::setfill('0') << moved_after + 3 << " sum";
  EXPECT_TRUE(target.wait_for_stdout(want.str(), 120s)) << want.str();
  target.send_signal(SIGTERM);
  testing::ProcessResult dst = target.wait(30s);
  auto after = pattern_sums(dst.out);
  ASSERT_GE(after.size(), 2u) << dst.describe();
  EXPECT_GT(after.begin()->first, moved_after) << dst.describe();
  for (auto [round, sum] : after) EXPECT_EQ(sum, pattern_sum(round)) << "target, round " << round;
}

TEST(Migration, BadUrisAreRefused) {
  testing::ProcessResult r = testing::run_keel({"run", "--incoming", "ftp:x", "--sandbox", "off"});
  EXPECT_NE(r.status, 0);
  EXPECT_NE(r.err.find("is not unix:PATH or tcp:HOST:PORT"), std::string::npos) << r.describe();
}

}  // namespace
}  // namespace keel
