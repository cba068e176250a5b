#include "arch/x86/page_walk.h"

#include <algorithm>

namespace keel::x86 {

namespace {

constexpr uint64_t kCr0PagingBit = 1ull << 31;
constexpr uint64_t kCr4PaeBit = 1ull << 5;
constexpr uint64_t kCr4PseBit = 1ull << 4;
constexpr uint64_t kEferLmaBit = 1ull << 10;
constexpr uint64_t kAddrMask = 0x000F'FFFF'FFFF'F000ull;

std::optional<uint64_t> load_entry(const GuestMemory& memory, uint64_t gpa, unsigned size) {
  if (!memory.contains(gpa, size)) return std::nullopt;
  return size == 8 ? memory.read_obj<uint64_t>(gpa) : memory.read_obj<uint32_t>(gpa);
}

}  // namespace

std::optional<uint64_t> translate(const GuestMemory& memory, const CpuState& state, uint64_t va) {
  if (!(state.cr0 & kCr0PagingBit)) return va & 0xFFFF'FFFFull;

  if (!(state.cr4 & kCr4PaeBit)) {  // 32-bit paging
    uint32_t addr = static_cast<uint32_t>(va);
    auto pde = load_entry(memory, (state.cr3 & 0xFFFF'F000) + 4 * (addr >> 22), 4);
    if (!pde || !(*pde & 1)) return std::nullopt;
    if ((*pde & 0x80) && (state.cr4 & kCr4PseBit))
      return (*pde & 0xFFC0'0000) | (((*pde >> 13) & 0xFF) << 32) | (addr & 0x3F'FFFF);
    auto pte = load_entry(memory, (*pde & 0xFFFF'F000) + 4 * ((addr >> 12) & 0x3FF), 4);
    if (!pte || !(*pte & 1)) return std::nullopt;
    return (*pte & 0xFFFF'F000) | (addr & 0xFFF);
  }

  // PAE (3 levels, 32-bit VA) or 4-level long mode; the shift of the first level differs.
  bool long_mode = state.efer & kEferLmaBit;
  uint64_t table;
  int shift;
  if (long_mode) {
    table = state.cr3 & kAddrMask;
    shift = 39;
  } else {
    va &= 0xFFFF'FFFF;
    auto pdpte = load_entry(memory, (state.cr3 & 0xFFFF'FFE0) + 8 * (va >> 30), 8);
    if (!pdpte || !(*pdpte & 1)) return std::nullopt;
    table = *pdpte & kAddrMask;
    shift = 21;
  }
  for (; shift >= 12; shift -= 9) {
    auto entry = load_entry(memory, table + 8 * ((va >> shift) & 0x1FF), 8);
    if (!entry || !(*entry & 1)) return std::nullopt;
    uint64_t page_mask = (1ull << shift) - 1;
    if (shift == 12 || ((*entry & 0x80) && shift <= 30))
      return ((*entry & kAddrMask) & ~page_mask) | (va & page_mask);
    table = *entry & kAddrMask;
  }
  return std::nullopt;
}

size_t read_virtual(const GuestMemory& memory, const CpuState& state, uint64_t va,
                    std::span<uint8_t> out) {
  size_t done = 0;
  while (done < out.size()) {
    uint64_t cur = va + done;
    size_t chunk = std::min<uint64_t>(out.size() - done, 0x1000 - (cur & 0xFFF));
    auto gpa = translate(memory, state, cur);
    if (!gpa || !memory.contains(*gpa, chunk)) break;
    memory.read(*gpa, out.data() + done, chunk);
    done += chunk;
  }
  return done;
}

}  // namespace keel::x86
