// The CPUID keel shows a guest: one explicit, pure policy over what the engine can support.
//
// KVM: the input is KVM_GET_SUPPORTED_CPUID; the output goes to KVM_SET_CPUID2 per vCPU. The
// policy adds what keel itself defines (topology and APIC ids, the hypervisor bit, the KVM
// paravirtual signature) and removes nothing KVM supports. Pure so that it is unit-tested without
// /dev/kvm; the emu engine can run the same policy over its own list of implemented features.
#pragma once

#include <cstdint>
#include <optional>
#include <span>
#include <string_view>
#include <vector>

namespace keel::x86 {

// Mirrors struct kvm_cpuid_entry2 (without padding).
struct CpuidEntry {
  uint32_t function = 0;
  uint32_t index = 0;
  uint32_t flags = 0;  // kCpuidFlagSignificantIndex when `index` selects a sub-leaf
  uint32_t eax = 0, ebx = 0, ecx = 0, edx = 0;
  bool operator==(const CpuidEntry&) const = default;
};

inline constexpr uint32_t kCpuidFlagSignificantIndex = 1;  // KVM_CPUID_FLAG_SIGNIFCANT_INDEX

// CPUID bits the policy touches.
inline constexpr uint32_t kCpuid1EcxTscDeadline = 1u << 24;
inline constexpr uint32_t kCpuid1EcxHypervisor = 1u << 31;
inline constexpr uint32_t kCpuid1EdxHtt = 1u << 28;
inline constexpr uint32_t kCpuidKvmSignature = 0x4000'0000;
inline constexpr uint32_t kCpuidKvmFeatures = 0x4000'0001;

// The CPU model a guest is shown (keel run --cpu, as QEMU's -cpu): `host` is everything the
// engine runs; `baseline` keeps only features of the first x86-64 CPUs (SSE2, CX16, NX, LM, ...)
// in leaves 1, 7 and 0x80000001, which every engine and x86-64 host has, so a guest saved on one
// engine or host finds its features on another. Snapshots record the model.
enum class CpuModel : uint8_t { kHost, kBaseline };
const char* to_string(CpuModel model);
std::optional<CpuModel> parse_cpu_model(std::string_view name);

// Applies `model` to one CPUID leaf's output (eax, ebx, ecx, edx) in place.
void apply_cpu_model(CpuModel model, uint32_t function, uint32_t index, uint32_t regs[4]);

struct CpuidPolicy {
  uint32_t apic_id = 0;       // this vCPU (keel: APIC id == vCPU index)
  uint32_t vcpu_count = 1;    // one package, one core per vCPU, one thread per core
  bool tsc_deadline = false;  // the engine's LAPIC emulates the TSC-deadline timer
  CpuModel model = CpuModel::kHost;
};

// The entries for one vCPU. `supported` is what the engine can run.
std::vector<CpuidEntry> apply_cpuid_policy(std::span<const CpuidEntry> supported,
                                           const CpuidPolicy& policy);

// Lookup helper (first entry matching function and, where significant, index).
std::optional<CpuidEntry> find_cpuid(std::span<const CpuidEntry> entries, uint32_t function,
                                     uint32_t index = 0);

}  // namespace keel::x86
