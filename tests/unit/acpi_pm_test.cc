#include "devices/legacy/acpi_pm.h"

#include <gtest/gtest.h>

#include <vector>

#include "fake_devices.h"

namespace keel {
namespace {

class AcpiPmTest : public ::testing::Test {
 protected:
  // Port-relative helpers: the device sits at AcpiPm::kBasePort.
  void out16(uint16_t port, uint16_t v) {
    const uint8_t b[2] = {uint8_t(v), uint8_t(v >> 8)};
    pm.write(port - AcpiPm::kBasePort, b);
  }
  void out8(uint16_t port, uint8_t v) { pm.write(port - AcpiPm::kBasePort, std::span(&v, 1)); }
  uint16_t in16(uint16_t port) {
    uint8_t b[2];
    pm.read(port - AcpiPm::kBasePort, b);
    return uint16_t(b[0] | (b[1] << 8));
  }
  std::vector<std::pair<StopReason, std::string>> stops() {
    std::lock_guard l(power.mutex);
    return power.requests;
  }

  testing::RecordingPower power;
  testing::RecordingInterrupts irqs;
  AcpiPm pm{power, IrqLine(&irqs, AcpiPm::kSciIrq)};
  static constexpr uint16_t kS5 = AcpiPm::kSlpTypS5 << AcpiPm::kSlpTypShift;
};

TEST_F(AcpiPmTest, SciEnReadsSetBecauseThereIsNoSmm) {
  EXPECT_EQ(in16(AcpiPm::kPm1ControlPort) & AcpiPm::kSciEn, AcpiPm::kSciEn);
  out16(AcpiPm::kPm1ControlPort, 0);
  EXPECT_EQ(in16(AcpiPm::kPm1ControlPort) & AcpiPm::kSciEn, AcpiPm::kSciEn);
}

TEST_F(AcpiPmTest, S5WithSlpEnPowersOff) {
  out16(AcpiPm::kPm1ControlPort, kS5 | AcpiPm::kSlpEn);
  ASSERT_EQ(stops().size(), 1u);
  EXPECT_EQ(stops()[0].first, StopReason::kPowerOff);
  EXPECT_EQ(stops()[0].second, "ACPI S5");
}

TEST_F(AcpiPmTest, LinuxStyleTwoStepSleepPowersOffOnTheSecondWrite) {
  // ACPICA writes SLP_TYP first, then SLP_TYP | SLP_EN (read-modify-write).
  out16(AcpiPm::kPm1ControlPort, kS5);
  EXPECT_TRUE(stops().empty());
  EXPECT_EQ(in16(AcpiPm::kPm1ControlPort) & AcpiPm::kSlpTypMask, kS5);
  out16(AcpiPm::kPm1ControlPort, in16(AcpiPm::kPm1ControlPort) | AcpiPm::kSlpEn);
  ASSERT_EQ(stops().size(), 1u);
  EXPECT_EQ(stops()[0].first, StopReason::kPowerOff);
  EXPECT_EQ(in16(AcpiPm::kPm1ControlPort) & AcpiPm::kSlpEn, 0);  // write-only bit
}

TEST_F(AcpiPmTest, ByteWriteToTheHighHalfCountsToo) {
  out8(AcpiPm::kPm1ControlPort + 1, uint8_t((kS5 | AcpiPm::kSlpEn) >> 8));
  ASSERT_EQ(stops().size(), 1u);
  EXPECT_EQ(stops()[0].first, StopReason::kPowerOff);
}

TEST_F(AcpiPmTest, OtherSleepTypesAndSlpTypWithoutSlpEnDoNothing) {
  out16(AcpiPm::kPm1ControlPort, (3 << AcpiPm::kSlpTypShift) | AcpiPm::kSlpEn);  // S3
  out16(AcpiPm::kPm1ControlPort, kS5);
  EXPECT_TRUE(stops().empty());
}

TEST_F(AcpiPmTest, ResetRegisterResetsOnlyWithTheResetValue) {
  out8(AcpiPm::kResetPort, 0x02);
  EXPECT_TRUE(stops().empty());
  out8(AcpiPm::kResetPort, AcpiPm::kResetValue);
  ASSERT_EQ(stops().size(), 1u);
  EXPECT_EQ(stops()[0].first, StopReason::kReset);
  EXPECT_EQ(stops()[0].second, "ACPI reset register");
}

TEST_F(AcpiPmTest, PowerButtonRaisesSciOnlyWhenEnabledAndClearsOnWriteOne) {
  pm.press_power_button();
  EXPECT_EQ(in16(AcpiPm::kPm1EventPort) & AcpiPm::kPwrBtn, AcpiPm::kPwrBtn);
  EXPECT_FALSE(irqs.level(AcpiPm::kSciIrq));
  out16(AcpiPm::kPm1EventPort + 2, AcpiPm::kPwrBtn);  // PWRBTN_EN
  EXPECT_EQ(in16(AcpiPm::kPm1EventPort + 2), AcpiPm::kPwrBtn);
  EXPECT_TRUE(irqs.level(AcpiPm::kSciIrq));
  EXPECT_TRUE(pm.sci_asserted());
  out16(AcpiPm::kPm1EventPort, 0);  // writing 0 clears nothing
  EXPECT_TRUE(irqs.level(AcpiPm::kSciIrq));
  out16(AcpiPm::kPm1EventPort, AcpiPm::kPwrBtn);  // write 1 to clear
  EXPECT_EQ(pm.status() & AcpiPm::kPwrBtn, 0);
  EXPECT_FALSE(irqs.level(AcpiPm::kSciIrq));
  // Enabled first, pressed later: the SCI follows at once.
  pm.press_power_button();
  EXPECT_TRUE(irqs.level(AcpiPm::kSciIrq));
  EXPECT_TRUE(stops().empty());
}

// Linux enables the global-lock and RTC fixed events at boot and reads the bits back; bits that
// did not stick were two "ACPI Error" lines on every boot. They raise no SCI (no such events).
TEST_F(AcpiPmTest, GlobalLockAndRtcEnableBitsStickWithoutRaisingSci) {
  out16(AcpiPm::kPm1EventPort + 2, AcpiPm::kGblEn | AcpiPm::kRtcEn);
  EXPECT_EQ(in16(AcpiPm::kPm1EventPort + 2), AcpiPm::kGblEn | AcpiPm::kRtcEn);
  EXPECT_FALSE(irqs.level(AcpiPm::kSciIrq));
  out16(AcpiPm::kPm1EventPort + 2, 1 << 0);  // TMR_EN: keel has no PM timer
  EXPECT_EQ(in16(AcpiPm::kPm1EventPort + 2), 0);
}

TEST_F(AcpiPmTest, ADwordReadCoversStatusAndEnable) {
  out16(AcpiPm::kPm1EventPort + 2, AcpiPm::kPwrBtn);
  pm.press_power_button();
  uint8_t b[4];
  pm.read(0, b);
  EXPECT_EQ(b[1], AcpiPm::kPwrBtn >> 8);  // status high byte
  EXPECT_EQ(b[3], AcpiPm::kPwrBtn >> 8);  // enable high byte
  uint8_t unused[2];
  pm.read(0x0A, unused);
  EXPECT_EQ(unused[0], 0xFF);
  EXPECT_EQ(unused[1], 0xFF);
}

}  // namespace
}  // namespace keel
