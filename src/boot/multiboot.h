// Multiboot v1 kernels (the Multiboot Specification 0.6.96, section 3): the header a kernel
// carries in its first 8 KiB, and the loader that puts it into guest memory with the multiboot
// information structure (memory map, command line, modules) and returns its 32-bit protected-mode
// entry state (EAX = 0x2BADB002, EBX = the information structure). kvm-unit-tests' x86 tests are
// such kernels (ELF32), as are many hobby and test kernels (often a.out-kludge flat binaries).
//
// Untrusted bytes: every header field is checked before use and a malformed kernel throws Error
// saying what is wrong. The spec ships no header in Debian, so its structures are declared here.
#pragma once

#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "boot/kernel_image.h"

namespace keel::boot {

inline constexpr uint32_t kMultibootMagic = 0x1BADB002;         // in the kernel's header
inline constexpr uint32_t kMultibootBootloaderMagic = 0x2BADB002;  // EAX at entry
inline constexpr uint64_t kMultibootSearchLimit = 8192;         // the header lies in the first 8 KiB

// Header flags (spec 3.1.2). Bits 0-15 are requirements the loader must meet or refuse.
inline constexpr uint32_t kMbPageAlignModules = 1u << 0;
inline constexpr uint32_t kMbMemoryInfo = 1u << 1;
inline constexpr uint32_t kMbVideoMode = 1u << 2;
inline constexpr uint32_t kMbAoutKludge = 1u << 16;

// Information structure flags (spec 3.3): which fields are valid.
inline constexpr uint32_t kMbiMemory = 1u << 0;
inline constexpr uint32_t kMbiCmdline = 1u << 2;
inline constexpr uint32_t kMbiModules = 1u << 3;
inline constexpr uint32_t kMbiMemoryMap = 1u << 6;
inline constexpr uint32_t kMbiBootloaderName = 1u << 9;

struct MultibootHeader {
  uint32_t magic, flags, checksum;
  // Valid with kMbAoutKludge: where the file goes, without relying on an ELF header.
  uint32_t header_addr, load_addr, load_end_addr, bss_end_addr, entry_addr;
};

// The multiboot information structure, as far as keel fills it (spec 3.3: up to `mmap_addr`,
// then the fields keel leaves zero, up to the boot loader name).
struct MultibootInfo {
  uint32_t flags;
  uint32_t mem_lower, mem_upper;  // KiB below 640 KiB / above 1 MiB up to the first hole
  uint32_t boot_device;
  uint32_t cmdline;
  uint32_t mods_count, mods_addr;
  uint32_t syms[4];
  uint32_t mmap_length, mmap_addr;
  uint32_t drives_length, drives_addr;
  uint32_t config_table;
  uint32_t boot_loader_name;
};
static_assert(sizeof(MultibootInfo) == 68);

struct MultibootModule {
  uint32_t mod_start, mod_end, string, reserved;
};

#pragma pack(push, 1)
struct MultibootMmapEntry {
  uint32_t size;  // of the rest of the entry: 20
  uint64_t base_addr, length;
  uint32_t type;  // 1 = RAM, 3 = ACPI, 4 = NVS, other = reserved (e820 types)
};
#pragma pack(pop)
static_assert(sizeof(MultibootMmapEntry) == 24);

// The header's file offset and contents, if the first 8 KiB hold one (magic at a 4-byte aligned
// offset, magic + flags + checksum == 0). Never throws.
struct FoundMultibootHeader {
  uint64_t offset = 0;
  MultibootHeader header{};
};
std::optional<FoundMultibootHeader> find_multiboot_header(std::span<const uint8_t> image);

// Where a multiboot kernel's bytes go: ELF32 segments, or the a.out-kludge range.
struct MultibootKernel {
  MultibootHeader header{};
  std::vector<ElfSegment> segments;  // sorted by paddr
  uint64_t entry = 0;
  uint64_t end = 0;  // one past the highest byte loaded or zeroed
};

// Throws Error if there is no header, it asks for a feature keel does not provide (flag bits
// 3-15), the a.out-kludge addresses are inconsistent or point outside the file, or (without the
// kludge) the image is not an ELF32 executable. Everything must lie below 4 GiB.
MultibootKernel parse_multiboot(std::span<const uint8_t> image);

// Which entry protocol a kernel speaks, from its bytes. An ELF32 image boots through PVH when it
// has the PVH note (or its ELF headers are broken and it has no multiboot header: the PVH loader
// then says what is wrong), else through multiboot; a non-ELF image with a multiboot header and
// no bzImage "HdrS" magic, or an ELF64 one whose header sets the a.out kludge, through multiboot;
// everything else is Linux (bzImage, or an ELF64 vmlinux through its 64-bit entry, even when it
// also has a PVH note). The first 8 KiB decide between Linux and the others.
enum class BootProtocol { kLinux, kMultiboot, kPvh };
BootProtocol detect_boot_protocol(std::span<const uint8_t> image);
const char* boot_protocol_name(BootProtocol p);

// A module (an initrd-style file) with its command line.
struct BootModule {
  std::string name;  // for messages
  std::vector<uint8_t> bytes;
  std::string cmdline;
};

// QEMU's -initrd syntax for multiboot modules: "file1 args,file2 args" (",," is a literal
// comma). Each entry's first word is its path; the module's command line is the whole entry.
struct ModuleSpec {
  std::string path, cmdline;
};
std::vector<ModuleSpec> parse_module_list(const std::string& list);

}  // namespace keel::boot
