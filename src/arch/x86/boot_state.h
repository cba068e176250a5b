// The 64-bit entry state both engines start a guest in: a GDT and identity-mapped page tables in
// low guest memory, and the matching register state (long mode, paging on, interrupts off).
//
// Used for the Linux 64-bit boot protocol (RSI = zero page, CS = __BOOT_CS 0x10, DS/ES/SS =
// __BOOT_DS 0x18, all flat) and for the purpose-built test guests.
//
// Low-memory map (guest-physical), documented in docs/architecture.md:
//   0x0500 - 0x052F  GDT: null, null, code 0x10, data 0x18, TSS 0x20 (16 bytes)
//   0x9000 - 0x9FFF  PML4 (entry 0 -> PDPT)
//   0xA000 - 0xAFFF  PDPT (entries 0..3 -> the four PDs)
//   0xB000 - 0xEFFF  4 PDs of 512 2 MiB pages each: identity map of [0, 4 GiB)
#pragma once

#include <cstdint>

#include "arch/x86/cpu_state.h"
#include "memory/guest_memory.h"

namespace keel::x86 {

inline constexpr uint64_t kBootGdtAddr = 0x500;
inline constexpr uint16_t kBootGdtLimit = 0x2F;  // 6 slots of 8 bytes (the TSS takes two)
inline constexpr uint64_t kBootPml4Addr = 0x9000;
inline constexpr uint64_t kBootPdptAddr = 0xA000;
inline constexpr uint64_t kBootPdAddr = 0xB000;
inline constexpr uint64_t kBootPdCount = 4;
inline constexpr uint64_t kBootTablesEnd = kBootPdAddr + kBootPdCount * 0x1000;  // 0xF000
inline constexpr uint64_t kBootIdentityMapSize = kBootPdCount << 30;             // 4 GiB

inline constexpr uint16_t kBootCodeSelector = 0x10;  // __BOOT_CS
inline constexpr uint16_t kBootDataSelector = 0x18;  // __BOOT_DS
inline constexpr uint16_t kBootTssSelector = 0x20;

// Control-register and EFER bits the entry state uses.
inline constexpr uint64_t kCr0PE = 1ull << 0;
inline constexpr uint64_t kCr0MP = 1ull << 1;
inline constexpr uint64_t kCr0ET = 1ull << 4;
inline constexpr uint64_t kCr0NE = 1ull << 5;
inline constexpr uint64_t kCr0PG = 1ull << 31;
inline constexpr uint64_t kCr4PAE = 1ull << 5;
inline constexpr uint64_t kEferLME = 1ull << 8;
inline constexpr uint64_t kEferLMA = 1ull << 10;

inline constexpr uint64_t kApicBaseDefault = 0xFEE0'0000;
inline constexpr uint64_t kApicBaseBsp = 1ull << 8;
inline constexpr uint64_t kApicBaseEnable = 1ull << 11;

// Page-table entry bits.
inline constexpr uint64_t kPtePresent = 1ull << 0;
inline constexpr uint64_t kPteWritable = 1ull << 1;
inline constexpr uint64_t kPteLarge = 1ull << 7;

struct BootEntry {
  uint64_t rip = 0;
  uint64_t rsp = 0;
  uint64_t rsi = 0;   // Linux: the zero page (struct boot_params)
  bool bsp = true;    // sets IA32_APIC_BASE.BSP
};

// Encodes a code/data segment as an 8-byte GDT descriptor, or a system segment (TSS) as the low
// 8 bytes of its 16-byte descriptor.
uint64_t encode_descriptor(const Segment& seg);

// The flat segments of the entry state.
Segment boot_code_segment();
Segment boot_data_segment();
Segment boot_tss_segment();

// Writes the GDT and the page tables at the addresses above. Throws GuestMemoryError if guest RAM
// does not cover them.
void write_boot_tables(GuestMemory& memory);

// The register state for entering at `entry` in 64-bit mode with the tables above.
CpuState boot_cpu_state(const BootEntry& entry);

// Both of the above.
CpuState setup_long_mode(GuestMemory& memory, const BootEntry& entry);

// The 32-bit protected-mode entry of multiboot and PVH kernels: paging off, CS a flat 32-bit
// code segment (selector 0x10), DS/ES/FS/GS/SS flat data (0x18), TR a busy 32-bit TSS (0x20, as
// PVH requires), interrupts off, EIP = `eip`, every other register 0. Writes the matching GDT at
// kBootGdtAddr (a kernel may reload its segments from it before installing its own).
Segment protected_mode_code_segment();
CpuState setup_protected_mode(GuestMemory& memory, uint32_t eip);

}  // namespace keel::x86
