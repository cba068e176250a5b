// VmConfig: everything a Machine is built from. `keel run` fills it from its flags; the daemon
// fills it from a stored definition. Engineers adding a device family add its fields here.
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>

#include "engine/engine.h"
#include "engine/engine_factory.h"
#include "devices/virtio/virtio_platform.h"

namespace keel {

// What a guest panic (pvpanic) does: end the VMM (keel run: exit status 1), or pause the vCPUs and
// report it (GUEST_PANICKED on the control socket) for the daemon's on_crash to decide.
enum class PanicAction { kExit, kPause };

struct VmConfig {
  // What to boot: a Linux kernel (bzImage or ELF vmlinux) with an optional initramfs and command
  // line, or a purpose-built test guest (a flat binary entered in 64-bit mode, see
  // tests/guests/README.md). Exactly one of `kernel` and `test_guest` is set.
  std::filesystem::path kernel;
  std::filesystem::path initrd;
  std::string cmdline;
  std::filesystem::path test_guest;
  // Or boot the first disk as its own bootloader would (boot/disk_boot.h): the default entry of
  // its BLS entries or grub.cfg, or `boot_entry` (an index or a title). `cmdline`, when set,
  // replaces the entry's command line.
  enum class Boot { kKernel, kDisk } boot = Boot::kKernel;
  std::string boot_entry;

  std::string name;  // the VM's name (QMP query-name); "" for none

  uint64_t memory_bytes = 512ull << 20;
  uint32_t cpus = 1;
  Accel accel = Accel::kAuto;
  EmuTier emu_tier = EmuTier::kJit;  // emu only: the interpreter alone, or with translation
  uint32_t emu_hot_threshold = EngineConfig{}.emu_hot_threshold;
  x86::CpuModel cpu_model = x86::CpuModel::kHost;  // --cpu

  std::filesystem::path control_socket;  // empty: none (served by control/, issue 5)
  bool start_paused = false;             // vCPUs wait for resume() before their first instruction
  bool trace_boot = false;               // print boot-progress codes with timestamps on stderr
  bool verify_snapshot_memory = false;   // a restore reads the whole memory file and checks its CRC
  PanicAction on_panic = PanicAction::kExit;
  bool isa_debug_exit = false;           // QEMU's isa-debug-exit at port 0xF4 (test kernels)
  // Boot the Linux kernel through its PVH entry (boot/protected_mode_boot.h): an ELF vmlinux with
  // the Xen PHYS32_ENTRY note, or the vmlinux a bzImage's payload decompresses to.
  bool pvh = false;

  // PCI virtio devices: disks (vda, vdb, ...), networks, hvc0, entropy (issue 4).
  VirtioConfig virtio;

  // Checks what can be checked without touching the host (sizes, counts, exclusive fields).
  // Throws UsageError naming the field.
  void validate() const;
  // The part of validate() about sizes and counts only.
  void validate_resources() const;
};

// The checks of single fields, shared by keel run (its flags) and the daemon (a definition's
// fields), so `keel define` refuses what `keel start` would, with the same words. Each throws
// UsageError saying what is wrong with the value (the caller names the flag or field).
void validate_memory_size(uint64_t bytes);
// `accel` kAuto: the most either engine runs (the choice comes later).
void validate_vcpu_count(uint32_t cpus, Accel accel);

}  // namespace keel
