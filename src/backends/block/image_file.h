// Opening an image file the way every block backend does: exists, is a regular file or block
// device, is readable (and writable unless read-only), and is not in use by another keel. "In
// use" is an OFD lock on the whole file: a write lock for a read-write image, a read lock for a
// read-only one (a backing file), so images may be shared read-only but never while one writes.
#pragma once

#include <sys/uio.h>

#include <cstdint>
#include <span>
#include <string>

#include "base/fd.h"

namespace keel {

struct ImageFile {
  UniqueFd fd;
  uint64_t size = 0;
  uint64_t device = 0, inode = 0;  // identity, for backing-chain loop detection
};

// Throws Error("disk PATH: ...").
ImageFile open_image_file(const std::string& path, bool readonly);

// Full-length positional I/O: loops over short transfers; a read past the end of the file
// fills zeros. Throw Error naming `what` on failure.
void pread_all(int fd, void* data, uint64_t length, uint64_t offset, const std::string& what);
void pwrite_all(int fd, const void* data, uint64_t length, uint64_t offset, const std::string& what);
void preadv_all(int fd, std::span<const iovec> iov, uint64_t offset, const std::string& what);
void pwritev_all(int fd, std::span<const iovec> iov, uint64_t offset, const std::string& what);

}  // namespace keel
