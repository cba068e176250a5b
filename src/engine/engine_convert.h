// Restoring a snapshot on the other engine (engine/engine_state.cc): the engine part of a state
// taken on emu is rewritten as the sections a KVM restore reads, and the reverse.
//
//   emu/pic (both 8259s)   <->  kvm/irqchip0, kvm/irqchip1 (struct kvm_pic_state)
//   emu/ioapic             <->  kvm/irqchip2 (struct kvm_ioapic_state)
//   emu/pit                <->  kvm/pit (struct kvm_pit_state2; counts restart from their reload
//                               value, as KVM_SET_PIT2 restarts them)
//   emu/clock (guest ns)   <->  kvm/clock (kvm_clock_data.clock)
//   emu/lapicN             <->  cpuN's local APIC register page (KVM_GET_LAPIC's layout), TSC
//                               deadline MSR, APIC base
//
// The vCPU sections are shared (x86::VcpuSnapshot); MSRs keep what the other engine serves, and
// KVM's XSAVE area goes when the guest enabled nothing beyond x87/SSE in XCR0. State one side
// cannot hold (8259 modes the emu does not model, XSAVE components, an event being injected) is
// refused by name, never dropped.
#pragma once

#include <cstdint>
#include <string>

#include "state/state_format.h"

namespace keel {

// The engine sections of `in` (taken on `from`) as the `to` engine restores them: "engine",
// "cpuid", the platform's sections and every "cpuN". `tsc_hz`: the emu clock's rate, when `to` is
// emu. Throws state::StateError naming what cannot be carried over.
state::Document convert_engine_state(const state::Document& in, const std::string& from,
                                     const std::string& to, uint32_t vcpus, uint64_t tsc_hz);

}  // namespace keel
