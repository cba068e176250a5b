// KVM-engine specifics the conformance guests do not cover: error reports, ioeventfd, irqfd.
#include "engine/kvm/kvm_engine.h"

#include <gtest/gtest.h>

#include <algorithm>

#include "base/eventfd.h"
#include "engine/kvm/kvm_vcpu.h"
#include "guest_harness.h"

namespace keel::guest_test {
namespace {

#define REQUIRE_KVM()                                              \
  if (auto why = engine_unavailable(Accel::kKvm)) GTEST_SKIP() << *why

TEST(KvmEngine, InternalErrorNamesTheReasonRipAndInstructionBytes) {
  REQUIRE_KVM();
  if (!behaviour_unavailable(Accel::kKvm, "int3_cpl0"))
    GTEST_SKIP() << "INT3 at CPL0 works on this host's KVM, so it cannot provoke an internal error";
  GuestHarness h(Accel::kKvm, "int3");
  auto result = h.run();
  std::string error = result.first_error();
  ASSERT_FALSE(error.empty()) << result.summary();
  EXPECT_NE(error.find("KVM internal error on vCPU 0: instruction emulation failed"),
            std::string::npos) << error;
  // The int3 sits right after SET_GATE + LOAD_IDT; its byte leads the instruction bytes.
  EXPECT_NE(error.find("RIP 0x1000"), std::string::npos) << error;
  EXPECT_NE(error.find("instruction bytes cc "), std::string::npos) << error;
}

TEST(KvmEngine, RefusesMoreVcpusThanKvmAllows) {
  REQUIRE_KVM();
  GuestMemory memory(1 << 20);
  IoBus pio("pio"), mmio("mmio");
  EXPECT_THROW(KvmEngine({memory, pio, mmio}, {.vcpus = 0}), Error);
  KvmEngine engine({memory, pio, mmio}, {.vcpus = 2});
  EXPECT_EQ(engine.name(), "kvm");
  EXPECT_GE(engine.max_vcpus(), 2u);
  EXPECT_THROW(engine.create_vcpu(2), Error);
}

TEST(KvmEngine, IoeventfdTakesPortWritesAwayFromTheBus) {
  REQUIRE_KVM();
  GuestHarness h(Accel::kKvm, "count_exits");
  auto& kvm = dynamic_cast<KvmEngine&>(h.engine());
  EventFd efd;
  kvm.add_ioeventfd(IoSpace::kPio, kPortReport + 1, 1, std::nullopt, efd.fd());
  auto result = h.run();
  ASSERT_EQ(result.status, 0) << result.summary();
  EXPECT_EQ(efd.consume(), 1000u);
  // Only the exit write reached the bus.
  EXPECT_EQ(h.ports().log(), (std::vector<IoAccess>{{true, kPortExit, 1, 0}}));
}

TEST(KvmEngine, IoeventfdDatamatchOnlyTakesMatchingWrites) {
  REQUIRE_KVM();
  GuestHarness h(Accel::kKvm, "count_exits");
  auto& kvm = dynamic_cast<KvmEngine&>(h.engine());
  EventFd efd;
  kvm.add_ioeventfd(IoSpace::kPio, kPortReport + 1, 1, 0x77, efd.fd());  // the guest writes 0
  auto result = h.run();
  ASSERT_EQ(result.status, 0) << result.summary();
  EXPECT_EQ(efd.consume(), 0u);
  EXPECT_EQ(h.ports().log().size(), 1001u);
}

TEST(KvmEngine, MsiIrqfdDeliversTheVector) {
  REQUIRE_KVM();
  GuestHarness h(Accel::kKvm, "irqfd_msi");
  auto& kvm = dynamic_cast<KvmEngine&>(h.engine());
  EventFd efd;
  // First route a wrong vector, then reprogram it, as a guest rewriting an MSI-X entry would.
  uint32_t gsi = kvm.add_irqfd(MsiMessage{0xFEE0'0000, 0x42}, efd.fd());
  EXPECT_GE(gsi, 24u);
  kvm.update_msi_route(gsi, {0xFEE0'0000, 0x41});
  h.pio().add(0x50C, 1, std::make_shared<OnWrite>([&] { efd.signal(); }));
  auto result = h.run();
  ASSERT_EQ(result.status, 0) << result.summary();
  EXPECT_EQ(result.reports, std::vector<uint32_t>{1});
  kvm.remove_irqfd(gsi, efd.fd());
  // The freed GSI is reused.
  EventFd efd2;
  EXPECT_EQ(kvm.add_irqfd(MsiMessage{0xFEE0'0000, 0x41}, efd2.fd()), gsi);
}

TEST(KvmEngine, StateRoundTripsThroughKvm) {
  REQUIRE_KVM();
  GuestHarness h(Accel::kKvm, "spin");
  auto& vcpu = h.vcpu(0);
  auto st = vcpu.get_state();
  EXPECT_EQ(st.rip, kGuestLoadAddr);
  EXPECT_EQ(st.gpr[x86::RSP], kGuestStackTop);
  EXPECT_EQ(st.cs.selector, 0x10);
  EXPECT_EQ(st.cs.l, 1);
  EXPECT_EQ(st.efer & 0x500, 0x500u);
  EXPECT_EQ(st.apic_base, 0xFEE0'0900u);
  st.gpr[x86::R13] = 0x1234'5678'9ABC'DEF0ull;
  st.rflags |= x86::kFlagCF;
  vcpu.set_state(st);
  auto back = vcpu.get_state();
  EXPECT_EQ(back.gpr[x86::R13], 0x1234'5678'9ABC'DEF0ull);
  EXPECT_TRUE(back.rflags & x86::kFlagCF);

  auto fpu = vcpu.get_fpu();
  fpu.fxsave[160] = 0xAB;  // XMM0 byte 0
  EXPECT_EQ(fpu.fxsave[24], 0x80);  // MXCSR = 0x1F80 after reset
  EXPECT_EQ(fpu.fxsave[25], 0x1F);
  fpu.fxsave[24] = 0x81;            // set MXCSR.IE
  vcpu.set_fpu(fpu);
  auto fpu_back = vcpu.get_fpu();
  EXPECT_EQ(fpu_back.fxsave[160], 0xAB);
  EXPECT_EQ(fpu_back.fxsave[24], 0x81);
}

}  // namespace
}  // namespace keel::guest_test
