// Snapshots on the kvm engine: the complete vCPU state KVM keeps (KVM_GET/SET_REGS, SREGS, XSAVE
// or FPU, XCRS, MSRS, LAPIC, VCPU_EVENTS, DEBUGREGS, MP_STATE) as an x86::VcpuSnapshot, and the
// in-kernel irqchip (two PICs, IOAPIC), PIT and kvm-clock as sections "kvm/...". Only while no
// vCPU runs. KVM checks what it is given on the SET ioctls; what it refuses throws Error naming
// the ioctl.
#pragma once

#include "arch/x86/machine_state.h"
#include "engine/kvm/kvm_engine.h"
#include "engine/kvm/kvm_vcpu.h"
#include "state/state_format.h"

namespace keel {

void save_kvm_vcpu(KvmVcpu& vcpu, x86::VcpuSnapshot& out);
void restore_kvm_vcpu(KvmVcpu& vcpu, const x86::VcpuSnapshot& in);
void save_kvm_vm(KvmEngine& engine, state::Writer& out);
void restore_kvm_vm(KvmEngine& engine, const state::Document& in);

}  // namespace keel
