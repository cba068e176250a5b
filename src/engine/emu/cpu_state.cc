// Snapshots of one emu vCPU (emu_engine.h): what get_state()/get_fpu() leave out is read from the
// Cpu's MSR fields and its kvm-clock MSRs. The local APIC belongs to the platform's sections.
//
// The guest TSC is saved as its value; on restore the TSC offset is chosen so the guest reads it
// on from there against the platform's (already continued) clock.
#include <cstdio>
#include <string>

#include "arch/x86/machine_state.h"
#include "base/error.h"
#include "engine/emu/emu_engine.h"
#include "engine/emu/platform/kvm_clock.h"

namespace keel::emu {

namespace {

// The MSRs the Cpu keeps besides EFER, APIC base, FS/GS base (CpuState) and TSC deadline (the
// local APIC's state): saved through read_msr() and restored through write_msr(), which refuses
// (GuestFault) values the CPU would not take. The kvm-clock MSRs come last: writing them
// re-writes the pvclock pages for the continued clock.
constexpr uint32_t kMsrs[] = {
    0x10,                                    // TSC: restored as an offset to the continued clock
    0x48,                                    // SPEC_CTRL
    0x174,       0x175,       0x176,         // SYSENTER_CS/ESP/EIP
    0x1A0,                                   // MISC_ENABLE
    0x277,                                   // PAT
    0xC000'0081, 0xC000'0082, 0xC000'0083, 0xC000'0084,  // STAR, LSTAR, CSTAR, FMASK
    0xC000'0102, 0xC000'0103,               // KERNEL_GS_BASE, TSC_AUX
    kMsrKvmWallClockNew, kMsrKvmSystemTimeNew,
};

std::string hex(uint32_t v) {
  char buf[16];
  std::snprintf(buf, sizeof buf, "0x%x", v);
  return buf;
}

}  // namespace

void EmuVcpu::save_snapshot(x86::VcpuSnapshot& out) {
  out.regs = cpu_.get_state();
  out.fpu = cpu_.get_fpu();
  out.msrs.clear();
  for (uint32_t msr : kMsrs) {
    try {
      out.msrs.push_back({msr, cpu_.read_msr(msr)});
    } catch (const GuestFault&) {
      // Not served by this Cpu (kvm-clock off): nothing to save.
    }
  }
  Cpu::EventFlags f = cpu_.event_flags();
  out.mp_state = waiting_for_sipi_ ? x86::MpState::kUninitialized
                 : f.halted        ? x86::MpState::kHalted
                                   : x86::MpState::kRunnable;
  out.events.interrupt_shadow = f.shadow ? 1 : 0;
  out.events.nmi_masked = f.nmi_blocked;
  out.events.nmi_pending = f.nmi_latched;
}

void EmuVcpu::restore_snapshot(const x86::VcpuSnapshot& in) {
  if (in.xsave.size() > 512)
    throw Error("vCPU " + std::to_string(index_) +
                ": the snapshot holds extended (XSAVE) state the emu engine does not have");
  cpu_.set_state(in.regs);
  cpu_.set_fpu(in.fpu);
  for (uint32_t msr : kMsrs) {
    auto v = x86::find_msr(in.msrs, msr);
    if (!v) continue;
    try {
      cpu_.write_msr(msr, *v);
    } catch (const GuestFault&) {
      throw Error("vCPU " + std::to_string(index_) + ": MSR " + hex(msr) + " value " +
                  hex(static_cast<uint32_t>(*v >> 32)) + "_" + hex(static_cast<uint32_t>(*v)) +
                  " is refused by the emu CPU");
    }
  }
  waiting_for_sipi_ = in.mp_state == x86::MpState::kUninitialized;
  // The emu has no injection in flight between instructions: an event KVM had injected but not
  // yet delivered cannot be carried over.
  if (in.events.exception_injected || in.events.interrupt_injected || in.events.nmi_injected)
    throw Error("vCPU " + std::to_string(index_) +
                ": the snapshot holds an event being injected, which the emu engine cannot take");
  cpu_.set_event_flags({.halted = in.mp_state == x86::MpState::kHalted,
                        .shadow = in.events.interrupt_shadow != 0,
                        .nmi_blocked = in.events.nmi_masked,
                        .nmi_latched = in.events.nmi_pending});
}

}  // namespace keel::emu
