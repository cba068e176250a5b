#include <gtest/gtest.h>

#include "emu_platform_fake_clock.h"
#include "engine/emu/platform/io_apic.h"
#include "engine/emu/platform/local_apic_model.h"

namespace keel::emu {
namespace {

class EmuPlatformIoApic : public ::testing::Test {
 protected:
  EmuPlatformIoApic() {
    bus.attach(&apic0);
    bus.attach(&apic1);
    bus.set_eoi_listener([this](uint8_t v) { ioapic.eoi(v); });
    for (auto* a : {&apic0, &apic1}) lapic_write(*a, apic_reg::kSvr, 0x1FF);
  }
  static void lapic_write(LocalApicModel& a, uint32_t reg, uint32_t v) {
    a.mmio_write(reg, {reinterpret_cast<const uint8_t*>(&v), 4});
  }
  void mmio_write(uint64_t off, uint32_t v) {
    ioapic.write(off, {reinterpret_cast<const uint8_t*>(&v), 4});
  }
  uint32_t mmio_read(uint64_t off) {
    uint32_t v = 0xdeadbeef;
    ioapic.read(off, {reinterpret_cast<uint8_t*>(&v), 4});
    return v;
  }
  uint32_t reg(uint32_t index) {
    mmio_write(0x00, index);
    return mmio_read(0x10);
  }
  void set_reg(uint32_t index, uint32_t v) {
    mmio_write(0x00, index);
    mmio_write(0x10, v);
  }
  void route(uint32_t pin, uint64_t entry) {
    set_reg(0x11 + 2 * pin, static_cast<uint32_t>(entry >> 32));
    set_reg(0x10 + 2 * pin, static_cast<uint32_t>(entry));
  }
  // The CPU side: take and end one interrupt.
  static int take(LocalApicModel& a) {
    int v = a.pending_vector();
    if (v >= 0) a.accept(v);
    return v;
  }
  static void eoi(LocalApicModel& a) { lapic_write(a, apic_reg::kEoi, 0); }

  testing::FakeClock clock;
  ApicBus bus;
  LocalApicModel apic0{0, clock, bus};
  LocalApicModel apic1{1, clock, bus};
  IoApic ioapic{bus};
};

TEST_F(EmuPlatformIoApic, IdVersionAndResetState) {
  EXPECT_EQ(reg(0x01), 0x0017'0020u);  // 24 entries
  EXPECT_EQ(reg(0x00), 0u);
  set_reg(0x00, 0x0A00'0000);
  EXPECT_EQ(reg(0x00), 0x0A00'0000u);
  EXPECT_EQ(reg(0x02), 0x0A00'0000u);
  set_reg(0x01, 0);  // read-only
  EXPECT_EQ(reg(0x01), 0x0017'0020u);
  for (uint32_t pin = 0; pin < 24; ++pin) EXPECT_EQ(ioapic.redirection(pin), IoApic::kMasked);
  EXPECT_EQ(mmio_read(0x00), 0x01u);  // IOREGSEL reads back
}

TEST_F(EmuPlatformIoApic, RedirectionEntriesKeepOnlyWritableBits) {
  route(3, 0xFFFF'FFFF'FFFF'FFFFull);
  EXPECT_EQ(ioapic.redirection(3), 0xFF00'0000'0001'AFFFull);  // no delivery status, no remote IRR
  EXPECT_EQ(reg(0x10 + 6), 0x0001'AFFFu);
  EXPECT_EQ(reg(0x11 + 6), 0xFF00'0000u);
}

TEST_F(EmuPlatformIoApic, EdgePinsDeliverOnRisingEdgesWhileUnmasked) {
  route(2, 0x30);  // edge, fixed, physical dest 0, vector 0x30
  ioapic.set_irq(2, true);
  ioapic.set_irq(2, true);  // no new edge
  EXPECT_EQ(take(apic0), 0x30);
  eoi(apic0);
  EXPECT_EQ(take(apic0), -1);
  ioapic.set_irq(2, false);
  ioapic.set_irq(2, true);
  EXPECT_EQ(take(apic0), 0x30);
  eoi(apic0);
  // Masked: the edge is lost, and unmasking does not bring it back.
  route(2, IoApic::kMasked | 0x30);
  ioapic.set_irq(2, false);
  ioapic.set_irq(2, true);
  route(2, 0x30);
  EXPECT_EQ(take(apic0), -1);
  EXPECT_EQ(take(apic1), -1);
}

TEST_F(EmuPlatformIoApic, LevelPinsUseRemoteIrrAndRedeliverOnEoiWhileAsserted) {
  route(10, IoApic::kLevel | 0x41);
  ioapic.set_irq(10, true);
  EXPECT_TRUE(ioapic.redirection(10) & IoApic::kRemoteIrr);
  EXPECT_EQ(take(apic0), 0x41);
  ioapic.set_irq(10, true);  // still asserted: remote IRR holds it back
  EXPECT_EQ(apic0.pending_vector(), -1);
  eoi(apic0);                // level EOI broadcast -> IOAPIC: line still high, delivers again
  EXPECT_TRUE(ioapic.redirection(10) & IoApic::kRemoteIrr);
  EXPECT_EQ(take(apic0), 0x41);
  ioapic.set_irq(10, false);  // the device is served
  eoi(apic0);
  EXPECT_FALSE(ioapic.redirection(10) & IoApic::kRemoteIrr);
  EXPECT_EQ(take(apic0), -1);
}

TEST_F(EmuPlatformIoApic, UnmaskingAnAssertedLevelPinDelivers) {
  route(11, IoApic::kMasked | IoApic::kLevel | 0x42);
  ioapic.set_irq(11, true);
  EXPECT_EQ(take(apic0), -1);
  route(11, IoApic::kLevel | 0x42);
  EXPECT_EQ(take(apic0), 0x42);
  // Rewriting the entry while remote IRR is set keeps it (no second delivery).
  route(11, IoApic::kLevel | 0x42);
  EXPECT_TRUE(ioapic.redirection(11) & IoApic::kRemoteIrr);
  EXPECT_EQ(apic0.pending_vector(), -1);
}

TEST_F(EmuPlatformIoApic, EoiRegisterClearsRemoteIrr) {
  route(5, IoApic::kLevel | 0x43);
  ioapic.set_irq(5, true);
  EXPECT_EQ(take(apic0), 0x43);
  ioapic.set_irq(5, false);
  mmio_write(0x40, 0x43);
  EXPECT_FALSE(ioapic.redirection(5) & IoApic::kRemoteIrr);
}

TEST_F(EmuPlatformIoApic, DestinationsPhysicalAndLogical) {
  route(4, (uint64_t{1} << 56) | 0x50);  // physical APIC id 1
  ioapic.set_irq(4, true);
  EXPECT_EQ(take(apic1), 0x50);
  EXPECT_EQ(take(apic0), -1);
  lapic_write(apic0, apic_reg::kLdr, 0x0100'0000);
  lapic_write(apic1, apic_reg::kLdr, 0x0200'0000);
  route(6, (uint64_t{0x01} << 56) | IoApic::kLogical | 0x51);  // logical flat, CPU bit 0
  ioapic.set_irq(6, true);
  EXPECT_EQ(take(apic0), 0x51);
  EXPECT_EQ(take(apic1), -1);
  eoi(apic0);
  eoi(apic1);
  route(7, (uint64_t{0x03} << 56) | IoApic::kLogical | 0x152);  // lowest priority: one CPU
  ioapic.set_irq(7, true);
  EXPECT_EQ(take(apic0) + take(apic1), 0x52 - 1);
}

TEST_F(EmuPlatformIoApic, MalformedAccessesAreHarmless) {
  uint8_t b[8] = {};
  ioapic.read(0x10, {b, 8});  // too wide
  EXPECT_EQ(b[0], 0);
  ioapic.read(0x20, {b, 4});  // nothing there
  ioapic.read(0xFFF, {b, 1});
  ioapic.read(0x03, {b, 2});  // straddles
  ioapic.read(0x10, {b, 0});
  ioapic.write(0x10, {b, 2});  // narrow window write: dropped
  ioapic.write(0x10, {b, 8});
  ioapic.write(0x999, {b, 4});
  ioapic.write(0x00, {b, 0});
  mmio_write(0x00, 0xFF);  // beyond the table
  EXPECT_EQ(mmio_read(0x10), 0u);
  mmio_write(0x10, 0xFFFF'FFFF);
  mmio_write(0x00, 0x3F);  // reserved index in range 0x03..0x0F
  EXPECT_EQ(mmio_read(0x10), 0u);
  uint8_t sel = 0x01;
  ioapic.write(0x00, {&sel, 1});  // byte write to IOREGSEL works
  uint8_t v = 0;
  ioapic.read(0x12, {&v, 1});     // byte 2 of the version register: max entry 23
  EXPECT_EQ(v, 0x17);
  ioapic.set_irq(24, true);
  ioapic.set_irq(1'000'000, true);
  ioapic.eoi(0);
  EXPECT_EQ(ioapic.redirection(24), 0u);
  // A vector below 16 reaches the LAPIC as an illegal vector, not an interrupt.
  route(1, 0x05);
  ioapic.set_irq(1, true);
  EXPECT_EQ(take(apic0), -1);
}

}  // namespace
}  // namespace keel::emu
