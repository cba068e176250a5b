// Guest-virtual to guest-physical translation through the guest's own page tables, for
// diagnostics (the instruction bytes in an engine error message). Not an MMU: no access rights,
// no accessed/dirty bits, no TLB.
#pragma once

#include <cstdint>
#include <optional>
#include <span>

#include "arch/x86/cpu_state.h"
#include "memory/guest_memory.h"

namespace keel::x86 {

// Translates `va` with the paging mode in `state` (paging off, 32-bit, PAE, 4-level long mode).
// Returns nullopt if it is not mapped or a table lies outside guest RAM.
std::optional<uint64_t> translate(const GuestMemory& memory, const CpuState& state, uint64_t va);

// Reads up to out.size() bytes at `va`, page by page; returns how many could be read.
size_t read_virtual(const GuestMemory& memory, const CpuState& state, uint64_t va,
                    std::span<uint8_t> out);

}  // namespace keel::x86
