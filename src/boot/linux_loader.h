// Direct Linux boot (no firmware): puts a kernel (bzImage or ELF vmlinux), an initramfs and the
// command line into guest memory, fills the zero page (setup header, e820 map, ACPI RSDP address),
// writes the GDT and identity page tables (arch/x86/boot_state.h), and returns the 64-bit entry
// state for vCPU 0. Where everything goes: boot/memory_map.h.
//
// The machine calls, once, before starting vCPU 0:
//
//   auto acpi = x86::acpi::write_acpi_tables(memory, {.vcpus = n});       // optional
//   auto boot = boot::load_linux(memory, {.kernel = k, .initrd = i, .cmdline = c,
//                                         .acpi_rsdp_addr = acpi.rsdp});
//   vcpu0.set_state(boot.cpu_state);                  // RIP = entry, RSI = zero page, long mode
//
// Every failure throws keel::Error naming the file and the cause: a missing or unreadable file, a
// malformed kernel (kernel_image.h), a kernel or initrd that does not fit in guest RAM, a command
// line too long for the kernel. Guest memory may be partly written when it throws.
#pragma once

#include <cstdint>
#include <filesystem>
#include <span>
#include <string>
#include <vector>

#include "arch/x86/cpu_state.h"
#include "boot/kernel_image.h"
#include "memory/guest_memory.h"

namespace keel::boot {

struct LinuxBootSpec {
  std::filesystem::path kernel{};  // bzImage or ELF vmlinux
  std::filesystem::path initrd{};  // empty: no initramfs
  std::string cmdline{};
  uint64_t acpi_rsdp_addr = 0;    // 0: no ACPI tables (the kernel then scans for an RSDP)
  // Decompress a bzImage's payload on the host and boot the vmlinux inside it (kernel_payload.h);
  // the emu engine asks for it. Formats keel cannot decompress boot as a bzImage.
  bool decompress_on_host = false;
};

// One area of guest memory the boot path filled, for logs, tests and overlap checks.
struct BootRange {
  std::string what;  // "kernel", "initrd", "cmdline", "zero page", "page tables", ...
  uint64_t gpa = 0;
  uint64_t size = 0;
  uint64_t end() const { return gpa + size; }
};

struct LinuxBoot {
  KernelFormat format = KernelFormat::kBzImage;
  uint16_t protocol = 0;          // bzImage boot protocol version (0x020F = 2.15); 0 for ELF
  uint64_t entry = 0;             // RIP at entry
  uint64_t zero_page = 0;         // RSI at entry
  uint64_t stack = 0;             // RSP at entry
  uint64_t kernel_addr = 0;       // where the kernel's code was loaded
  uint64_t initrd_addr = 0, initrd_size = 0;
  std::string host_decompressed;  // the payload's format when it was decompressed on the host
  std::vector<BootRange> ranges;  // every area written, sorted by address
  x86::CpuState cpu_state;        // vCPU 0's entry state (long mode, RIP, RSI, RSP)
};

LinuxBoot load_linux(GuestMemory& memory, const LinuxBootSpec& spec);

// Checks a kernel image as load_linux() does before it places anything (a bzImage's or ELF
// vmlinux's headers) and returns the longest command line it accepts. Throws Error saying what is
// wrong. For checks made before a VM exists (the daemon's definitions).
uint32_t check_kernel_image(std::span<const uint8_t> kernel);

// The same from bytes already in memory (tests, fuzzing). `initrd` may be empty.
LinuxBoot load_linux_image(GuestMemory& memory, std::span<const uint8_t> kernel,
                           std::span<const uint8_t> initrd, const std::string& cmdline,
                           uint64_t acpi_rsdp_addr = 0, bool decompress_on_host = false);

}  // namespace keel::boot
