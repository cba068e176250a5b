// keel run --cpu: the CPU model a guest is shown. Under `baseline` an emu guest's snapshot records
// only the first x86-64 CPUs' features, and a restore on kvm gets past the CPU feature check.
// Under `host` the same restore is refused naming the features kvm lacks here.
#include <array>
#include <cstring>
#include <filesystem>
#include <string>

#include <gtest/gtest.h>

#include "control/control_client.h"
#include "counter_guest.h"
#include "guest_harness.h"
#include "keel_process.h"
#include "qemu_img.h"
#include "vm/snapshot.h"

namespace keel {
namespace {

namespace fs = std::filesystem;
using namespace std::chrono_literals;
using nlohmann::json;

// Saves the counter guest on emu under `model` into `dir`.
void save_counter(const std::string& model, const fs::path& dir, const fs::path& sock) {
  testing::KeelProcess vmm({"run", "--accel", "emu", "--cpu", model, "--memory", "32M", "--sandbox", "off",
                            "--test-guest", testing::test_guest("acpi_counter"), "--control", sock.string()});
  ASSERT_TRUE(vmm.wait_for_stdout("count 1\n", 60s)) << vmm.wait(10s).describe();
  control::ControlClient client = control::ControlClient::connect(sock.string());
  client.execute("snapshot-save", json{{"path", dir.string()}, {"resume", false}}, 60s);
  client.execute("quit");
  vmm.wait(30s);
}

uint32_t leaf_register(const fs::path& dir, const char* leaf, int reg) {
  state::Document doc = snapshot::read_state(dir);
  std::array<uint8_t, 16> bytes{};
  doc.section("cpuid").bytes_exact(leaf, bytes);
  uint32_t r[4];
  std::memcpy(r, bytes.data(), sizeof r);
  return r[reg];
}

TEST(CpuModelRun, BaselineHidesWhatOnlySomeEnginesHaveAndPassesTheFeatureCheck) {
  testing::TempDir dir;
  save_counter("baseline", dir.path() / "base", dir.path() / "a.sock");
  save_counter("host", dir.path() / "host", dir.path() / "b.sock");
  constexpr uint32_t kPopcnt = 1u << 23;
  EXPECT_EQ(leaf_register(dir.path() / "base", "leaf1", 2) & kPopcnt, 0u);
  EXPECT_NE(leaf_register(dir.path() / "host", "leaf1", 2) & kPopcnt, 0u);
  EXPECT_EQ(leaf_register(dir.path() / "base", "leaf7", 2), 0u);  // no rdpid

  // The baseline snapshot restores on emu as ever.
  testing::KeelProcess again({"run", "--restore", (dir.path() / "base").string(), "--sandbox", "off"});
  EXPECT_TRUE(again.wait_for_stdout("count ", 60s));
  again.send_signal(SIGTERM);
  again.wait(30s);

  if (auto why = guest_test::engine_unavailable(Accel::kKvm)) GTEST_SKIP() << *why;
  // With baseline the feature check passes (cross_engine_test.cc runs the restore itself).
  testing::KeelProcess on_kvm({"run", "--restore", (dir.path() / "base").string(), "--accel", "kvm", "--sandbox", "off"});
  EXPECT_TRUE(on_kvm.wait_for_stdout("count ", 60s));
  on_kvm.send_signal(SIGTERM);
  testing::ProcessResult r = on_kvm.wait(30s);
  EXPECT_EQ(r.err.find("lacks"), std::string::npos) << r.describe();
  testing::KeelProcess host_on_kvm({"run", "--restore", (dir.path() / "host").string(), "--accel", "kvm", "--sandbox", "off"});
  testing::ProcessResult h = host_on_kvm.wait(60s);
  EXPECT_NE(h.err.find("which kvm here lacks"), std::string::npos) << h.describe();
}

TEST(CpuModelRun, AnUnknownModelIsRefusedByName) {
  testing::KeelProcess bad({"run", "--accel", "emu", "--cpu", "pentium", "--sandbox", "off", "--test-guest",
                            testing::test_guest("acpi_counter")});
  testing::ProcessResult r = bad.wait(30s);
  EXPECT_NE(r.err.find("--cpu: 'pentium' is not a CPU model (host, baseline)"), std::string::npos) << r.describe();
}

}  // namespace
}  // namespace keel
