#include "backends/block/raw_image.h"

#include <fcntl.h>
#include <linux/falloc.h>
#include <unistd.h>

#include <cstring>
#include <vector>

#include "backends/block/image_format.h"
#include "base/error.h"

namespace keel {

std::unique_ptr<RawImage> RawImage::open(const std::string& path, bool readonly, bool probed) {
  ImageFile f = open_image_file(path, readonly);
  return std::make_unique<RawImage>(path, std::move(f.fd), f.size, readonly, probed);
}

int RawImage::direct_fd(uint64_t offset, uint64_t length) const {
  if (probed_ && !readonly_ && offset < kProbeBytes && length) return -1;  // check_first_sector
  return fd_.get();
}

void RawImage::read(uint64_t offset, std::span<const iovec> iov) {
  preadv_all(fd_.get(), iov, offset, "disk " + path_);
}

void RawImage::check_first_sector(uint64_t offset, std::span<const iovec> iov) const {
  if (!probed_ || offset >= kProbeBytes) return;
  // What the first kProbeBytes would hold after this write.
  std::vector<uint8_t> head(kProbeBytes);
  pread_all(fd_.get(), head.data(), head.size(), 0, "disk " + path_);
  uint64_t at = offset;
  for (const auto& v : iov) {
    if (at >= kProbeBytes) break;
    uint64_t n = std::min<uint64_t>(v.iov_len, kProbeBytes - at);
    std::memcpy(head.data() + at, v.iov_base, n);
    at += n;
  }
  DetectedFormat d = detect_image_format(head, size_);
  if (d.format != ImageFormat::kRaw)
    throw Error("disk " + path_ + ": refused a guest write that would make this probed raw image "
                "look like " + d.name + " (give format=raw to allow it)");
}

void RawImage::write(uint64_t offset, std::span<const iovec> iov) {
  if (readonly_) throw Error("disk " + path_ + ": read-only");
  check_first_sector(offset, iov);
  pwritev_all(fd_.get(), iov, offset, "disk " + path_);
}

void RawImage::flush() {
  if (::fdatasync(fd_.get()) != 0) throw_errno("disk " + path_ + ": fdatasync");
}

void RawImage::discard(uint64_t offset, uint64_t length) {
  if (readonly_) throw Error("disk " + path_ + ": read-only");
  // A hole reads as zeros; file systems without hole punching simply keep the data.
  if (::fallocate(fd_.get(), FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, static_cast<off_t>(offset),
                  static_cast<off_t>(length)) != 0 &&
      errno != EOPNOTSUPP)
    throw_errno("disk " + path_ + ": discard at offset " + std::to_string(offset));
}

void RawImage::write_zeroes(uint64_t offset, uint64_t length, bool may_unmap) {
  if (readonly_) throw Error("disk " + path_ + ": read-only");
  int mode = may_unmap ? FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE
                       : FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE;
  if (::fallocate(fd_.get(), mode, static_cast<off_t>(offset), static_cast<off_t>(length)) == 0) return;
  if (errno != EOPNOTSUPP) throw_errno("disk " + path_ + ": write zeroes at offset " + std::to_string(offset));
  static constexpr size_t kChunk = 1 << 20;
  std::vector<uint8_t> zeros(std::min<uint64_t>(length, kChunk));
  while (length) {
    uint64_t n = std::min<uint64_t>(length, zeros.size());
    pwrite_all(fd_.get(), zeros.data(), n, offset, "disk " + path_);
    offset += n;
    length -= n;
  }
}

}  // namespace keel
