// Puts the guest a VmConfig names into guest memory and returns each vCPU's entry state.
#pragma once

#include <cstdint>
#include <vector>

#include "arch/x86/cpu_state.h"
#include "backends/block/block_backend.h"
#include "memory/guest_memory.h"
#include "vm/vm_config.h"

namespace keel {

class FwCfg;

struct GuestImage {
  GuestMemory& memory;
  const VmConfig& config;
  uint32_t vcpus;
  // AML device descriptions for the DSDT's \_SB scope (Linux guests only).
  const std::vector<std::vector<uint8_t>>& acpi_devices;
  // Linux only: decompress a bzImage's kernel on the host (boot/kernel_payload.h). The emu engine
  // wants it: its interpreter would spend seconds in the in-guest decompressor.
  bool decompress_on_host = false;
  // VmConfig::Boot::kDisk: the disk to read /boot from (vda).
  BlockBackend* boot_disk = nullptr;
  // Filled with the Linux kernel, initrd and command line when set.
  FwCfg* fw_cfg = nullptr;
};

// A purpose-built test guest (tests/guests/README.md): the flat binary at kTestGuestLoadAddr,
// every vCPU entered there in 64-bit mode with RDI = its index, RSI = the vCPU count and its own
// stack. Returns one state per vCPU.
inline constexpr uint64_t kTestGuestLoadAddr = 0x100000;
inline constexpr uint64_t kTestGuestStackTop = 0x80000;
inline constexpr uint64_t kTestGuestStackSize = 0x4000;
// Port a test guest writes its status to (8-bit): `keel run --test-guest` ends with it.
inline constexpr uint16_t kTestGuestExitPort = 0x504;
std::vector<x86::CpuState> load_test_guest(GuestImage& image);

// A Linux kernel with its initramfs and command line, and the ACPI tables. Returns vCPU 0's
// state; the others start through INIT/SIPI. A multiboot or PVH kernel (boot/multiboot.h,
// boot/protected_mode_boot.h) boots through its 32-bit entry instead, with `initrd` as its
// modules (one file, or QEMU's list "file args,file args"); a multiboot kernel's command line
// starts with its path, as QEMU gives it.
std::vector<x86::CpuState> load_linux_guest(GuestImage& image);

}  // namespace keel
