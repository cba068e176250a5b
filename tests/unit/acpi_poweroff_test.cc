// A guest that powers off through keel's ACPI tables and AcpiPm, on every engine: the tables are
// what Linux reads, the guest walks them as an OS would, and the S5 write must reach
// PowerControl::request_stop(kPowerOff, "ACPI S5").
#include <gtest/gtest.h>

#include "arch/x86/acpi/acpi_tables.h"
#include "devices/legacy/acpi_pm.h"
#include "engine/engine_factory.h"
#include "guest_harness.h"

namespace keel::guest_test {
namespace {

class AcpiPoweroff : public ::testing::TestWithParam<Accel> {
 protected:
  void SetUp() override {
    if (auto why = engine_unavailable(GetParam())) GTEST_SKIP() << *why;
  }
};

TEST_P(AcpiPoweroff, GuestFindsS5InTheTablesAndPowerOffReachesPowerControl) {
  GuestHarness h(GetParam(), "acpi_poweroff", {.deadline = std::chrono::milliseconds(5000)});
  const auto tables = x86::acpi::write_acpi_tables(h.memory(), {.vcpus = 1, .sb_devices = {}});
  ASSERT_EQ(tables.rsdp, 0xE0000u);  // where the guest looks
  h.pio().add(AcpiPm::kBasePort, AcpiPm::kPortCount,
              std::make_shared<AcpiPm>(h.power(), IrqLine(&h.engine().interrupts(), AcpiPm::kSciIrq)));

  const auto result = h.run();
  EXPECT_FALSE(result.status) << "the guest failed a step: " << result.summary();
  EXPECT_FALSE(result.timed_out) << "S5 did not power off: " << result.summary();
  EXPECT_EQ(result.reports, (std::vector<uint32_t>{AcpiPm::kPm1ControlPort, AcpiPm::kSlpTypS5}));
  EXPECT_EQ(result.stop, StopReason::kPowerOff);
  EXPECT_EQ(result.stop_detail, "ACPI S5");
}

INSTANTIATE_TEST_SUITE_P(Engines, AcpiPoweroff, ::testing::Values(Accel::kKvm, Accel::kEmu),
                         [](const ::testing::TestParamInfo<Accel>& info) {
                           return std::string(to_string(info.param));
                         });

}  // namespace
}  // namespace keel::guest_test
