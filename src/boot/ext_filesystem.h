// ExtFilesystem: an ext2/3/4 file system inside a disk image, read-only, through libext2fs (from
// e2fsprogs) with an io_manager that reads the disk's BlockBackend at the partition's offset, so
// /boot is read the same way from raw and qcow2 images. Symlinks are followed inside the file
// system (Debian's /vmlinuz, /boot/vmlinuz).
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "backends/block/block_backend.h"

struct struct_ext2_filsys;

namespace keel::boot {

class ExtFilesystem {
 public:
  // True when the partition starts with an ext2/3/4 superblock.
  static bool probe(BlockBackend& disk, uint64_t offset, uint64_t size);
  // Throws Error when libext2fs cannot open it.
  ExtFilesystem(BlockBackend& disk, uint64_t offset, uint64_t size);
  ~ExtFilesystem();
  ExtFilesystem(const ExtFilesystem&) = delete;
  ExtFilesystem& operator=(const ExtFilesystem&) = delete;

  bool is_file(const std::string& path);
  bool is_directory(const std::string& path);
  // A regular file's contents; Error when missing or larger than `max_bytes`.
  std::vector<uint8_t> read_file(const std::string& path, uint64_t max_bytes);
  // Names in a directory (without . and ..), sorted.
  std::vector<std::string> list(const std::string& path);
  // The file system UUID as GRUB prints it (8-4-4-4-12 lower-case hex).
  std::string uuid() const;

  struct Channel;  // the io_manager's view of the partition

 private:
  std::optional<unsigned> lookup(const std::string& path);  // inode, symlinks followed

  Channel* channel_;
  struct_ext2_filsys* fs_ = nullptr;
  std::string name_;
};

}  // namespace keel::boot
