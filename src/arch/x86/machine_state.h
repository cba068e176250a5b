// Engine-neutral x86 machine state, as snapshots and migration carry it: what both engines can
// export and import, so a VM saved on one engine restores on the other.
//
// The layouts follow KVM's where one exists (the local APIC register page is kvm_lapic_state's,
// pending events are kvm_vcpu_events', MP states are KVM_MP_STATE_*), so the kvm engine copies
// them and the emu engine converts its models to and from them. Times are guest times: ns of the
// guest's clock (kvm-clock system time) and the guest TSC, never host times, so a restore in a
// later process continues the guest's clock where it stopped.
//
// Each struct has a section encoding (save_*/load_*); loaders check every field (widths,
// ranges) and throw state::StateError naming it.
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

// Register `reg` (a multiple of 16 below 0x400) of a local APIC page.
uint32_t lapic_reg(const std::array<uint8_t, kLapicPageSize>& page, uint32_t reg);
void set_lapic_reg(std::array<uint8_t, kLapicPageSize>& page, uint32_t reg, uint32_t value);

// The IOAPIC (24 pins).
struct IoApicSnapshot {
  uint32_t id = 0;
  uint32_t select = 0;
  std::array<uint64_t, 24> redirection{};
  uint32_t line_levels = 0;  // bit n: input pin n asserted
};

// One 8259 PIC (kvm_pic_state's fields).
struct PicSnapshot {
  uint8_t last_irr = 0, irr = 0, imr = 0xFF, isr = 0, priority_add = 0, irq_base = 0;
  uint8_t read_reg_select = 0, poll = 0, special_mask = 0, init_state = 0, auto_eoi = 0;
  uint8_t rotate_on_auto_eoi = 0, special_fully_nested_mode = 0, init4 = 0, elcr = 0;
  uint8_t elcr_mask = 0;
};

// One 8254 channel, engine-neutral: the programming and how long ago the count was loaded.
struct PitChannelSnapshot {
  uint8_t mode = 0;
  uint8_t access = 3;  // 1 LSB, 2 MSB, 3 LSB then MSB (kvm: rw_mode)
  bool bcd = false;
  bool gate = false;
  uint32_t reload = 0x10000;
  bool counting = false;
  uint64_t loaded_ns_ago = 0;  // guest ns since the count was loaded
};

struct PitSnapshot {
  std::array<PitChannelSnapshot, 3> channels;
  uint8_t port61 = 0;
};

// The guest's clock: kvm-clock system time (ns) and the TSC of vCPU 0, read together.
struct ClockSnapshot {
  uint64_t guest_ns = 0;
  uint64_t tsc = 0;
  uint64_t tsc_hz = 0;  // the guest TSC frequency, when the engine knows it (0: unknown)
};

void save_ioapic(const IoApicSnapshot& s, state::SectionWriter& out);
IoApicSnapshot load_ioapic(const state::SectionReader& in);
void save_pic(const std::array<PicSnapshot, 2>& s, state::SectionWriter& out);
std::array<PicSnapshot, 2> load_pic(const state::SectionReader& in);
void save_pit(const PitSnapshot& s, state::SectionWriter& out);
PitSnapshot load_pit(const state::SectionReader& in);
void save_clock(const ClockSnapshot& s, state::SectionWriter& out);
ClockSnapshot load_clock(const state::SectionReader& in);

// CPUID features the guest saw in `saved` that `available` lacks, by name ("avx", "xsave",
// "leaf 7 ebx bit 3", ...). Empty when `available` has them all. Compares the feature leaves
// (1, 6, 7.0, 0xD.1, 0x80000001, 0x80000007, 0x40000001), not topology, cache or brand leaves.
std::vector<std::string> missing_cpuid_features(const std::vector<CpuidEntry>& saved,
                                                const std::vector<CpuidEntry>& available);

}  // namespace keel::x86
