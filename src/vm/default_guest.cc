#include "vm/default_guest.h"

#include <algorithm>
#include <cstdlib>
#include <fstream>
#include <vector>

#include "base/error.h"
#include "boot/multiboot.h"

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

namespace {

// From the first 8 KiB, which decide it (boot/multiboot.h); an unreadable file counts as Linux
// and fails later with its own message.
bool is_linux_kernel(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  std::vector<uint8_t> head(boot::kMultibootSearchLimit);
  in.read(reinterpret_cast<char*>(head.data()), static_cast<std::streamsize>(head.size()));
  head.resize(static_cast<size_t>(std::max<std::streamsize>(in.gcount(), 0)));
  return boot::detect_boot_protocol(head) == boot::BootProtocol::kLinux;
}

}  // namespace

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
  // Linux's console arguments would be a test kernel's arguments: multiboot and PVH kernels get none.
  if (!config.kernel.empty() && config.cmdline.empty() && is_linux_kernel(config.kernel))
    config.cmdline = default_cmdline(config.accel);
}

}  // namespace keel
