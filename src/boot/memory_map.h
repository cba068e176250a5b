// keel's guest-physical memory map for direct Linux boot (docs/architecture.md, "Boot path").
//
//   0x0000'0500 - 0x0000'052F  GDT                      arch/x86/boot_state.h
//   0x0000'7000 - 0x0000'7FFF  zero page (boot_params)  RSI at entry
//   0x0000'8000 - 0x0000'8FFF  boot stack               RSP at entry = 0x8FF0
//   0x0000'9000 - 0x0000'EFFF  identity page tables     arch/x86/boot_state.h
//   0x0002'0000 - 0x0002'FFFF  kernel command line
//   0x000A'0000 - 0x000F'FFFF  reserved (e820): VGA/BIOS area; ACPI tables at 0xE0000
//                              (arch/x86/acpi/acpi_tables.h)
//   0x0010'0000 -              kernel: bzImage protected-mode code at 1 MiB, or at pref_address
//                              (16 MiB for Debian's) when relocatable and it fits; ELF segments
//                              at their physical addresses
//   (below min(initrd_addr_max, top of low RAM))  initramfs, page-aligned, as high as it fits
//   0xC000'0000 - 0xFEBF'FFFF  32-bit PCI MMIO window: left out of e820 (see build_e820)
//   0xFEC0'0000 - 0xFFFF'FFFF  reserved (e820): IOAPIC 0xFEC00000, LAPIC 0xFEE00000
//   0x1'0000'0000 -            RAM above 4 GiB (memory/guest_memory.h)
#pragma once

#include <cstdint>
#include <vector>

#include "boot/boot_params.h"
#include "memory/guest_memory.h"

namespace keel::boot {

inline constexpr uint64_t kZeroPageAddr = 0x7000;
inline constexpr uint64_t kBootStackBottom = 0x8000;
inline constexpr uint64_t kBootStackPointer = 0x8FF0;
inline constexpr uint64_t kCmdlineAddr = 0x20000;
inline constexpr uint64_t kCmdlineMax = 0x10000;          // bytes reserved, with the NUL
inline constexpr uint64_t kLowReservedStart = 0xA0000;    // legacy VGA + BIOS area
inline constexpr uint64_t kLowReservedEnd = 0x100000;
inline constexpr uint64_t kKernelLowAddr = 0x100000;      // 1 MiB, where a bzImage loads by default
inline constexpr uint64_t kPlatformMmioStart = 0xFEC0'0000;  // IOAPIC, LAPIC, ... up to 4 GiB

// The e820 map keel gives Linux for `memory`: RAM below 0xA0000, the legacy area reserved, RAM
// from 1 MiB to the top of the low region, the platform MMIO range [0xFEC00000, 4 GiB) reserved,
// and RAM above 4 GiB. The PCI part of the 3-4 GiB hole is deliberately *not* marked reserved:
// Linux clips PCI host-bridge windows (_CRS) against e820 reservations, so reserving the whole
// hole would leave no room for BARs; a gap is what real firmware and QEMU report.
std::vector<E820Entry> build_e820(const GuestMemory& memory);

}  // namespace keel::boot
