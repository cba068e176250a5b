// Booting kernels that start in 32-bit protected mode with an information structure in EBX:
// multiboot v1 (multiboot.h) and PVH (the Xen PHYS32_ENTRY ELF note, with struct hvm_start_info
// from Xen's public headers). Both put the kernel at its own physical addresses, the modules
// page-aligned after it, and the structures in keel's low boot area:
//
//   0x0000'0500  GDT (arch/x86/boot_state.h, 32-bit flat code 0x10, data 0x18, TSS 0x20)
//   0x0000'9000  the information structure, then the memory map and the module list (4 KiB)
//   0x0002'0000  the command line, then each module's command line (64 KiB in all)
//   0x0010'0000- the kernel (segments must lie at or above 1 MiB), then the modules
//
// Every failure throws keel::Error naming the kernel or module and the cause.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "arch/x86/cpu_state.h"
#include "boot/linux_loader.h"
#include "boot/multiboot.h"
#include "memory/guest_memory.h"

namespace keel::boot {

inline constexpr uint64_t kBootInfoAddr = 0x9000;
inline constexpr uint64_t kBootInfoSize = 0x1000;
inline constexpr uint64_t kBootStringsAddr = 0x20000;
inline constexpr uint64_t kBootStringsSize = 0x10000;
inline constexpr size_t kMaxBootModules = 32;

struct ProtectedModeBoot {
  std::string protocol;  // "multiboot" or "PVH"
  uint64_t entry = 0;
  uint64_t info_addr = 0;  // EBX at entry
  struct Placed {
    uint64_t gpa, size;
  };
  std::vector<Placed> modules;    // in the order given
  std::vector<BootRange> ranges;  // every area written, sorted by address
  x86::CpuState cpu_state;
};

// A multiboot kernel (parse_multiboot). The command line is passed as given (callers that want
// QEMU's behaviour prepend the kernel's path, as kvm-unit-tests expects for argv[0]).
ProtectedModeBoot load_multiboot(GuestMemory& memory, std::span<const uint8_t> kernel,
                                 const std::string& kernel_name,
                                 const std::vector<BootModule>& modules, const std::string& cmdline);

// An ELF kernel with a PVH entry note (ElfKernel::pvh_entry). `rsdp` is the ACPI RSDP (0: none).
ProtectedModeBoot load_pvh(GuestMemory& memory, std::span<const uint8_t> kernel,
                           const std::string& kernel_name, const std::vector<BootModule>& modules,
                           const std::string& cmdline, uint64_t rsdp);

}  // namespace keel::boot
