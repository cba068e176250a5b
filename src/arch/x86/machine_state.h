// One x86 vCPU's state as snapshots and migration carry it (section "cpuN"): the fields both
// engines fill (registers, segments, control registers, FXSAVE, MSRs, MP state), plus what only
// one has (KVM's XSAVE area, XCR0, debug registers, local APIC page and pending events; the emu
// keeps its local APIC in its platform's sections).
//
// The layouts follow KVM's where one exists (the local APIC register page is kvm_lapic_state's,
// pending events are kvm_vcpu_events', MP states are KVM_MP_STATE_*), so a snapshot restores on
// either engine (engine/engine_convert.h rewrites the engine-specific parts).
//
// load_vcpu() checks every field (widths, ranges) and throws state::StateError naming it.
#pragma once

#include <array>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "arch/x86/cpu_state.h"
#include "arch/x86/cpuid_policy.h"
#include "arch/x86/msrs.h"
#include "state/state_format.h"

namespace keel::x86 {

enum class MpState : uint32_t {
  kRunnable = 0,
  kUninitialized = 1,  // waiting for INIT/SIPI
  kInitReceived = 2,
  kHalted = 3,
  kSipiReceived = 4,
};

// Events between instructions (kvm_vcpu_events without the SMM and triple-fault parts).
struct VcpuEvents {
  bool exception_injected = false;
  uint8_t exception_nr = 0;
  bool exception_has_error = false;
  uint32_t exception_error = 0;
  bool interrupt_injected = false;
  uint8_t interrupt_nr = 0;
  bool interrupt_soft = false;
  uint8_t interrupt_shadow = 0;  // 1: after STI, 2: after MOV SS / POP SS
  bool nmi_injected = false;
  bool nmi_pending = false;
  bool nmi_masked = false;
  uint32_t sipi_vector = 0;
};

inline constexpr size_t kLapicPageSize = 1024;  // KVM_APIC_REG_SIZE

// One vCPU.
struct VcpuSnapshot {
  CpuState regs;
  FpuState fpu;                  // FXSAVE image: x87, MMX, SSE, MXCSR
  std::vector<uint8_t> xsave;    // the whole XSAVE area when the engine has one (kvm), else empty
  uint64_t xcr0 = 1;
  std::array<uint64_t, 4> dr{};  // DR0-DR3
  uint64_t dr6 = 0xFFFF'0FF0;
  uint64_t dr7 = 0x400;
  std::vector<MsrEntry> msrs;    // everything else the engine keeps in MSRs, TSC included
  std::array<uint8_t, kLapicPageSize> lapic{};
  // Nanoseconds left on a one-shot/periodic LAPIC timer (the emu keeps the running count; KVM
  // restarts it from the initial count when absent).
  std::optional<uint64_t> lapic_timer_remaining_ns;
  MpState mp_state = MpState::kRunnable;
  VcpuEvents events;
  std::vector<CpuidEntry> cpuid;  // what the guest was shown
};

void save_vcpu(const VcpuSnapshot& v, state::SectionWriter& out);
VcpuSnapshot load_vcpu(const state::SectionReader& in);

// Lookup in VcpuSnapshot::msrs.
std::optional<uint64_t> find_msr(const std::vector<MsrEntry>& msrs, uint32_t index);

}  // namespace keel::x86
