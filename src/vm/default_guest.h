// The default guest `keel run` boots when no kernel is given (DESIGN.md, "The default guest"),
// built by scripts/build-default-guest.sh: DIR/vmlinuz and DIR/initramfs.cpio.gz, where DIR is
// $KEEL_GUEST_DIR or the build's KEEL_DEFAULT_GUEST_DIR.
#pragma once

#include <filesystem>
#include <string>

#include "engine/engine.h"
#include "vm/vm_config.h"

namespace keel {

std::filesystem::path default_guest_dir();

// The kernel command line used when none is given: the serial console, resets through the
// keyboard controller (keel ends on reset), no probing for PS/2 devices keel does not have. No
// mitigations=off on emu: its CPU model tells the kernel it has no speculation flaws
// (IA32_ARCH_CAPABILITIES), so the kernel turns the costly mitigations off by itself, as it
// would with a distribution's own command line.
std::string default_cmdline(Accel accel);

// Fills in what the user left out: with no kernel and no test guest, the default guest's kernel
// and initramfs; with no command line for a kernel, default_cmdline(). `accel` must be resolved
// (kvm or emu). Throws Error naming the missing file when the default guest is not built.
void apply_guest_defaults(VmConfig& config);

}  // namespace keel
