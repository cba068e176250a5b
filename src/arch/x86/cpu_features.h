// The CPU features a guest saw (the CPUID feature leaves), for restoring a snapshot on another
// engine: every named feature the guest saw must exist on the engine that continues it.
#pragma once

#include <span>
#include <string>
#include <vector>

#include "arch/x86/cpuid_policy.h"

namespace keel::x86 {

// The leaves compared: 1, 7 (sub-leaf 0) and 0x80000001.
inline constexpr uint32_t kFeatureLeaves[] = {1, 7, 0x8000'0001};

// The names (Linux's /proc/cpuinfo spelling) of the features set in `saw` and clear in `offered`.
// Only named features count: bits that follow the OS or the topology (OSXSAVE, the APIC bit, HTT,
// the hypervisor bit) are not features the guest depends on.
std::vector<std::string> missing_features(std::span<const CpuidEntry> saw,
                                          std::span<const CpuidEntry> offered);

}  // namespace keel::x86
