// Booting a disk image the way its own bootloader would, without firmware (as Xen's pygrub):
// read the partition table (boot/partition_table.h), find /boot on an ext2/3/4 partition (the
// root file system's /boot or a separate /boot partition), read its menu (BLS entries or
// grub.cfg, boot/boot_menu.h), pick the default entry or the one asked for, and read that
// entry's kernel and initrds (concatenated) from the partition its paths name.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "backends/block/block_backend.h"
#include "boot/boot_menu.h"

namespace keel::boot {

struct DiskBootEntry {
  BootMenu menu;
  size_t index = 0;
  std::string title;
  std::string where;        // "partition 2, /boot/grub/grub.cfg"
  std::string kernel_path;  // "partition 2: /boot/vmlinuz-6.1.0-18-amd64"
  std::vector<uint8_t> kernel;
  std::vector<uint8_t> initrd;
  std::string cmdline;
};

// Throws Error naming what is missing: no partition keel can read, no boot menu, a broken
// grub.cfg, no such entry (listing them), a kernel or initrd not found.
DiskBootEntry find_disk_boot(BlockBackend& disk, const std::string& selector);

}  // namespace keel::boot
