#include "backends/block/image_file.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>
#include <climits>

#include <cstring>
#include <vector>

#include "base/error.h"

namespace keel {

ImageFile open_image_file(const std::string& path, bool readonly) {
  std::string what = "disk " + path;
  ImageFile f;
  f.fd.reset(::open(path.c_str(), (readonly ? O_RDONLY : O_RDWR) | O_CLOEXEC));
  if (!f.fd) throw_errno(what + ": cannot open" + (readonly ? "" : " for reading and writing"));
  struct stat st;
  if (::fstat(f.fd.get(), &st) != 0) throw_errno(what + ": fstat");
  if (!S_ISREG(st.st_mode) && !S_ISBLK(st.st_mode))
    throw Error(what + ": not a regular file or block device");
  f.device = st.st_dev;
  f.inode = st.st_ino;

  struct flock lock = {};
  lock.l_type = readonly ? F_RDLCK : F_WRLCK;
  lock.l_whence = SEEK_SET;  // l_start = l_len = 0: the whole file
  if (::fcntl(f.fd.get(), F_OFD_SETLK, &lock) != 0) {
    if (errno == EAGAIN || errno == EACCES)
      throw Error(what + ": locked by another process (is another keel using it?)");
    throw_errno(what + ": cannot lock");
  }

  off_t end = ::lseek(f.fd.get(), 0, SEEK_END);
  if (end < 0) throw_errno(what + ": cannot find its size");
  // A read at offset 0 proves the image is readable now rather than at the guest's first access.
  char probe;
  if (end > 0 && ::pread(f.fd.get(), &probe, 1, 0) < 0) throw_errno(what + ": unreadable");
  f.size = static_cast<uint64_t>(end);
  return f;
}

namespace {

// Advances `iov` past `n` bytes (in place on a copy the caller owns).
void advance(std::vector<iovec>& iov, size_t& first, uint64_t n) {
  while (n && first < iov.size()) {
    uint64_t take = std::min<uint64_t>(n, iov[first].iov_len);
    iov[first].iov_base = static_cast<char*>(iov[first].iov_base) + take;
    iov[first].iov_len -= take;
    n -= take;
    if (iov[first].iov_len == 0) ++first;
  }
}

uint64_t total(std::span<const iovec> iov) {
  uint64_t n = 0;
  for (const auto& v : iov) n += v.iov_len;
  return n;
}

}  // namespace

void pread_all(int fd, void* data, uint64_t length, uint64_t offset, const std::string& what) {
  iovec v{data, length};
  preadv_all(fd, {&v, 1}, offset, what);
}

void pwrite_all(int fd, const void* data, uint64_t length, uint64_t offset, const std::string& what) {
  iovec v{const_cast<void*>(data), length};
  pwritev_all(fd, {&v, 1}, offset, what);
}

namespace {

// Loops over short transfers; a read that reaches the end of the file fills the rest with zeros.
void transfer_all(int fd, std::span<const iovec> iov, uint64_t offset, const std::string& what, bool write) {
  std::vector<iovec> left(iov.begin(), iov.end());
  size_t first = 0;
  uint64_t remaining = total(iov);
  while (remaining) {
    int count = static_cast<int>(std::min<size_t>(left.size() - first, IOV_MAX));
    ssize_t n = write ? ::pwritev(fd, left.data() + first, count, static_cast<off_t>(offset))
                      : ::preadv(fd, left.data() + first, count, static_cast<off_t>(offset));
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) throw_errno(what + (write ? ": write" : ": read") + " at offset " + std::to_string(offset));
    if (n == 0 && write) throw_errno(what + ": write at offset " + std::to_string(offset), EIO);
    if (n == 0) {
      for (size_t i = first; i < left.size(); ++i) std::memset(left[i].iov_base, 0, left[i].iov_len);
      return;
    }
    advance(left, first, static_cast<uint64_t>(n));
    offset += static_cast<uint64_t>(n);
    remaining -= static_cast<uint64_t>(n);
  }
}

}  // namespace

void preadv_all(int fd, std::span<const iovec> iov, uint64_t offset, const std::string& what) {
  transfer_all(fd, iov, offset, what, false);
}

void pwritev_all(int fd, std::span<const iovec> iov, uint64_t offset, const std::string& what) {
  transfer_all(fd, iov, offset, what, true);
}

}  // namespace keel
