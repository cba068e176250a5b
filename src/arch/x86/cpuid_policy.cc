#include "arch/x86/cpuid_policy.h"

#include <algorithm>
#include <bit>

namespace keel::x86 {

namespace {

// "KVMKVMKVM\0\0\0" in EBX, ECX, EDX: Linux's KVM guest support (kvm-clock, PV EOI...) keys on it.
constexpr uint32_t kKvmSigEbx = 0x4B4D564B;  // "KVMK"
constexpr uint32_t kKvmSigEcx = 0x564B4D56;  // "VMKV"
constexpr uint32_t kKvmSigEdx = 0x0000004D;  // "M\0\0\0"

// Bits of APIC id needed to number `count` cores.
uint32_t id_bits(uint32_t count) {
  return count <= 1 ? 0 : static_cast<uint32_t>(std::bit_width(count - 1));
}

// Leaf 0xB (extended topology): SMT level with one thread, core level with all vCPUs.
void add_topology_leaf(std::vector<CpuidEntry>& out, const CpuidPolicy& p) {
  uint32_t core_shift = id_bits(p.vcpu_count);
  out.push_back({0xB, 0, kCpuidFlagSignificantIndex, 0, 1, 1u << 8, p.apic_id});
  out.push_back({0xB, 1, kCpuidFlagSignificantIndex, core_shift, p.vcpu_count, (2u << 8) | 1,
                 p.apic_id});
  out.push_back({0xB, 2, kCpuidFlagSignificantIndex, 0, 0, 2, p.apic_id});
}

}  // namespace

std::optional<CpuidEntry> find_cpuid(std::span<const CpuidEntry> entries, uint32_t function,
                                     uint32_t index) {
  for (const auto& e : entries)
    if (e.function == function &&
        (!(e.flags & kCpuidFlagSignificantIndex) || e.index == index))
      return e;
  return std::nullopt;
}

const char* to_string(CpuModel model) { return model == CpuModel::kBaseline ? "baseline" : "host"; }

std::optional<CpuModel> parse_cpu_model(std::string_view name) {
  if (name == "host") return CpuModel::kHost;
  if (name == "baseline") return CpuModel::kBaseline;
  return std::nullopt;
}

void apply_cpu_model(CpuModel model, uint32_t function, uint32_t index, uint32_t r[4]) {
  if (model == CpuModel::kHost) return;
  switch (function) {
    case 0x1:
      // EDX: FPU VME DE PSE TSC MSR PAE MCE CX8 APIC SEP MTRR PGE MCA CMOV PAT PSE36 CLFLUSH MMX
      // FXSR SSE SSE2, and HTT (topology, set by the policy). ECX: SSE3, CX16, the hypervisor bit.
      r[3] &= 0x07'8B'FB'FFu | kCpuid1EdxHtt;
      r[2] &= (1u << 0) | (1u << 13) | kCpuid1EcxHypervisor;
      break;
    case 0x7:
      if (index == 0) r[0] = 0;  // no sub-leaves beyond 0
      r[1] = r[2] = r[3] = 0;
      break;
    case 0x8000'0001:
      r[3] &= (1u << 11) | (1u << 20) | (1u << 29);  // SYSCALL, NX, LM
      r[2] &= 1u << 0;                                 // LAHF/SAHF in long mode
      break;
    default:
      break;
  }
}

std::vector<CpuidEntry> apply_cpuid_policy(std::span<const CpuidEntry> supported,
                                           const CpuidPolicy& p) {
  std::vector<CpuidEntry> out;
  out.reserve(supported.size() + 4);
  bool has_kvm_signature = false;
  uint32_t vcpus = std::max<uint32_t>(p.vcpu_count, 1);

  for (CpuidEntry e : supported) {
    switch (e.function) {
      case 0x1:
        // EBX: initial APIC id [31:24], logical processors per package [23:16].
        e.ebx = (e.ebx & 0x0000'FFFF) | (std::min<uint32_t>(vcpus, 255) << 16) |
                ((p.apic_id & 0xFF) << 24);
        e.ecx |= kCpuid1EcxHypervisor;
        if (p.tsc_deadline) e.ecx |= kCpuid1EcxTscDeadline;
        if (vcpus > 1)
          e.edx |= kCpuid1EdxHtt;
        else
          e.edx &= ~kCpuid1EdxHtt;
        break;
      case 0x4:
        // Deterministic cache parameters: cores per package - 1 in [31:26]; each cache is
        // private to one (single-threaded) core.
        if ((e.eax & 0x1F) != 0)
          e.eax = (e.eax & 0x3FFF) | ((std::min<uint32_t>(vcpus, 64) - 1) << 26);
        break;
      case 0xB:
      case 0x1F:
        continue;  // replaced below: the host's topology (and host APIC id) must not leak
      case 0x8000'0008:
        // AMD: NC (cores - 1) in ECX[7:0], APIC id size in ECX[15:12].
        e.ecx = (e.ecx & ~0xF0FFu) | ((vcpus - 1) & 0xFF) | (id_bits(vcpus) << 12);
        break;
      case kCpuidKvmSignature:
        has_kvm_signature = true;
        e.eax = std::max(e.eax, kCpuidKvmFeatures);
        e.ebx = kKvmSigEbx;
        e.ecx = kKvmSigEcx;
        e.edx = kKvmSigEdx;
        break;
      default:
        break;
    }
    out.push_back(e);
  }

  for (CpuidEntry& e : out) {
    uint32_t r[4] = {e.eax, e.ebx, e.ecx, e.edx};
    apply_cpu_model(p.model, e.function, e.index, r);
    e.eax = r[0], e.ebx = r[1], e.ecx = r[2], e.edx = r[3];
  }
  // The topology leaf exists whenever the basic range reaches it.
  if (auto leaf0 = find_cpuid(out, 0); leaf0 && leaf0->eax >= 0xB) add_topology_leaf(out, p);
  if (!has_kvm_signature) {
    out.push_back({kCpuidKvmSignature, 0, 0, kCpuidKvmFeatures, kKvmSigEbx, kKvmSigEcx, kKvmSigEdx});
    if (!find_cpuid(out, kCpuidKvmFeatures)) out.push_back({kCpuidKvmFeatures, 0, 0, 0, 0, 0, 0});
  }
  return out;
}

}  // namespace keel::x86
