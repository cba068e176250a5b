#include "engine/engine_state.h"

#include "arch/x86/machine_state.h"
#include "base/error.h"
#include "engine/emu/emu_engine.h"
#include "engine/kvm/kvm_state.h"

namespace keel {

// The engines are told apart here, once, so that neither the Engine interface nor the machine
// knows their snapshot formats: the vCPU sections are shared (x86::VcpuSnapshot), the rest is each
// engine's own ("emu/...", "kvm/...").

void save_engine_state(Engine& engine, std::span<const std::unique_ptr<Vcpu>> vcpus,
                       state::Writer& out) {
  auto& e = out.section("engine");
  e.str("name", engine.name());
  e.u32("vcpus", static_cast<uint32_t>(vcpus.size()));
  auto* emu = dynamic_cast<emu::EmuEngine*>(&engine);
  auto* kvm = dynamic_cast<KvmEngine*>(&engine);
  if (emu)
    emu->platform().save_state(out);
  else if (kvm)
    save_kvm_vm(*kvm, out);
  else
    throw Error("the " + engine.name() + " engine cannot save VM state");
  for (const auto& vcpu : vcpus) {
    x86::VcpuSnapshot snapshot;
    if (emu)
      static_cast<emu::EmuVcpu&>(*vcpu).save_snapshot(snapshot);
    else
      save_kvm_vcpu(static_cast<KvmVcpu&>(*vcpu), snapshot);
    x86::save_vcpu(snapshot, out.section("cpu" + std::to_string(vcpu->index())));
  }
}

void restore_engine_state(Engine& engine, std::span<const std::unique_ptr<Vcpu>> vcpus,
                          const state::Document& in) {
  const auto& e = in.section("engine");
  std::string name = e.str("name", 16);
  if (name != engine.name())
    e.fail("the snapshot was taken on the " + name + " engine, this machine runs " +
           engine.name() + " (restoring across engines is not supported yet)");
  if (e.u32("vcpus") != vcpus.size())
    e.fail("the snapshot has " + std::to_string(e.u32("vcpus")) + " vCPUs, this machine " +
           std::to_string(vcpus.size()));
  auto* emu = dynamic_cast<emu::EmuEngine*>(&engine);
  auto* kvm = dynamic_cast<KvmEngine*>(&engine);
  if (emu)
    emu->platform().restore_state(in);
  else if (kvm)
    restore_kvm_vm(*kvm, in);
  else
    throw Error("the " + engine.name() + " engine cannot restore VM state");
  for (const auto& vcpu : vcpus) {
    x86::VcpuSnapshot snapshot = x86::load_vcpu(in.section("cpu" + std::to_string(vcpu->index())));
    if (emu)
      static_cast<emu::EmuVcpu&>(*vcpu).restore_snapshot(snapshot);
    else
      restore_kvm_vcpu(static_cast<KvmVcpu&>(*vcpu), snapshot);
  }
}

}  // namespace keel
