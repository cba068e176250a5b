// Parsers for the two kernel formats keel boots: a bzImage (Linux x86 boot protocol 2.06 or
// newer, with the 64-bit entry) and an ELF64 x86-64 vmlinux. Both work on untrusted bytes: every
// offset and size is checked against the image before use, and a malformed image throws Error
// saying what is wrong (never reads outside the span). Loading into guest memory is
// linux_loader.h's job; these only describe the image.
#pragma once

#include <cstdint>
#include <optional>
#include <span>
#include <vector>

#include "boot/boot_params.h"

namespace keel::boot {

enum class KernelFormat { kBzImage, kElf };

// ELF magic -> kElf, anything else -> kBzImage (whose parser then says what is wrong).
KernelFormat detect_kernel_format(std::span<const uint8_t> image);

struct BzImage {
  SetupHeader header{};        // the image's setup header (fields past its end read as zero)
  uint64_t header_end = 0;     // file offset one past the setup header (0x202 + jump offset)
  uint64_t kernel_offset = 0;  // file offset of the protected-mode code
  uint64_t kernel_size = 0;    // bytes of protected-mode code (the rest of the file)

  uint16_t protocol() const { return header.version; }
  bool relocatable() const { return header.relocatable_kernel != 0; }
};

// Throws Error if the image is truncated, has no "HdrS" magic, speaks a boot protocol older than
// 2.06, lacks the 64-bit entry point (XLF_KERNEL_64), or has inconsistent sizes.
BzImage parse_bzimage(std::span<const uint8_t> image);

struct ElfSegment {
  uint64_t file_offset = 0;
  uint64_t file_size = 0;
  uint64_t paddr = 0;      // guest-physical load address
  uint64_t mem_size = 0;   // >= file_size; the rest is zero-filled
};

struct ElfKernel {
  std::vector<ElfSegment> segments;  // PT_LOAD segments, sorted by paddr, non-overlapping
  uint64_t entry = 0;                // physical entry address (inside a segment)
  uint64_t lowest = 0;               // lowest paddr of any segment
  uint64_t end = 0;                  // one past the highest paddr + mem_size
  bool is64 = true;                  // ELF64 (else ELF32)
  uint16_t machine = 0;              // e_machine: EM_X86_64 (62) or EM_386 (3)
  // The PVH entry (the Xen PHYS32_ENTRY note, a physical address inside a segment), when present.
  std::optional<uint64_t> pvh_entry;
};

// Throws Error unless the image is an ELF64 little-endian x86-64 executable whose PT_LOAD
// segments lie inside the file, do not overlap, and contain the entry point (e_entry, taken as
// physical, or as virtual and converted through the segment that holds it).
ElfKernel parse_elf_kernel(std::span<const uint8_t> image);

// The same checks for an ELF32 or ELF64 image for x86-64 or i386 (multiboot and PVH kernels),
// plus the PVH note: one whose value is not 4 or 8 bytes, or that points outside the loadable
// segments, is refused.
ElfKernel parse_any_elf(std::span<const uint8_t> image);

}  // namespace keel::boot
