#include "engine/engine_state.h"

#include <array>
#include <cstring>

#include "arch/x86/cpu_features.h"
#include "arch/x86/machine_state.h"
#include "base/error.h"
#include "engine/emu/emu_engine.h"
#include "engine/engine_convert.h"
#include "engine/kvm/kvm_state.h"

namespace keel {

// The engines are told apart here, once, so that neither the Engine interface nor the machine
// knows their snapshot formats: the vCPU sections are shared (x86::VcpuSnapshot), the rest is each
// engine's own ("emu/...", "kvm/...").

namespace {

// The feature leaves (x86::kFeatureLeaves) vCPU 0 of `engine` shows its guest.
std::vector<x86::CpuidEntry> guest_features(Engine& engine,
                                            std::span<const std::unique_ptr<Vcpu>> vcpus) {
  std::vector<x86::CpuidEntry> out;
  if (auto* kvm = dynamic_cast<KvmEngine*>(&engine)) {
    auto all = kvm->guest_cpuid(0);
    for (uint32_t leaf : x86::kFeatureLeaves)
      if (auto e = x86::find_cpuid(all, leaf, 0)) out.push_back(*e);
  } else if (dynamic_cast<emu::EmuEngine*>(&engine) && !vcpus.empty()) {
    auto& cpu = static_cast<emu::EmuVcpu&>(*vcpus[0]).cpu();
    for (uint32_t leaf : x86::kFeatureLeaves) {
      uint32_t r[4];
      cpu.cpuid(leaf, 0, r);
      out.push_back({.function = leaf, .eax = r[0], .ebx = r[1], .ecx = r[2], .edx = r[3]});
    }
  }
  return out;
}

// Section "cpuid": each feature leaf as "leafN" = eax, ebx, ecx, edx (16 bytes, little-endian).
void save_features(std::span<const x86::CpuidEntry> leaves, state::SectionWriter& out) {
  for (const auto& e : leaves) {
    uint32_t regs[4] = {e.eax, e.ebx, e.ecx, e.edx};
    out.bytes("leaf" + std::to_string(e.function),
              {reinterpret_cast<const uint8_t*>(regs), sizeof regs});
  }
}

std::vector<x86::CpuidEntry> load_features(const state::SectionReader& in) {
  std::vector<x86::CpuidEntry> out;
  for (uint32_t leaf : x86::kFeatureLeaves) {
    std::string field = "leaf" + std::to_string(leaf);
    if (!in.has(field)) continue;
    std::array<uint8_t, 16> b;
    in.bytes_exact(field, b);
    uint32_t regs[4];
    std::memcpy(regs, b.data(), sizeof regs);
    out.push_back({.function = leaf, .eax = regs[0], .ebx = regs[1], .ecx = regs[2], .edx = regs[3]});
  }
  return out;
}

}  // namespace

void save_engine_state(Engine& engine, std::span<const std::unique_ptr<Vcpu>> vcpus,
                       state::Writer& out) {
  auto& e = out.section("engine");
  e.str("name", engine.name());
  e.u32("vcpus", static_cast<uint32_t>(vcpus.size()));
  save_features(guest_features(engine, vcpus), out.section("cpuid"));
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
  if (name != engine.name()) {
    // The features the guest saw must exist here; then the state would need converting.
    if (in.has("cpuid")) {
      auto missing = x86::missing_features(load_features(in.section("cpuid")),
                                           guest_features(engine, vcpus));
      if (!missing.empty()) {
        std::string names;
        for (const auto& m : missing) names += (names.empty() ? "" : ", ") + m;
        in.section("cpuid").fail("the snapshot was taken on the " + name +
                                 " engine, whose guest saw " + names + " which " + engine.name() +
                                 " here lacks: it cannot continue on this engine");
      }
    }
    if (e.u32("vcpus") != vcpus.size())
      e.fail("the snapshot has " + std::to_string(e.u32("vcpus")) + " vCPUs, this machine " +
             std::to_string(vcpus.size()));
    // The other engine's sections, converted (engine/engine_convert.h); then restored as ever.
    auto* emu_here = dynamic_cast<emu::EmuEngine*>(&engine);
    uint64_t tsc_hz = emu_here ? emu_here->platform().clock().tsc_hz() : 0;
    state::Document converted =
        convert_engine_state(in, name, engine.name(), static_cast<uint32_t>(vcpus.size()), tsc_hz);
    restore_engine_state(engine, vcpus, converted);
    return;
  }
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
