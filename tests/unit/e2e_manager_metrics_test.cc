// Metrics end to end (manager/metrics.h, control/query_stats.cc): GET /metrics on the unix socket
// parses as Prometheus text (promtool check metrics, from Debian's prometheus package) and names
// its series by Prometheus conventions; `keel stats` shows one VM; the counters move when the
// guest works: console bytes and (kvm) exits by reason with tests/guests/serial_irq_echo.asm,
// disk and network with the
// default Linux guest on emu (it mounts its data disk and asks for a DHCP lease as it boots, then
// reads the disk again and pings the gateway when told to).
#include <cstdio>
#include <cstdlib>
#include <optional>
#include <regex>

#include "default_guest.h"
#include "e2e_manager_helpers.h"
#include "guest_harness.h"

namespace keel::e2e {
namespace {

// promtool's verdict on `text`: "" when it parses and lints clean, else what promtool said.
std::string promtool_problems(const std::string& text, const std::string& dir) {
  std::string in = dir + "/metrics.txt", out = dir + "/promtool.out";
  std::ofstream(in) << text;
  std::string cmd = "promtool check metrics <'" + in + "' >'" + out + "' 2>&1";
  int status = std::system(cmd.c_str());
  return status == 0 ? "" : "promtool failed (" + std::to_string(status) + "): " + read_whole(out);
}

// The value of the sample `series` (name and labels exactly as exposed), or nullopt.
std::optional<double> sample(const std::string& text, const std::string& series) {
  size_t at = 0;
  while ((at = text.find(series + " ", at)) != std::string::npos) {
    if (at == 0 || text[at - 1] == '\n') return std::stod(text.substr(at + series.size() + 1));
    at += series.size();
  }
  return std::nullopt;
}

class ManagerMetricsTest : public DaemonFixture {
 protected:
  std::string metrics() {
    manager::HttpResponse r = api().request("GET", "/metrics");
    EXPECT_EQ(r.status, 200);
    EXPECT_EQ(r.headers["content-type"].rfind("text/plain; version=0.0.4", 0), 0u)
        << r.headers["content-type"];
    return r.body;
  }
  json stats(const std::string& name) { return api().call("GET", "/v1/vms/" + name + "/stats"); }
};

TEST_F(ManagerMetricsTest, MetricsParseAsPrometheusTextAndCountTheConsole) {
  start_daemon();
  api().call("POST", "/v1/vms", json{{"name", "echo"}, {"vcpus", 1}, {"memory_mib", 16},
                                     {"accel", "emu"},
                                     {"test_guest", KEEL_TEST_GUEST_DIR "/serial_irq_echo.bin"}});
  api().call("POST", "/v1/vms", json{{"name", "idle.2"}, {"memory_mib", 16},
                                     {"test_guest", KEEL_TEST_GUEST_DIR "/serial_irq_echo.bin"}});
  // Shut off: state and definition only.
  std::string text = metrics();
  EXPECT_EQ(promtool_problems(text, dir), "") << text;
  EXPECT_EQ(sample(text, R"(keel_vm_state{vm="echo",state="shut off"})"), 1) << text;
  EXPECT_EQ(sample(text, R"(keel_vm_state{vm="echo",state="running"})"), 0) << text;
  EXPECT_EQ(sample(text, R"(keel_vm_memory_bytes{vm="echo"})"), 16 << 20) << text;
  EXPECT_EQ(sample(text, R"(keel_vm_vcpus{vm="idle.2"})"), 1) << text;
  EXPECT_FALSE(sample(text, R"(keel_vm_vcpu_seconds_total{vm="echo",vcpu="0"})")) << text;

  ASSERT_EQ(keel({"start", "echo"}).exit_code, 0);
  read_console_until("echo", [](const std::string& s) { return s.find("READY") != s.npos; });
  EXPECT_EQ(api().request("POST", "/v1/vms/echo/console", "abc", "text/plain").status, 200);
  read_console_until("echo", [](const std::string& s) { return s.find("abc") != s.npos; });

  text = metrics();
  EXPECT_EQ(promtool_problems(text, dir), "") << text;
  EXPECT_EQ(sample(text, R"(keel_vm_state{vm="echo",state="running"})"), 1) << text;
  EXPECT_GT(sample(text, R"(keel_vm_vcpu_seconds_total{vm="echo",vcpu="0"})").value_or(0), 0)
      << text;
  EXPECT_GT(sample(text, R"(keel_vm_uptime_seconds{vm="echo",engine="emu"})").value_or(0), 0)
      << text;
  // "READY\r\n" and the echo of "abc".
  EXPECT_GE(sample(text, R"(keel_vm_console_output_bytes_total{vm="echo"})").value_or(0), 10)
      << text;
  EXPECT_EQ(sample(text, R"(keel_vm_console_input_bytes_total{vm="echo"})"), 3) << text;
  // The API counts itself: the console POST above, and a histogram of latencies.
  EXPECT_EQ(sample(text, R"(keel_api_requests_total{method="POST",route="/v1/vms/{}/console",code="200"})"),
            1) << text;
  EXPECT_EQ(sample(text, R"(keel_api_request_duration_seconds_count{method="POST",route="/v1/vms/{}/console"})"),
            1) << text;
  EXPECT_NE(text.find("# TYPE keel_api_request_duration_seconds histogram"), std::string::npos);
  // Methods are the client's words: those HTTP does not define are one label, not one each.
  for (const char* method : {"BREW", "FOO1", "FOO2"}) api().request(method, "/v1/vms/nosuch");
  text = metrics();
  double other = 0;
  std::regex other_line(R"x(keel_api_requests_total\{method="other",[^}]*\} ([0-9]+))x");
  for (std::sregex_iterator it(text.begin(), text.end(), other_line), end; it != end; ++it)
    other += std::stod((*it)[1]);
  EXPECT_EQ(other, 3) << text;
  EXPECT_EQ(text.find("FOO1"), std::string::npos) << text;

  // keel stats: the same figures for one VM.
  json s = stats("echo");
  EXPECT_EQ(s["state"], "running") << s.dump();
  EXPECT_EQ(s["engine"], "emu") << s.dump();
  ASSERT_EQ(s["cpu"].size(), 1u) << s.dump();
  EXPECT_GT(s["cpu"][0]["cpu_seconds"].get<double>(), 0) << s.dump();
  EXPECT_EQ(s["console"]["input_bytes"], 3) << s.dump();
  CommandResult r = keel({"stats", "echo"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.out.find("Domain: 'echo'\n  state=running\n"), std::string::npos) << r.out;
  EXPECT_TRUE(std::regex_search(r.out, std::regex("vcpu\\.0\\.cpu_seconds=[0-9.e-]+\n"))) << r.out;
  EXPECT_NE(r.out.find("console.input_bytes=3\n"), std::string::npos) << r.out;
  r = keel({"stats", "echo", "--json"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(json::parse(r.out)["name"], "echo") << r.out;
  r = keel({"stats", "nosuch"});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.err.find("nosuch"), std::string::npos) << r.err;
}

// On kvm the vCPU counts its exits by reason: the echo guest's port I/O (each byte it prints is
// an OUT to the UART) shows as `io` exits, and they grow with what it echoes.
TEST_F(ManagerMetricsTest, KvmExitsAreCountedByReason) {
  if (auto why = guest_test::engine_unavailable(Accel::kKvm)) GTEST_SKIP() << *why;
  start_daemon();
  api().call("POST", "/v1/vms", json{{"name", "echo"}, {"memory_mib", 16}, {"accel", "kvm"},
                                     {"test_guest", KEEL_TEST_GUEST_DIR "/serial_irq_echo.bin"}});
  ASSERT_EQ(keel({"start", "echo"}).exit_code, 0);
  read_console_until("echo", [](const std::string& s) { return s.find("READY") != s.npos; });
  json before = stats("echo");
  EXPECT_EQ(before["engine"], "kvm") << before.dump();
  double io = before["cpu"][0]["exits"].value("io", 0.0);
  EXPECT_GE(io, 5) << before.dump();  // "READY\r\n" at least, and the UART's setup
  EXPECT_EQ(api().request("POST", "/v1/vms/echo/console", "0123456789", "text/plain").status, 200);
  read_console_until("echo", [](const std::string& s) { return s.find("0123456789") != s.npos; });
  json after = stats("echo");
  EXPECT_GE(after["cpu"][0]["exits"].value("io", 0.0), io + 10) << after.dump();
  std::string text = metrics();
  EXPECT_EQ(promtool_problems(text, dir), "") << text;
  EXPECT_GE(sample(text, R"(keel_vm_exits_total{vm="echo",vcpu="0",reason="io"})").value_or(0),
            io + 10) << text;
}

std::optional<std::string> linux_unavailable() {
  if (testing::linux_tests_off()) return "KEEL_LINUX_TESTS=off";
  const auto& guest = testing::default_guest();
  if (!guest) return "default guest unavailable: " + guest.why_missing;
  return std::nullopt;
}

double sum(const json& list, const char* key) {
  double total = 0;
  for (const json& x : list) total += x.value(key, 0.0);
  return total;
}

TEST_F(ManagerMetricsTest, DiskAndNetworkCountersMoveWhenTheLinuxGuestUsesThem) {
  if (auto why = linux_unavailable()) GTEST_SKIP() << *why;
  const auto& guest = testing::default_guest();
  start_daemon();
  std::string disk = dir + "/data.ext4";
  std::filesystem::copy_file(guest.disk(), disk);
  api().call("POST", "/v1/vms", json{{"name", "lin"}, {"vcpus", 1}, {"memory_mib", 256},
                                     {"accel", "emu"}, {"kernel", guest.kernel().string()},
                                     {"initrd", guest.initrd().string()},
                                     {"disks", json::array({json{{"path", disk}}})},
                                     {"nets", json::array({json{{"type", "user"}}})}});
  ASSERT_EQ(keel({"start", "lin"}).exit_code, 0);
  read_console_until("lin", [](const std::string& s) {
    return s.find("KEEL-GUEST-READY") != s.npos;
  }, 400s);
  // Booting mounted the disk and asked for a lease.
  json booted = stats("lin");
  ASSERT_EQ(booted["disks"].size(), 1u) << booted.dump();
  ASSERT_EQ(booted["nets"].size(), 1u) << booted.dump();
  EXPECT_GT(booted["disks"][0]["read_bytes"].get<double>(), 0) << booted.dump();
  EXPECT_GT(booted["disks"][0]["read_requests"].get<double>(), 0) << booted.dump();
  EXPECT_GT(booted["nets"][0]["tx_packets"].get<double>(), 0) << booted.dump();
  EXPECT_GT(booted["nets"][0]["rx_packets"].get<double>(), 0) << booted.dump();

  // The guest reads 1 MiB past its page cache and pings the gateway.
  api().request("POST", "/v1/vms/lin/console",
                "sync; echo 3 >/proc/sys/vm/drop_caches; dd if=/dev/vda of=/dev/null bs=64k "
                "count=16 2>/dev/null; ping -c 2 10.0.2.2 >/dev/null; echo worked-$((6*7))\n",
                "text/plain");
  read_console_until("lin", [](const std::string& s) { return s.find("worked-42") != s.npos; },
                     300s);
  json after = stats("lin");
  EXPECT_GE(sum(after["disks"], "read_bytes") - sum(booted["disks"], "read_bytes"), 1 << 20)
      << after.dump();
  EXPECT_GT(sum(after["nets"], "tx_packets"), sum(booted["nets"], "tx_packets")) << after.dump();
  EXPECT_GT(sum(after["nets"], "tx_bytes"), sum(booted["nets"], "tx_bytes")) << after.dump();
  EXPECT_GT(sum(after["nets"], "rx_packets"), sum(booted["nets"], "rx_packets")) << after.dump();

  std::string text = metrics();
  EXPECT_EQ(promtool_problems(text, dir), "") << text;
  EXPECT_EQ(sample(text, R"(keel_vm_disk_read_bytes_total{vm="lin",disk="vda"})"),
            after["disks"][0]["read_bytes"].get<double>()) << text;
  EXPECT_GE(sample(text, R"(keel_vm_network_transmit_packets_total{vm="lin",interface="net0"})")
                .value_or(0),
            after["nets"][0]["tx_packets"].get<double>()) << text;
  api().call("POST", "/v1/vms/lin/destroy");
}

}  // namespace
}  // namespace keel::e2e
