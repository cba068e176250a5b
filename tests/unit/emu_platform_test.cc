// The assembled platform: bus registration, device lines and MSIs to local APICs, PIT IRQ0 end to
// end, and (with the host clock) the watcher raising attention for a PIT tick.
#include <gtest/gtest.h>

#include <thread>

#include "base/error.h"
#include "emu_platform_fake_clock.h"
#include "engine/emu/platform/pc_platform.h"

namespace keel::emu {
namespace {

class EmuPlatformPc : public ::testing::Test {
 protected:
  std::unique_ptr<PcPlatform> make(uint32_t vcpus, std::unique_ptr<GuestClock> c, bool watcher) {
    PcPlatformConfig config;
    config.vcpus = vcpus;
    config.start_watcher = watcher;
    return std::make_unique<PcPlatform>(ctx, config, std::move(c));
  }
  void SetUp() override {
    auto c = std::make_unique<testing::FakeClock>();
    clock = c.get();
    platform = make(2, std::move(c), false);
    for (uint32_t i = 0; i < 2; ++i) lapic_write(platform->apic(i), apic_reg::kSvr, 0x1FF);
  }
  static void lapic_write(LocalApicModel& a, uint32_t reg, uint32_t v) {
    a.mmio_write(reg, {reinterpret_cast<const uint8_t*>(&v), 4});
  }
  void mmio_write32(uint64_t addr, uint32_t v) {
    mmio.write(addr, {reinterpret_cast<const uint8_t*>(&v), 4});
  }
  uint32_t mmio_read32(uint64_t addr) {
    uint32_t v = 0;
    mmio.read(addr, {reinterpret_cast<uint8_t*>(&v), 4});
    return v;
  }
  void outb(uint16_t port, uint8_t v) { pio.write(port, {&v, 1}); }
  uint8_t inb(uint16_t port) {
    uint8_t v = 0;
    pio.read(port, {&v, 1});
    return v;
  }
  // Programs IOAPIC pin `pin` through the MMIO bus, as the guest does.
  void route(uint32_t pin, uint64_t entry) {
    mmio_write32(kIoApicBase, 0x11 + 2 * pin);
    mmio_write32(kIoApicBase + 0x10, static_cast<uint32_t>(entry >> 32));
    mmio_write32(kIoApicBase, 0x10 + 2 * pin);
    mmio_write32(kIoApicBase + 0x10, static_cast<uint32_t>(entry));
  }

  GuestMemory memory{1 << 20};
  IoBus pio{"pio"};
  IoBus mmio{"mmio"};
  EngineContext ctx{memory, pio, mmio};
  testing::FakeClock* clock = nullptr;
  std::unique_ptr<PcPlatform> platform;
};

TEST_F(EmuPlatformPc, DevicesAreOnTheBuses) {
  mmio_write32(kIoApicBase, 0x01);
  EXPECT_EQ(mmio_read32(kIoApicBase + 0x10), kIoApicVersion);
  outb(0x21, 0xFF);
  EXPECT_EQ(inb(0x21), 0xFF);
  outb(0xA1, 0xFF);
  EXPECT_EQ(inb(0xA1), 0xFF);
  outb(0x61, 0x01);
  EXPECT_EQ(inb(0x61) & 0x03, 0x01);
  outb(0x43, 0x30);
  outb(0x40, 0x34);
  outb(0x40, 0x12);
  EXPECT_EQ(platform->pit().count(0), 0x1234);
  EXPECT_TRUE(platform->tsc_deadline_supported());
  EXPECT_EQ(&platform->local_apic(1), &platform->apic(1));
  EXPECT_THROW(platform->apic(2), Error);
  EXPECT_THROW(platform->kvm_clock(2), Error);
  EXPECT_EQ(platform->apic(0).base_msr() & kApicBaseBspBit, kApicBaseBspBit);
  EXPECT_EQ(platform->apic(1).base_msr() & kApicBaseBspBit, 0u);
}

TEST_F(EmuPlatformPc, DestructionRemovesTheDevicesFromTheBuses) {
  platform.reset();
  uint8_t v = 0;
  EXPECT_FALSE(pio.read(0x40, {&v, 1}));
  EXPECT_FALSE(pio.read(0x61, {&v, 1}));
  EXPECT_FALSE(pio.read(0x20, {&v, 1}));
  EXPECT_FALSE(mmio.read(kIoApicBase, {&v, 1}));
  // A second platform can take the same ranges.
  platform = make(1, std::make_unique<testing::FakeClock>(), false);
}

TEST_F(EmuPlatformPc, ABusConflictIsReportedAndLeavesNothingBehind) {
  platform.reset();
  pio.add(0xA0, 2, std::make_shared<Pic8259>());  // someone else holds the slave PIC's ports
  EXPECT_THROW(make(1, std::make_unique<testing::FakeClock>(), false), Error);
  uint8_t v = 0;
  EXPECT_FALSE(pio.read(0x40, {&v, 1}));
  EXPECT_FALSE(mmio.read(kIoApicBase, {&v, 1}));
  EXPECT_THROW(make(0, std::make_unique<testing::FakeClock>(), false), Error);
}

TEST_F(EmuPlatformPc, DeviceLinesReachTheLocalApicThroughTheIoApic) {
  route(4, 0x34);  // COM1's GSI, edge, to APIC 0
  platform->interrupts().set_irq(4, true);
  EXPECT_EQ(platform->apic(0).pending_vector(), 0x34);
  EXPECT_EQ(platform->apic(1).pending_vector(), -1);
  platform->interrupts().set_irq(100, true);  // beyond the IOAPIC: ignored
  IrqLine(&platform->interrupts(), 23).pulse();
}

TEST_F(EmuPlatformPc, LevelEoiFromTheLocalApicReachesTheIoApic) {
  route(9, IoApic::kLevel | 0x39);
  platform->interrupts().set_irq(9, true);
  auto& bsp = platform->apic(0);
  ASSERT_EQ(bsp.pending_vector(), 0x39);
  bsp.accept(0x39);
  platform->interrupts().set_irq(9, false);
  lapic_write(bsp, apic_reg::kEoi, 0);
  EXPECT_FALSE(platform->ioapic().redirection(9) & IoApic::kRemoteIrr);
}

TEST_F(EmuPlatformPc, MsiDecoding) {
  auto fixed = decode_msi({0xFEE0'1000, 0x0000'4041});
  ASSERT_TRUE(fixed);
  EXPECT_EQ(fixed->destination, 1);
  EXPECT_FALSE(fixed->logical);
  EXPECT_EQ(fixed->vector, 0x41);
  EXPECT_EQ(fixed->mode, DeliveryMode::kFixed);
  EXPECT_FALSE(fixed->level_triggered);
  auto lowest = decode_msi({0xFEE0'300C, 0x0000'C155});  // logical, redirection hint, level bit
  ASSERT_TRUE(lowest);
  EXPECT_EQ(lowest->destination, 3);
  EXPECT_TRUE(lowest->logical);
  EXPECT_EQ(lowest->mode, DeliveryMode::kLowestPriority);
  EXPECT_FALSE(lowest->level_triggered);  // MSIs are edges
  EXPECT_FALSE(decode_msi({0xFED0'0000, 0x41}));            // outside the window
  EXPECT_FALSE(decode_msi({0x1'FEE0'0000ull, 0x41}));       // high dword set
  EXPECT_FALSE(decode_msi({0xFEE0'0000, 0x0000'0641}));     // SIPI is not an MSI mode
  EXPECT_FALSE(decode_msi({0xFEE0'0000, 0x0000'0341}));     // reserved mode
}

TEST_F(EmuPlatformPc, MsisReachTheirDestination) {
  auto& irq = platform->interrupts();
  irq.send_msi({0xFEE0'1000, 0x41});
  EXPECT_EQ(platform->apic(1).pending_vector(), 0x41);
  EXPECT_EQ(platform->apic(0).pending_vector(), -1);
  irq.send_msi({0xFEE0'0000, 0x42});
  EXPECT_EQ(platform->apic(0).pending_vector(), 0x42);
  lapic_write(platform->apic(0), apic_reg::kLdr, 0x0100'0000);
  lapic_write(platform->apic(1), apic_reg::kLdr, 0x0200'0000);
  irq.send_msi({0xFEE0'2004, 0x50});  // logical, CPU bit 1
  EXPECT_EQ(platform->apic(1).pending_vector(), 0x50);
  irq.send_msi({0xFEE0'0000, 0x400});  // NMI to APIC 0
  EXPECT_TRUE(platform->apic(0).take_nmi());
  irq.send_msi({0xFEE0'0000, 0x05});   // illegal vector: an APIC error, no interrupt
  irq.send_msi({0xDEAD'BEEF, 0x60});   // garbage: dropped
  irq.send_msi({0xFEEF'F000, 0x61});   // id 0xFF: broadcast
  EXPECT_EQ(platform->apic(0).pending_vector(), 0x61);
  EXPECT_EQ(platform->apic(1).pending_vector(), 0x61);
}

TEST_F(EmuPlatformPc, PitIrq0ArrivesOnIoApicPin2AtTheRightGuestTime) {
  route(2, 0x30);
  auto& bsp = platform->apic(0);
  uint64_t load = clock->now_ns();
  outb(0x43, 0x34);  // channel 0, LSB/MSB, mode 2
  outb(0x40, 1193 & 0xFF);
  outb(0x40, 1193 >> 8);
  EXPECT_TRUE(bsp.maybe_pending());  // reprogrammed: the BSP re-polls
  EXPECT_EQ(bsp.pending_vector(), -1);
  uint64_t tick = load + mul_div_ceil(1193, kNsPerSec, kPitHz);
  EXPECT_EQ(bsp.next_deadline_ns(), tick);  // what the watcher and HLT wait for
  clock->set(tick - 1);
  EXPECT_EQ(bsp.pending_vector(), -1);
  clock->set(tick);
  EXPECT_EQ(bsp.pending_vector(), 0x30);
  bsp.accept(0x30);
  lapic_write(bsp, apic_reg::kEoi, 0);
  EXPECT_EQ(platform->apic(1).pending_vector(), -1);
}

TEST_F(EmuPlatformPc, PitIrq0AlsoArrivesOnPin0ForAMadtWithoutOverride) {
  route(0, 0x31);  // the guest uses pin 0; pin 2 stays masked
  auto& bsp = platform->apic(0);
  uint64_t load = clock->now_ns();
  outb(0x43, 0x30);  // mode 0, 100 ticks
  outb(0x40, 100);
  outb(0x40, 0);
  clock->set(load + mul_div_ceil(100, kNsPerSec, kPitHz));
  EXPECT_EQ(bsp.pending_vector(), 0x31);
  bsp.accept(0x31);
  EXPECT_EQ(bsp.pending_vector(), -1);  // one interrupt, not two
}

TEST_F(EmuPlatformPc, KvmClockPerVcpu) {
  auto& kc = platform->kvm_clock(1);
  EXPECT_TRUE(kc.write_msr(kMsrKvmSystemTimeNew, 0x1000 | 1));
  EXPECT_EQ(memory.read_obj<PvclockVcpuTimeInfo>(0x1000).tsc_timestamp, clock->read_tsc());
}

TEST(EmuPlatformPcRealTime, WatcherAndPitDeliverTicksToARunningVcpu) {
  GuestMemory memory(1 << 20);
  IoBus pio("pio"), mmio("mmio");
  EngineContext ctx{memory, pio, mmio};
  auto platform = create_emu_platform(ctx, 1);
  auto& bsp = platform->apic(0);
  uint32_t svr = 0x1FF;
  bsp.mmio_write(apic_reg::kSvr, {reinterpret_cast<uint8_t*>(&svr), 4});
  auto w32 = [&](uint64_t a, uint32_t v) { mmio.write(a, {reinterpret_cast<uint8_t*>(&v), 4}); };
  w32(kIoApicBase, 0x14);  // pin 2 low word
  w32(kIoApicBase + 0x10, 0x30);
  auto outb = [&](uint16_t p, uint8_t v) { pio.write(p, {&v, 1}); };
  outb(0x43, 0x34);  // mode 2, 2 ms
  outb(0x40, 2386 & 0xFF);
  outb(0x40, 2386 >> 8);
  // The "vCPU" checks the flag as at block boundaries and takes what is deliverable.
  uint64_t start = platform->clock().now_ns();
  int ticks = 0;
  while (ticks < 3 && platform->clock().now_ns() - start < 10'000'000'000) {
    if (!bsp.maybe_pending()) {
      std::this_thread::yield();
      continue;
    }
    int v = bsp.pending_vector();
    if (v < 0) continue;
    EXPECT_EQ(v, 0x30);
    bsp.accept(v);
    bsp.mmio_write(apic_reg::kEoi, {reinterpret_cast<uint8_t*>(&svr), 4});
    ++ticks;
  }
  EXPECT_EQ(ticks, 3);
  EXPECT_GE(platform->clock().now_ns() - start, 3 * 2'000'000u - 10'000);
  // And a halted vCPU wakes for the next tick by itself.
  std::atomic<bool> kicked{false};
  bsp.wait_for_interrupt(kicked);
  EXPECT_EQ(bsp.pending_vector(), 0x30);
}

}  // namespace
}  // namespace keel::emu
