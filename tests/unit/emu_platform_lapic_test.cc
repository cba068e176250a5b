#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <future>
#include <thread>
#include <vector>

#include "emu_platform_fake_clock.h"
#include "engine/emu/platform/local_apic_model.h"

namespace keel::emu {
namespace {

using namespace apic_reg;

class EmuPlatformLapic : public ::testing::Test {
 protected:
  EmuPlatformLapic() {
    bus.attach(&apic);
    bus.attach(&apic1);
  }
  static void write(LocalApicModel& a, uint32_t reg, uint32_t v) {
    a.mmio_write(reg, {reinterpret_cast<const uint8_t*>(&v), 4});
  }
  static uint32_t read(LocalApicModel& a, uint32_t reg) {
    uint32_t v = 0xdeadbeef;
    a.mmio_read(reg, {reinterpret_cast<uint8_t*>(&v), 4});
    return v;
  }
  void write(uint32_t reg, uint32_t v) { write(apic, reg, v); }
  uint32_t read(uint32_t reg) { return read(apic, reg); }
  void enable(LocalApicModel& a) { write(a, kSvr, 0x1FF); }
  bool irr(int v) { return (read(kIrr + (v / 32) * 0x10) >> (v % 32)) & 1; }
  bool isr(int v) { return (read(kIsr + (v / 32) * 0x10) >> (v % 32)) & 1; }
  bool tmr(int v) { return (read(kTmr + (v / 32) * 0x10) >> (v % 32)) & 1; }
  // Takes the pending interrupt as the CPU would; returns its vector or -1.
  int take() {
    int v = apic.pending_vector();
    if (v >= 0) apic.accept(v);
    return v;
  }
  void eoi() { write(kEoi, 0); }

  testing::FakeClock clock;
  ApicBus bus;
  LocalApicModel apic{0, clock, bus};
  LocalApicModel apic1{1, clock, bus};
};

TEST_F(EmuPlatformLapic, ResetState) {
  EXPECT_EQ(read(kId), 0u);
  EXPECT_EQ(read(apic1, kId), 1u << 24);
  EXPECT_EQ(read(kVersion), 0x0005'0014u);  // max LVT 5: six LVT entries
  for (uint32_t r : {kLvtTimer, kLvtThermal, kLvtPerf, kLvtLint0, kLvtLint1, kLvtError})
    EXPECT_EQ(read(r), kLvtMasked) << std::hex << r;
  EXPECT_EQ(read(kSvr), 0xFFu);
  EXPECT_EQ(read(kDfr), 0xFFFF'FFFFu);
  EXPECT_EQ(read(kLdr), 0u);
  EXPECT_EQ(read(kTpr), 0u);
  EXPECT_EQ(apic.base_msr(), 0xFEE0'0900u);   // enabled, BSP
  EXPECT_EQ(apic1.base_msr(), 0xFEE0'0800u);  // enabled
  EXPECT_FALSE(apic.maybe_pending());
  EXPECT_EQ(apic.pending_vector(), -1);
}

TEST_F(EmuPlatformLapic, SoftwareDisabledApicDropsFixedInterrupts) {
  apic.deliver_fixed(0x40, false);
  EXPECT_FALSE(irr(0x40));
  EXPECT_EQ(apic.pending_vector(), -1);
  enable(apic);
  apic.deliver_fixed(0x40, false);
  EXPECT_TRUE(irr(0x40));
  EXPECT_EQ(apic.pending_vector(), 0x40);
}

TEST_F(EmuPlatformLapic, HigherPriorityClassFirstAndEoiClearsHighestIsr) {
  enable(apic);
  apic.deliver_fixed(0x30, false);
  apic.deliver_fixed(0x50, false);
  apic.deliver_fixed(0x41, false);
  EXPECT_EQ(take(), 0x50);
  EXPECT_TRUE(isr(0x50));
  EXPECT_FALSE(irr(0x50));
  EXPECT_EQ(read(kPpr), 0x50u);
  EXPECT_EQ(apic.pending_vector(), -1);  // 0x41 and 0x30 are below the in-service class
  EXPECT_FALSE(apic.maybe_pending());
  apic.deliver_fixed(0x5F, false);       // same class as in service: not deliverable either
  EXPECT_EQ(apic.pending_vector(), -1);
  apic.deliver_fixed(0x61, false);       // higher class nests
  EXPECT_TRUE(apic.maybe_pending());
  EXPECT_EQ(take(), 0x61);
  EXPECT_EQ(read(kPpr), 0x60u);
  eoi();  // ends 0x61, the highest in service
  EXPECT_FALSE(isr(0x61));
  EXPECT_TRUE(isr(0x50));
  EXPECT_EQ(read(kPpr), 0x50u);
  EXPECT_EQ(apic.pending_vector(), -1);
  eoi();
  EXPECT_EQ(read(kPpr), 0u);
  EXPECT_EQ(take(), 0x5F);
  eoi();
  EXPECT_EQ(take(), 0x41);
  eoi();
  EXPECT_EQ(take(), 0x30);
  eoi();
  EXPECT_EQ(take(), -1);
  eoi();  // EOI with nothing in service is harmless
  EXPECT_EQ(read(kPpr), 0u);
}

TEST_F(EmuPlatformLapic, TprAndCr8MaskLowerClasses) {
  enable(apic);
  write(kTpr, 0x45);
  EXPECT_EQ(apic.cr8(), 4);
  EXPECT_EQ(read(kPpr), 0x45u);
  apic.deliver_fixed(0x4F, false);
  EXPECT_EQ(apic.pending_vector(), -1);
  EXPECT_FALSE(apic.maybe_pending());
  EXPECT_EQ(read(kApr), 0x45u);  // TPR class >= IRR class and > ISR class: APR = TPR
  apic.set_cr8(3);
  EXPECT_EQ(read(kTpr), 0x30u);
  EXPECT_TRUE(apic.maybe_pending());
  EXPECT_EQ(read(kApr), 0x40u);  // max(TPR, ISRV, IRRV) classes
  EXPECT_EQ(take(), 0x4F);
  apic.set_cr8(0xFF);            // only the low 4 bits count
  EXPECT_EQ(apic.cr8(), 0xF);
  EXPECT_EQ(read(kTpr), 0xF0u);
}

TEST_F(EmuPlatformLapic, LevelTriggeredEoiIsBroadcastEdgeIsNot) {
  std::vector<int> eois;
  bus.set_eoi_listener([&](uint8_t v) { eois.push_back(v); });
  enable(apic);
  apic.deliver_fixed(0x40, true);
  EXPECT_TRUE(tmr(0x40));
  EXPECT_EQ(take(), 0x40);
  eoi();
  apic.deliver_fixed(0x41, false);
  EXPECT_FALSE(tmr(0x41));
  EXPECT_EQ(take(), 0x41);
  eoi();
  EXPECT_EQ(eois, std::vector<int>{0x40});
}

TEST_F(EmuPlatformLapic, IllegalVectorsSetEsrAndRaiseTheErrorLvt) {
  enable(apic);
  write(kLvtError, 0xFE);
  apic.deliver_fixed(5, false);
  EXPECT_EQ(read(kEsr), 0u);  // errors become visible after a write to ESR
  write(kEsr, 0);
  EXPECT_EQ(read(kEsr), kEsrReceiveIllegalVector);
  EXPECT_EQ(take(), 0xFE);
  eoi();
  write(kIcrLow, 0x0000'4003);  // fixed IPI with vector 3
  write(kEsr, 0);
  EXPECT_EQ(read(kEsr), kEsrSendIllegalVector);
  write(kEsr, 0);
  EXPECT_EQ(read(kEsr), 0u);
}

// ---- timer ----

TEST_F(EmuPlatformLapic, OneShotTimerFiresAfterInitialCountTimesDivisor) {
  enable(apic);
  write(kTimerDivide, 0x3);  // divide by 16
  write(kLvtTimer, 0xEF);    // one-shot, vector 0xEF
  write(kTimerInitialCount, 1000);
  EXPECT_EQ(read(kTimerCurrentCount), 1000u);
  clock.advance(15'999);  // 1 GHz bus / 16: 16 ns per count
  EXPECT_EQ(read(kTimerCurrentCount), 1u);
  EXPECT_EQ(apic.pending_vector(), -1);
  clock.advance(1);
  EXPECT_EQ(take(), 0xEF);
  EXPECT_EQ(read(kTimerCurrentCount), 0u);
  eoi();
  clock.advance(1'000'000);
  EXPECT_EQ(apic.pending_vector(), -1);  // one-shot: once
  EXPECT_EQ(read(kTimerInitialCount), 1000u);
}

TEST_F(EmuPlatformLapic, PeriodicTimerReloadsAndCoalescesMissedPeriods) {
  enable(apic);
  write(kTimerDivide, 0xB);  // divide by 1
  write(kLvtTimer, kLvtTimerPeriodic | 0xEC);
  write(kTimerInitialCount, 100'000);  // 100 us
  for (int i = 0; i < 3; ++i) {
    clock.advance(99'999);
    EXPECT_EQ(apic.pending_vector(), -1) << i;
    clock.advance(1);
    EXPECT_EQ(take(), 0xEC) << i;
    eoi();
    EXPECT_EQ(read(kTimerCurrentCount), 100'000u);
  }
  clock.advance(25'000);
  EXPECT_EQ(read(kTimerCurrentCount), 75'000u);
  // 1 ms without a look: one interrupt, and the phase is kept.
  clock.advance(1'000'000);
  EXPECT_EQ(take(), 0xEC);
  eoi();
  EXPECT_EQ(apic.pending_vector(), -1);
  EXPECT_EQ(read(kTimerCurrentCount), 75'000u);
  clock.advance(75'000);
  EXPECT_EQ(take(), 0xEC);
  // Initial count 0 stops it.
  write(kTimerInitialCount, 0);
  eoi();
  clock.advance(10'000'000);
  EXPECT_EQ(apic.pending_vector(), -1);
}

TEST_F(EmuPlatformLapic, PeriodicTimerHasAMinimumPeriod) {
  enable(apic);
  write(kTimerDivide, 0xB);
  write(kLvtTimer, kLvtTimerPeriodic | 0xEC);
  write(kTimerInitialCount, 10);  // 10 ns asked
  clock.advance(kMinPeriodicNs - 1);
  EXPECT_EQ(apic.pending_vector(), -1);
  clock.advance(1);
  EXPECT_EQ(take(), 0xEC);
}

TEST_F(EmuPlatformLapic, TscDeadlineTimer) {
  enable(apic);
  // Not in TSC-deadline mode: the MSR ignores writes.
  apic.set_tsc_deadline(clock.read_tsc() + 100);
  EXPECT_EQ(apic.tsc_deadline(), 0u);
  write(kLvtTimer, kLvtTimerTscDeadline | 0xEB);
  write(kTimerInitialCount, 5);  // ignored in TSC-deadline mode
  EXPECT_EQ(read(kTimerInitialCount), 0u);
  EXPECT_EQ(read(kTimerCurrentCount), 0u);
  uint64_t deadline = clock.read_tsc() + 2'000'000;  // 1 ms at 2 GHz
  apic.set_tsc_deadline(deadline);
  EXPECT_EQ(apic.tsc_deadline(), deadline);
  EXPECT_EQ(apic.next_deadline_ns(), clock.now_ns() + 1'000'000);
  clock.advance(999'999);
  EXPECT_EQ(apic.pending_vector(), -1);
  clock.advance(1);
  EXPECT_EQ(apic.tsc_deadline(), 0u);  // expired reads 0
  EXPECT_EQ(take(), 0xEB);
  eoi();
  EXPECT_EQ(apic.pending_vector(), -1);
  // Zero disarms.
  apic.set_tsc_deadline(clock.read_tsc() + 10);
  apic.set_tsc_deadline(0);
  clock.advance(1000);
  EXPECT_EQ(apic.pending_vector(), -1);
  // A deadline in the past fires at once, and says so through maybe_pending().
  EXPECT_FALSE(apic.maybe_pending());
  apic.set_tsc_deadline(1);
  EXPECT_TRUE(apic.maybe_pending());
  EXPECT_EQ(take(), 0xEB);
}

TEST_F(EmuPlatformLapic, ChangingTimerModeDisarms) {
  enable(apic);
  write(kLvtTimer, kLvtTimerTscDeadline | 0xEB);
  apic.set_tsc_deadline(clock.read_tsc() + 1000);
  write(kLvtTimer, 0xEB);  // back to one-shot
  clock.advance(1'000'000);
  EXPECT_EQ(apic.pending_vector(), -1);
  write(kTimerInitialCount, 100);
  write(kLvtTimer, kLvtTimerPeriodic | 0xEB);
  clock.advance(1'000'000);
  EXPECT_EQ(apic.pending_vector(), -1);
}

TEST_F(EmuPlatformLapic, MaskedTimerCountsButDoesNotInterrupt) {
  enable(apic);
  write(kTimerDivide, 0xB);
  write(kLvtTimer, kLvtMasked | kLvtTimerPeriodic | 0xEC);
  write(kTimerInitialCount, 100'000);
  EXPECT_EQ(apic.next_deadline_ns(), clock.now_ns() + 100'000);
  clock.advance(150'000);
  EXPECT_EQ(apic.pending_vector(), -1);
  EXPECT_EQ(read(kTimerCurrentCount), 50'000u);
  write(kLvtTimer, kLvtTimerPeriodic | 0xEC);  // unmask, same mode: keeps counting
  clock.advance(50'000);
  EXPECT_EQ(take(), 0xEC);
}

TEST_F(EmuPlatformLapic, DivideChangeKeepsTheCurrentCount) {
  enable(apic);
  write(kTimerDivide, 0x0);  // by 2
  write(kLvtTimer, 0xEA);
  write(kTimerInitialCount, 1000);
  clock.advance(1000);  // 500 counts
  EXPECT_EQ(read(kTimerCurrentCount), 500u);
  write(kTimerDivide, 0xA);  // by 128
  EXPECT_EQ(read(kTimerDivide), 0xAu);
  clock.advance(128 * 499);
  EXPECT_EQ(read(kTimerCurrentCount), 1u);
  EXPECT_EQ(apic.pending_vector(), -1);
  clock.advance(128);
  EXPECT_EQ(take(), 0xEA);
}

TEST_F(EmuPlatformLapic, SoftwareDisableMasksLvtsAndKeepsThemMasked) {
  enable(apic);
  write(kLvtLint0, 0x700);  // ExtINT, unmasked
  EXPECT_EQ(read(kLvtLint0), 0x700u);
  write(kSvr, 0xFF);        // software disable
  EXPECT_EQ(read(kLvtLint0), 0x700u | kLvtMasked);
  write(kLvtLint0, 0x700);  // cannot unmask while disabled
  EXPECT_EQ(read(kLvtLint0), 0x700u | kLvtMasked);
  enable(apic);
  EXPECT_EQ(read(kLvtLint0), 0x700u | kLvtMasked);  // stays masked until written
  write(kLvtLint0, 0x700);
  EXPECT_EQ(read(kLvtLint0), 0x700u);
}

TEST_F(EmuPlatformLapic, BaseMsrRelocatesAndHardwareDisableResets) {
  enable(apic);
  write(kTpr, 0x20);
  apic.set_base_msr(0xFED0'0000 | kApicBaseEnableBit | kApicBaseBspBit | (1u << 10) | 0xFF);
  EXPECT_EQ(apic.base_msr(), 0xFED0'0900u);  // x2APIC and reserved bits are not kept
  apic.set_base_msr(0xFEE0'0000);  // hardware disable
  EXPECT_EQ(read(kTpr), 0u);
  EXPECT_EQ(read(kSvr), 0xFFu);
  apic.deliver_fixed(0x40, false);
  EXPECT_EQ(apic.pending_vector(), -1);
}

// ---- IPIs ----

TEST_F(EmuPlatformLapic, FixedIpiToAnotherApicByPhysicalId) {
  enable(apic);
  enable(apic1);
  write(kIcrHigh, 1u << 24);
  write(kIcrLow, 0x0000'4031);  // fixed, physical, assert, vector 0x31
  EXPECT_EQ(read(kIcrLow) & (1u << 12), 0u);  // delivered at once: never busy
  EXPECT_EQ(apic.pending_vector(), -1);
  EXPECT_TRUE(apic1.maybe_pending());
  EXPECT_EQ(apic1.pending_vector(), 0x31);
}

TEST_F(EmuPlatformLapic, IpiShorthandsAndLogicalDestinations) {
  enable(apic);
  enable(apic1);
  write(kIcrLow, 0x0004'4032);  // self
  EXPECT_EQ(apic.pending_vector(), 0x32);
  EXPECT_EQ(apic1.pending_vector(), -1);
  write(kIcrLow, 0x000C'4033);  // all excluding self
  EXPECT_EQ(apic1.pending_vector(), 0x33);
  EXPECT_EQ(apic.pending_vector(), 0x32);
  write(kIcrLow, 0x0008'4034);  // all including self
  EXPECT_EQ(apic.pending_vector(), 0x34);
  EXPECT_EQ(apic1.pending_vector(), 0x34);
  // Logical flat: LDR bit 1 on apic1 only.
  write(apic1, kLdr, 0x0200'0000);
  write(apic, kLdr, 0x0100'0000);
  write(kIcrHigh, 0x0200'0000);
  write(kIcrLow, 0x0000'4850);  // logical, vector 0x50
  EXPECT_EQ(apic1.pending_vector(), 0x50);
  EXPECT_EQ(apic.pending_vector(), 0x34);
  // Logical cluster model: cluster 1, member bit 0.
  write(apic1, kDfr, 0x0FFF'FFFF);
  write(apic1, kLdr, 0x1100'0000);
  write(kIcrHigh, 0x1100'0000);
  write(kIcrLow, 0x0000'4860);
  EXPECT_EQ(apic1.pending_vector(), 0x60);
  // Physical broadcast.
  write(kIcrHigh, 0xFF00'0000);
  write(kIcrLow, 0x0000'4070);
  EXPECT_EQ(apic.pending_vector(), 0x70);
  EXPECT_EQ(apic1.pending_vector(), 0x70);
  // A physical id nobody has goes nowhere.
  write(kIcrHigh, 0x0700'0000);
  write(kIcrLow, 0x0000'4080);
  EXPECT_EQ(apic.pending_vector(), 0x70);
  EXPECT_EQ(apic1.pending_vector(), 0x70);
}

TEST_F(EmuPlatformLapic, InitSipiAndNmiAreRecorded) {
  enable(apic);
  write(kIcrHigh, 1u << 24);
  write(kIcrLow, 0x0000'C500);  // INIT, level, assert
  write(kIcrLow, 0x0000'8500);  // INIT de-assert: ignored
  EXPECT_TRUE(apic1.maybe_pending());
  EXPECT_TRUE(apic1.take_init());
  EXPECT_FALSE(apic1.take_init());
  write(kIcrLow, 0x0000'0609);  // SIPI, vector 9 (start at 0x9000)
  EXPECT_EQ(apic1.take_sipi(), std::optional<uint8_t>(9));
  EXPECT_EQ(apic1.take_sipi(), std::nullopt);
  write(kIcrLow, 0x0000'0400);  // NMI
  EXPECT_TRUE(apic1.take_nmi());
  EXPECT_FALSE(apic1.maybe_pending());
  // Two before the vCPU looks are two; more merge (the vCPU holds one while a handler runs).
  for (int i = 0; i < 3; ++i) write(kIcrLow, 0x0000'0400);
  EXPECT_TRUE(apic1.take_nmi());
  EXPECT_TRUE(apic1.take_nmi());
  EXPECT_FALSE(apic1.take_nmi());
  EXPECT_EQ(apic1.pending_vector(), -1);
}

// ---- malformed accesses ----

TEST_F(EmuPlatformLapic, MalformedMmioAccessesAreHarmless) {
  enable(apic);
  write(kTpr, 0x12345678);
  EXPECT_EQ(read(kTpr), 0x78u);  // reserved bits dropped
  write(kLvtTimer, 0xFFFF'FFFF);
  EXPECT_EQ(read(kLvtTimer), 0x0007'00FFu);  // mode 3 (reserved) is kept as bits, runs one-shot
  write(kVersion, 0);             // read-only
  EXPECT_EQ(read(kVersion), kApicVersion);
  write(kPpr, 0xFF);
  EXPECT_EQ(read(kPpr), 0x78u);
  // Sub-register reads return the register's bytes; other shapes read zero and never crash.
  uint8_t b[8];
  apic.mmio_read(kVersion + 2, {b, 1});
  EXPECT_EQ(b[0], 0x05);
  apic.mmio_read(kVersion + 2, {b, 4});  // straddles the 4-byte register
  EXPECT_EQ(b[0], 0);
  apic.mmio_read(kVersion, {b, 8});
  EXPECT_EQ(b[0], 0);
  apic.mmio_read(0xFFF, {b, 1});
  apic.mmio_read(0x1000, {b, 4});
  apic.mmio_read(0xFFFF'FFFF, {b, 4});
  apic.mmio_read(0x3F0, {b, 4});
  EXPECT_EQ(b[0], 0);
  apic.mmio_read(kTpr, {b, 0});
  // Writes that are not aligned 32-bit stores are dropped.
  uint8_t one = 0xFF;
  apic.mmio_write(kTpr, {&one, 1});
  apic.mmio_write(kTpr + 1, {b, 4});
  apic.mmio_write(kTpr, {b, 8});
  apic.mmio_write(0x1000, {b, 4});
  apic.mmio_write(0xFFFF'FFF0, {b, 4});
  apic.mmio_write(kTpr, {b, 0});
  EXPECT_EQ(read(kTpr), 0x78u);
  for (uint32_t off = 0; off < 0x1000; off += 4) {  // every offset: no crash
    uint32_t v = 0;
    apic.mmio_read(off, {reinterpret_cast<uint8_t*>(&v), 4});
  }
  EXPECT_EQ(apic.pending_vector(), -1);
  apic.accept(-1);
  apic.accept(256);
}

// ---- HLT and cross-thread delivery ----

TEST_F(EmuPlatformLapic, WaitForInterruptReturnsAtOnceWhenOneIsPending) {
  enable(apic);
  apic.deliver_fixed(0x40, false);
  std::atomic<bool> kicked{false};
  apic.wait_for_interrupt(kicked);
  EXPECT_EQ(apic.pending_vector(), 0x40);
}

TEST_F(EmuPlatformLapic, WaitForInterruptEndsOnDeliveryFromAnotherThread) {
  enable(apic);
  std::atomic<bool> kicked{false};
  std::thread device([&] { apic.deliver_fixed(0x41, false); });
  apic.wait_for_interrupt(kicked);
  device.join();
  EXPECT_EQ(apic.pending_vector(), 0x41);
}

TEST_F(EmuPlatformLapic, WaitForInterruptEndsOnKick) {
  enable(apic);
  std::atomic<bool> kicked{false};
  std::thread other([&] {
    kicked = true;
    apic.wake();
  });
  apic.wait_for_interrupt(kicked);
  other.join();
  EXPECT_EQ(apic.pending_vector(), -1);
}

TEST_F(EmuPlatformLapic, WaitForInterruptEndsWhenTheTimerExpires) {
  enable(apic);
  write(kTimerDivide, 0xB);
  write(kLvtTimer, 0xE0);
  write(kTimerInitialCount, 1'000'000);
  std::atomic<bool> kicked{false};
  auto halted = std::async(std::launch::async, [&] { apic.wait_for_interrupt(kicked); });
  // A masked, never-firing wake: the waiter re-checks and keeps waiting.
  apic.wake();
  EXPECT_EQ(halted.wait_for(std::chrono::milliseconds(0)), std::future_status::timeout);
  clock.advance(1'000'000);
  apic.wake();  // the fake clock does not tick by itself: make the waiter look again
  ASSERT_EQ(halted.wait_for(std::chrono::seconds(10)), std::future_status::ready);
  EXPECT_EQ(apic.pending_vector(), 0xE0);
}

TEST(EmuPlatformLapicRealTime, HaltSleepsUntilTheTimerDeadline) {
  HostGuestClock clock;
  ApicBus bus;
  LocalApicModel apic(0, clock, bus);
  uint32_t svr = 0x1FF, lvt = 0xE0, div = 0xB, count = 3'000'000;  // 3 ms
  apic.mmio_write(kSvr, {reinterpret_cast<uint8_t*>(&svr), 4});
  apic.mmio_write(kTimerDivide, {reinterpret_cast<uint8_t*>(&div), 4});
  apic.mmio_write(kLvtTimer, {reinterpret_cast<uint8_t*>(&lvt), 4});
  uint64_t start = clock.now_ns();
  apic.mmio_write(kTimerInitialCount, {reinterpret_cast<uint8_t*>(&count), 4});
  std::atomic<bool> kicked{false};
  apic.wait_for_interrupt(kicked);
  EXPECT_GE(clock.now_ns() - start, 3'000'000u);
  EXPECT_EQ(apic.pending_vector(), 0xE0);
}

TEST(EmuPlatformLapicRealTime, WatcherRaisesAttentionWhileTheVcpuRuns) {
  HostGuestClock clock;
  ApicBus bus;
  DeadlineWatcher watcher(clock);
  LocalApicModel apic(0, clock, bus, &watcher);
  watcher.add(&apic);
  watcher.start();
  uint32_t svr = 0x1FF, lvt = kLvtTimerTscDeadline | 0xE1;
  apic.mmio_write(kSvr, {reinterpret_cast<uint8_t*>(&svr), 4});
  apic.mmio_write(kLvtTimer, {reinterpret_cast<uint8_t*>(&lvt), 4});
  uint64_t start = clock.now_ns();
  apic.set_tsc_deadline(clock.read_tsc() + clock.tsc_hz() / 500);  // 2 ms
  EXPECT_FALSE(apic.maybe_pending());
  // The vCPU "runs guest code": it only looks at the atomic flag, as at block boundaries.
  while (!apic.maybe_pending() && clock.now_ns() - start < 10'000'000'000) std::this_thread::yield();
  EXPECT_GE(clock.now_ns() - start, 2'000'000u);
  EXPECT_EQ(apic.pending_vector(), 0xE1);
}

}  // namespace
}  // namespace keel::emu
