// RawImage: a raw disk image file (or block device) opened for one guest disk.
//
// Opening checks what would otherwise fail late inside the guest: the file must exist, be readable
// (and writable unless read-only), and not be in use by another keel. "In use" is an OFD lock on
// the whole file: a write lock for a read-write disk, a read lock for a read-only one, so two VMs
// may share a read-only image but never a writable one. Every refusal names the path.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "base/fd.h"

namespace keel {

class RawImage {
 public:
  // Throws Error ("disk PATH: ...") when the image cannot be used.
  static std::unique_ptr<RawImage> open(const std::string& path, bool readonly);

  int fd() const { return fd_.get(); }
  uint64_t size() const { return size_; }
  bool readonly() const { return readonly_; }
  const std::string& path() const { return path_; }

 private:
  RawImage(std::string path, UniqueFd fd, uint64_t size, bool readonly)
      : path_(std::move(path)), fd_(std::move(fd)), size_(size), readonly_(readonly) {}

  std::string path_;
  UniqueFd fd_;  // the OFD lock lives as long as this descriptor
  uint64_t size_;
  bool readonly_;
};

}  // namespace keel
