// Engine conformance: the same purpose-built guests (tests/guests/*.asm) on every engine.
// Add an engine to the list at the bottom; a behaviour an engine lacks on this host skips with
// the reason (for kvm: the probe's finding).
#include <gtest/gtest.h>

#include <algorithm>

#include "engine/engine_factory.h"
#include "guest_harness.h"

namespace keel::guest_test {
namespace {

using std::chrono::milliseconds;

class GuestConformance : public ::testing::TestWithParam<Accel> {
 protected:
  void SetUp() override {
    if (auto why = engine_unavailable(GetParam())) GTEST_SKIP() << *why;
  }
};

// Skips the test (not just a helper) when the engine lacks the behaviour the probe check tests.
#define REQUIRE_BEHAVIOUR(check) \
  if (auto why = behaviour_unavailable(GetParam(), check)) GTEST_SKIP() << *why

// Skips when the engine runs fewer vCPUs than the test needs (emu: one for now).
std::optional<std::string> vcpus_unavailable(Accel accel, uint32_t vcpus) {
  try {
    GuestMemory memory(1 << 20);
    IoBus pio("pio"), mmio("mmio");
    create_engine(accel, {memory, pio, mmio}, {.vcpus = vcpus});
  } catch (const UsageError& e) {
    return e.what();
  }
  return std::nullopt;
}
#define REQUIRE_VCPUS(n) \
  if (auto why = vcpus_unavailable(GetParam(), n)) GTEST_SKIP() << *why

IoAccess w(uint64_t addr, uint32_t size, uint64_t value) { return {true, addr, size, value}; }
IoAccess r(uint64_t addr, uint32_t size, uint64_t value) { return {false, addr, size, value}; }

TEST_P(GuestConformance, PortIoInBothDirectionsAndAllSizes) {
  GuestHarness h(GetParam(), "pio");
  auto result = h.run();
  ASSERT_EQ(result.status, 0) << result.summary();
  std::vector<IoAccess> expected = {
      w(0x500, 1, 0xA1), w(0x501, 1, 0xA2), w(0x502, 2, 0xB3B2), w(0x500, 4, 0xC4C3C2C1),
      r(0x501, 1, 0x22), r(0x502, 2, 0x4433), r(0x500, 4, 0x44332211),
      w(0x500, 4, 0x22), w(0x500, 4, 0x4433), w(0x500, 4, 0x44332211),
      // rep outsb / outsw / outsd
      w(0x501, 1, 0x10), w(0x501, 1, 0x11), w(0x501, 1, 0x12), w(0x501, 1, 0x13),
      w(0x501, 1, 0x14), w(0x502, 2, 0x2120), w(0x502, 2, 0x2322), w(0x502, 2, 0x2524),
      w(0x500, 4, 0x33323130), w(0x500, 4, 0x37363534),
      // rep insb / insw / insd
      r(0x503, 1, 0x44), r(0x503, 1, 0x44), r(0x503, 1, 0x44), r(0x500, 2, 0x2211),
      r(0x500, 2, 0x2211), r(0x500, 4, 0x44332211), r(0x500, 4, 0x44332211),
      // what the string input stored in memory
      w(0x500, 4, 0x11444444), w(0x500, 4, 0x11221122), w(0x500, 4, 0x11443322),
      w(0x500, 4, 0x00443322),
      w(0x504, 1, 0)};
  EXPECT_EQ(h.ports().log(), expected);
}

TEST_P(GuestConformance, MmioReadsAndWritesOfAllSizes) {
  GuestHarness h(GetParam(), "mmio");
  auto result = h.run();
  ASSERT_EQ(result.status, 0) << result.summary();
  const uint64_t b = kTestMmioBase;
  std::vector<IoAccess> expected = {
      w(b + 0x10, 1, 0x5A), w(b + 0x22, 2, 0x1234), w(b + 0x44, 4, 0xDEADBEEF),
      w(b + 0x88, 8, 0x1122334455667788), r(b + 0x10, 1, 0x5A), r(b + 0x22, 2, 0x1234),
      r(b + 0x44, 4, 0xDEADBEEF), r(b + 0x88, 8, 0x1122334455667788), r(b + 0x800, 4, 0)};
  EXPECT_EQ(h.test_mmio().log(), expected);
  EXPECT_EQ(result.reports,
            (std::vector<uint32_t>{0x5A, 0x1234, 0xDEADBEEF, 0x55667788, 0x11223344, 0}));
}

TEST_P(GuestConformance, LapicTimerInterruptWakesHlt) {
  REQUIRE_BEHAVIOUR("timer_interrupt_cpl0");
  GuestHarness h(GetParam(), "lapic_timer");
  auto result = h.run();
  ASSERT_EQ(result.status, 0) << result.summary();
  EXPECT_EQ(result.reports, std::vector<uint32_t>{1});
}

TEST_P(GuestConformance, IoapicInterruptWakesHlt) {
  REQUIRE_BEHAVIOUR("timer_interrupt_cpl0");
  GuestHarness h(GetParam(), "ioapic_irq");
  auto result = h.run();
  ASSERT_EQ(result.status, 0) << result.summary();
  EXPECT_EQ(result.reports, std::vector<uint32_t>{1});
}

TEST_P(GuestConformance, MsiWakesHlt) {
  REQUIRE_BEHAVIOUR("timer_interrupt_cpl0");
  GuestHarness h(GetParam(), "msi");
  auto result = h.run();
  ASSERT_EQ(result.status, 0) << result.summary();
  EXPECT_EQ(result.reports, std::vector<uint32_t>{1});
}

TEST_P(GuestConformance, EveryVcpuReportsItsApicId) {
  constexpr uint32_t kVcpus = 4;
  REQUIRE_VCPUS(kVcpus);
  GuestHarness h(GetParam(), "smp_apic_id", {.vcpus = kVcpus});
  auto result = h.run();
  ASSERT_EQ(result.status, 0) << result.summary();
  auto reports = result.reports;
  std::sort(reports.begin(), reports.end());
  std::vector<uint32_t> expected;
  // index, LAPIC ID register, CPUID.1 APIC id, CPUID.B x2APIC id: all the same per vCPU.
  for (uint32_t i = 0; i < kVcpus; ++i) expected.push_back(i << 24 | i << 16 | i << 8 | i);
  EXPECT_EQ(reports, expected);
}

TEST_P(GuestConformance, ExceptionsAreDeliveredThroughTheIdt) {
  REQUIRE_BEHAVIOUR("exception_cpl0");
  GuestHarness h(GetParam(), "exceptions");
  auto result = h.run();
  ASSERT_EQ(result.status, 0) << result.summary();
  // #DE, #UD, #GP with error code 0, #PF with CR2 = 0x1'0000'0123.
  EXPECT_EQ(result.reports, (std::vector<uint32_t>{0, 6, 13, 0, 14, 0x123, 1}));
}

TEST_P(GuestConformance, Int3IsDeliveredAsVector3) {
  REQUIRE_BEHAVIOUR("int3_cpl0");
  GuestHarness h(GetParam(), "int3");
  auto result = h.run();
  ASSERT_EQ(result.status, 0) << result.summary();
  EXPECT_EQ(result.reports, std::vector<uint32_t>{3});
}

TEST_P(GuestConformance, TripleFaultShutsDown) {
  REQUIRE_BEHAVIOUR("exception_cpl0");
  GuestHarness h(GetParam(), "triple_fault");
  auto result = h.run();
  EXPECT_FALSE(result.status) << result.summary();
  EXPECT_FALSE(result.timed_out);
  EXPECT_EQ(result.exits[0], VcpuExit::kShutdown) << result.summary();
}

TEST_P(GuestConformance, DeadlineStopsASpinningGuest) {
  GuestHarness h(GetParam(), "spin", {.deadline = milliseconds(300)});
  auto result = h.run();
  EXPECT_TRUE(result.timed_out);
  EXPECT_FALSE(result.status);
  EXPECT_EQ(result.exits[0], VcpuExit::kStopped) << result.summary();
}

TEST_P(GuestConformance, DeadlineStopsHaltedVcpus) {
  REQUIRE_VCPUS(2);
  GuestHarness h(GetParam(), "halt_forever", {.vcpus = 2, .deadline = milliseconds(300)});
  auto result = h.run();
  EXPECT_TRUE(result.timed_out);
  EXPECT_EQ(result.exits[0], VcpuExit::kStopped) << result.summary();
  EXPECT_EQ(result.exits[1], VcpuExit::kStopped) << result.summary();
}

TEST_P(GuestConformance, KickBeforeRunIsStickyAndConsumed) {
  GuestHarness h(GetParam(), "count_exits");
  h.vcpu(0).kick();
  EXPECT_EQ(h.vcpu(0).run(), VcpuExit::kStopped);
  EXPECT_TRUE(h.ports().log().empty());  // no guest instruction ran
  // The kick was consumed: the next run executes the guest, which ends the run (another kick).
  auto result = h.run();
  ASSERT_EQ(result.status, 0) << result.summary();
  auto log = h.ports().log();
  EXPECT_EQ(std::count(log.begin(), log.end(), w(0x501, 1, log[0].value)), 1000);
}

// A device that asks the machine to power off when written (as ACPI S5 or i8042 would).
class PowerOffOnWrite : public BusDevice {
 public:
  explicit PowerOffOnWrite(PowerControl& power) : power_(power) {}
  void read(uint64_t, std::span<uint8_t> data) override { std::fill(data.begin(), data.end(), 0); }
  void write(uint64_t, std::span<const uint8_t>) override {
    power_.request_stop(StopReason::kPowerOff, "test device");
  }

 private:
  PowerControl& power_;
};

TEST_P(GuestConformance, PowerRequestFromADeviceEndsTheRun) {
  REQUIRE_VCPUS(2);
  GuestHarness h(GetParam(), "irqfd_msi", {.vcpus = 2});  // writes port 0x50C, then waits
  h.pio().add(0x50C, 1, std::make_shared<PowerOffOnWrite>(h.power()));
  auto result = h.run();
  EXPECT_FALSE(result.timed_out) << result.summary();
  EXPECT_FALSE(result.status);
  EXPECT_EQ(result.stop, StopReason::kPowerOff);
  EXPECT_EQ(result.stop_detail, "test device");
  EXPECT_EQ(result.exits[0], VcpuExit::kStopped) << result.summary();
  EXPECT_EQ(result.exits[1], VcpuExit::kStopped) << result.summary();
}

// ---- several vCPUs (tests/guests/smp_*.asm)

// LOCK XADD, a LOCK CMPXCHG loop and a page-straddling LOCK ADD from four vCPUs at once.
TEST_P(GuestConformance, LockedOperationsFromFourVcpusAreAtomic) {
  constexpr uint32_t kVcpus = 4;
  REQUIRE_VCPUS(kVcpus);
  REQUIRE_BEHAVIOUR("exception_cpl0");
  GuestHarness h(GetParam(), "smp_atomics", {.vcpus = kVcpus, .deadline = milliseconds(120000)});
  auto result = h.run();
  ASSERT_EQ(result.status, 0) << result.summary();
  ASSERT_EQ(result.reports.size(), 3u) << result.summary();
  EXPECT_EQ(result.reports[0], 4u * 200000);  // LOCK XADD
  EXPECT_EQ(result.reports[1], 4u * 200000);  // LOCK CMPXCHG loop
}

// The same guest's page-straddling LOCK ADD: no host atomic covers it (emu stops the other vCPUs).
TEST_P(GuestConformance, PageStraddlingLockedAddFromFourVcpusIsAtomic) {
  constexpr uint32_t kVcpus = 4;
  REQUIRE_VCPUS(kVcpus);
  if (auto why = native_cpl0_unavailable(GetParam())) GTEST_SKIP() << *why;
  GuestHarness h(GetParam(), "smp_atomics", {.vcpus = kVcpus, .deadline = milliseconds(120000)});
  auto result = h.run();
  ASSERT_EQ(result.status, 0) << result.summary();
  ASSERT_EQ(result.reports.size(), 3u) << result.summary();
  EXPECT_EQ(result.reports[2], 4u * 2000);
}

// A thousand IPIs each way between two vCPUs that wait in HLT.
TEST_P(GuestConformance, IpisPingPongBetweenHaltedVcpus) {
  REQUIRE_VCPUS(2);
  REQUIRE_BEHAVIOUR("timer_interrupt_cpl0");
  GuestHarness h(GetParam(), "smp_ipi", {.vcpus = 2, .deadline = milliseconds(60000)});
  auto result = h.run();
  ASSERT_EQ(result.status, 0) << result.summary();
  EXPECT_EQ(result.reports, (std::vector<uint32_t>{1000, 1000}));
}

// A remapped page, INVLPG on both vCPUs through an IPI: each sees the new page afterwards.
TEST_P(GuestConformance, TlbShootdownThroughAnIpi) {
  REQUIRE_VCPUS(2);
  REQUIRE_BEHAVIOUR("timer_interrupt_cpl0");
  GuestHarness h(GetParam(), "smp_shootdown", {.vcpus = 2});
  auto result = h.run();
  ASSERT_EQ(result.status, 0) << result.summary();
  EXPECT_EQ(result.reports, (std::vector<uint32_t>{0xAAAA, 0xAAAA, 0xBBBB, 0xBBBB}));
}

// One vCPU rewrites code another runs hot; after a serialising instruction the other runs the
// new code.
TEST_P(GuestConformance, CrossModifyingCodeIsSeenAfterSerialising) {
  REQUIRE_VCPUS(2);
  GuestHarness h(GetParam(), "smp_xmc", {.vcpus = 2});
  auto result = h.run();
  ASSERT_EQ(result.status, 0) << result.summary();
  EXPECT_EQ(result.reports, (std::vector<uint32_t>{0x1111, 0x2222}));
}

INSTANTIATE_TEST_SUITE_P(Engines, GuestConformance, ::testing::Values(Accel::kKvm, Accel::kEmu),
                         [](const ::testing::TestParamInfo<Accel>& info) {
                           return std::string(to_string(info.param));
                         });

}  // namespace
}  // namespace keel::guest_test
