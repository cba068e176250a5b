// Several vCPUs on emu where no engine-independent guest can test it (KVM on this host cannot run
// real-mode code): application processors started by INIT/SIPI through a real-mode trampoline.
#include <gtest/gtest.h>

#include "guest_harness.h"

namespace keel::guest_test {
namespace {

using std::chrono::milliseconds;

TEST(EmuSmp, InitSipiStartsAnApplicationProcessorThroughRealAndProtectedModeIntoLongMode) {
  GuestHarness h(Accel::kEmu, "smp_init_sipi", {.vcpus = 2, .start_aps = false});
  auto result = h.run();
  ASSERT_EQ(result.status, 0) << result.summary();
  // APIC id 1; CR0 = PG | ET | PE (and CD/NW as INIT leaves them); EFER = LME | LMA; CS 0x18.
  ASSERT_EQ(result.reports.size(), 4u) << result.summary();
  EXPECT_EQ(result.reports[0], 1u);
  EXPECT_EQ(result.reports[1] & 0x80000011u, 0x80000011u);
  EXPECT_EQ(result.reports[2] & 0x500u, 0x500u);
  EXPECT_EQ(result.reports[3], 0x18u);
}

// The interpreter's locked operations are host atomics too (the translator's are the host's own
// LOCK instructions): four vCPUs on the interpreter tier lose no increment.
TEST(EmuSmp, LockedOperationsAreAtomicOnTheInterpreterTier) {
  GuestHarness h(Accel::kEmu, "smp_atomics",
                 {.vcpus = 4, .deadline = milliseconds(120000), .emu_tier = EmuTier::kInterp});
  auto result = h.run();
  ASSERT_EQ(result.status, 0) << result.summary();
  EXPECT_EQ(result.reports, (std::vector<uint32_t>{4 * 200000, 4 * 200000, 4 * 2000}));
}

TEST(EmuSmp, AnApplicationProcessorWaitsForItsSipiAndAKickStopsTheWait) {
  // vCPU 1 never gets a SIPI here (smp_apic_id does not send one): run() returns on the kick.
  GuestHarness h(Accel::kEmu, "halt_forever", {.vcpus = 2, .deadline = milliseconds(200),
                                               .start_aps = false});
  auto result = h.run();
  EXPECT_TRUE(result.timed_out);
  EXPECT_EQ(result.exits[1], VcpuExit::kStopped) << result.summary();
}

}  // namespace
}  // namespace keel::guest_test
