#include "vm/default_guest.h"

#include <cstdlib>

#include "base/error.h"

namespace keel {

std::filesystem::path default_guest_dir() {
  if (const char* dir = std::getenv("KEEL_GUEST_DIR"); dir && *dir) return dir;
  return KEEL_DEFAULT_GUEST_DIR;
}

std::string default_cmdline(Accel accel) {
  // panic=-1: a panic the pvpanic device does not report (no driver yet) still ends the VM, by a
  // reset, instead of spinning a host core forever.
  return "console=ttyS0 reboot=k panic=-1 i8042.noaux i8042.nomux i8042.nopnp i8042.dumbkbd";
}

void apply_guest_defaults(VmConfig& config) {
  if (config.boot == VmConfig::Boot::kDisk) return;  // the disk's own entry says what to boot
  if (config.kernel.empty() && config.test_guest.empty()) {
    std::filesystem::path dir = default_guest_dir();
    config.kernel = dir / "vmlinuz";
    if (!std::filesystem::exists(config.kernel))
      throw Error("no --kernel given and the default guest is not built: " +
                  config.kernel.string() +
                  " does not exist (build it with scripts/build.sh or `ninja -C build "
                  "default-guest`, or point KEEL_GUEST_DIR at a directory holding vmlinuz and "
                  "initramfs.cpio.gz)");
    if (config.initrd.empty()) {
      std::filesystem::path initrd = dir / "initramfs.cpio.gz";
      if (std::filesystem::exists(initrd)) config.initrd = initrd;
    }
  }
  if (!config.kernel.empty() && config.cmdline.empty()) config.cmdline = default_cmdline(config.accel);
}

}  // namespace keel
