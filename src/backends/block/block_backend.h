// BlockBackend: one guest disk as the block devices see it, whatever the image format.
//
// A backend is used by one thread at a time (the disk's virtio-blk worker; the disk-boot reader
// before the guest starts). Offsets and lengths are bytes of the guest-visible disk; callers
// keep requests inside size(). Failures throw Error naming the image and the cause.
//
// Raw images expose their file descriptor through direct_fd() so virtio-blk can keep its
// io_uring fast path (reads and writes straight between the file and guest RAM); formats with
// their own mapping (qcow2) return -1 and are driven through read()/write().
#pragma once

#include <sys/uio.h>

#include <cstdint>
#include <memory>
#include <span>
#include <string>

namespace keel {

enum class ImageFormat { kAuto, kRaw, kQcow2 };

const char* to_string(ImageFormat format);
// "raw" / "qcow2" (and "auto"); throws UsageError naming the others.
ImageFormat parse_image_format(const std::string& text);

class BlockBackend {
 public:
  virtual ~BlockBackend() = default;

  virtual const std::string& path() const = 0;
  virtual ImageFormat format() const = 0;
  virtual uint64_t size() const = 0;  // guest-visible bytes
  virtual bool readonly() const = 0;
  // The image file's descriptor (its top layer's, for qcow2), for fstat: snapshots record the
  // file's size from it, as a confined VMM cannot stat the path.
  virtual int file_fd() const { return -1; }

  // A descriptor whose bytes at [offset, offset + length) are the disk's own bytes at the same
  // offsets, or -1 when this range must go through read()/write().
  virtual int direct_fd(uint64_t offset, uint64_t length) const { return -1; }

  virtual void read(uint64_t offset, std::span<const iovec> iov) = 0;
  virtual void write(uint64_t offset, std::span<const iovec> iov) = 0;
  // Makes every completed write durable.
  virtual void flush() = 0;
  // The guest no longer needs [offset, offset + length): the backend may free it (reads of it
  // then return zeros or the old data). Only whole granules are freed.
  virtual void discard(uint64_t offset, uint64_t length) = 0;
  // [offset, offset + length) reads as zeros afterwards; `may_unmap` lets the backend free it.
  virtual void write_zeroes(uint64_t offset, uint64_t length, bool may_unmap) = 0;
  // The unit discard frees (the qcow2 cluster size, the file system block for raw).
  virtual uint32_t discard_granularity() const { return 4096; }

  // Convenience for callers with one flat buffer.
  void read_bytes(uint64_t offset, void* data, uint64_t length) {
    iovec v{data, length};
    read(offset, {&v, 1});
  }
  void write_bytes(uint64_t offset, const void* data, uint64_t length) {
    iovec v{const_cast<void*>(data), length};
    write(offset, {&v, 1});
  }
};

// Opens a disk image: `format` kAuto detects it from the header (image_format.h); an image in
// a format keel does not read is refused naming the format and the qemu-img command that
// converts it. Throws Error ("disk PATH: ...").
std::unique_ptr<BlockBackend> open_block_backend(const std::string& path, ImageFormat format,
                                                 bool readonly);

}  // namespace keel
