// What an emu vCPU carries between instructions besides its registers (HLT, the STI/MOV SS
// shadow, NMI blocking and a held NMI) goes into a snapshot as KVM's MP state and vCPU events,
// and a restored vCPU takes it back (engine/emu/cpu_state.cc).
#include <gtest/gtest.h>

#include "arch/x86/machine_state.h"
#include "emu_harness.h"

namespace keel::emu::test {
namespace {

constexpr const char* kHaltThenMark = R"(
    cli
    hlt
    mov rbx, 1
    hlt)";

TEST(EmuVcpuSnapshot, AHaltedVcpuStaysHaltedAfterARestore) {
  EmuMachine saved;
  ASSERT_EQ(saved.run(kHaltThenMark), VcpuExit::kHalted);
  ASSERT_EQ(saved.reg(x86::RBX), 0u);
  x86::VcpuSnapshot snap;
  static_cast<EmuVcpu&>(*saved.vcpu).save_snapshot(snap);
  EXPECT_EQ(snap.mp_state, x86::MpState::kHalted);

  // Through the section format too, as a snapshot file carries it.
  state::SectionWriter out("cpu0", 1);
  x86::save_vcpu(snap, out);
  x86::VcpuSnapshot loaded = x86::load_vcpu(state::SectionReader("cpu0", 1, out.payload()));

  EmuMachine restored;
  auto code = assemble(kHaltThenMark);
  restored.mem.write(kCode, code.data(), code.size());
  static_cast<EmuVcpu&>(*restored.vcpu).restore_snapshot(loaded);
  // Halted with interrupts off: it stays halted; it does not go on after the HLT.
  EXPECT_EQ(restored.run_again(), VcpuExit::kHalted);
  EXPECT_EQ(restored.reg(x86::RBX), 0u);
  EXPECT_EQ(restored.rip(), saved.rip());
}

TEST(EmuVcpuSnapshot, ShadowAndNmiBlockingRoundTrip) {
  EmuMachine saved;
  ASSERT_EQ(saved.run("hlt"), VcpuExit::kHalted);
  Cpu::EventFlags flags{.halted = false, .shadow = true, .nmi_blocked = true, .nmi_latched = true};
  saved.cpu().set_event_flags(flags);
  x86::VcpuSnapshot snap;
  static_cast<EmuVcpu&>(*saved.vcpu).save_snapshot(snap);
  EXPECT_EQ(snap.mp_state, x86::MpState::kRunnable);
  EXPECT_EQ(snap.events.interrupt_shadow, 1);
  EXPECT_TRUE(snap.events.nmi_masked);
  EXPECT_TRUE(snap.events.nmi_pending);

  EmuMachine restored;
  static_cast<EmuVcpu&>(*restored.vcpu).restore_snapshot(snap);
  Cpu::EventFlags back = restored.cpu().event_flags();
  EXPECT_FALSE(back.halted);
  EXPECT_TRUE(back.shadow);
  EXPECT_TRUE(back.nmi_blocked);
  EXPECT_TRUE(back.nmi_latched);
}

TEST(EmuVcpuSnapshot, AnEventKvmWasInjectingIsRefusedByName) {
  EmuMachine saved;
  ASSERT_EQ(saved.run("hlt"), VcpuExit::kHalted);
  x86::VcpuSnapshot snap;
  static_cast<EmuVcpu&>(*saved.vcpu).save_snapshot(snap);
  snap.events.interrupt_injected = true;
  snap.events.interrupt_nr = 0x20;
  EmuMachine restored;
  try {
    static_cast<EmuVcpu&>(*restored.vcpu).restore_snapshot(snap);
    FAIL() << "expected an Error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("an event being injected"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace keel::emu::test
