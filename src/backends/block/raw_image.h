// RawImage: a raw disk image file (or block device) opened for one guest disk.
//
// Opening checks what would otherwise fail late inside the guest (image_file.h: exists, readable,
// writable unless read-only, not locked by another keel). Every refusal names the path.
//
// A raw image whose format was detected rather than given (`probed`) guards its first sector as
// QEMU does: a guest write there that would make the file look like another format (a qcow2
// header naming a host file as its backing file, say) fails, so the next detection still says raw.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "backends/block/block_backend.h"
#include "backends/block/image_file.h"

namespace keel {

class RawImage : public BlockBackend {
 public:
  // Throws Error ("disk PATH: ...") when the image cannot be used.
  static std::unique_ptr<RawImage> open(const std::string& path, bool readonly, bool probed = false);
  // Wraps an open descriptor (a generated image, e.g. the cloud-init seed in a memfd).
  RawImage(std::string path, UniqueFd fd, uint64_t size, bool readonly, bool probed = false)
      : path_(std::move(path)), fd_(std::move(fd)), size_(size), readonly_(readonly), probed_(probed) {}

  int fd() const { return fd_.get(); }

  const std::string& path() const override { return path_; }
  ImageFormat format() const override { return ImageFormat::kRaw; }
  uint64_t size() const override { return size_; }
  bool readonly() const override { return readonly_; }
  int file_fd() const override { return fd_.get(); }
  int direct_fd(uint64_t offset, uint64_t length) const override;
  void read(uint64_t offset, std::span<const iovec> iov) override;
  void write(uint64_t offset, std::span<const iovec> iov) override;
  void flush() override;
  void discard(uint64_t offset, uint64_t length) override;
  void write_zeroes(uint64_t offset, uint64_t length, bool may_unmap) override;

 private:
  void check_first_sector(uint64_t offset, std::span<const iovec> iov) const;

  std::string path_;
  UniqueFd fd_;  // the OFD lock lives as long as this descriptor
  uint64_t size_;
  bool readonly_;
  bool probed_;
};

}  // namespace keel
