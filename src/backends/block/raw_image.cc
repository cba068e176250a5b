#include "backends/block/raw_image.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include "base/error.h"

namespace keel {

std::unique_ptr<RawImage> RawImage::open(const std::string& path, bool readonly) {
  std::string what = "disk " + path;
  UniqueFd fd(::open(path.c_str(), (readonly ? O_RDONLY : O_RDWR) | O_CLOEXEC));
  if (!fd) throw_errno(what + ": cannot open" + (readonly ? "" : " for reading and writing"));
  struct stat st;
  if (::fstat(fd.get(), &st) != 0) throw_errno(what + ": fstat");
  if (!S_ISREG(st.st_mode) && !S_ISBLK(st.st_mode))
    throw Error(what + ": not a regular file or block device");

  struct flock lock = {};
  lock.l_type = readonly ? F_RDLCK : F_WRLCK;
  lock.l_whence = SEEK_SET;  // l_start = l_len = 0: the whole file
  if (::fcntl(fd.get(), F_OFD_SETLK, &lock) != 0) {
    if (errno == EAGAIN || errno == EACCES)
      throw Error(what + ": locked by another process (is another keel using it?)");
    throw_errno(what + ": cannot lock");
  }

  off_t end = ::lseek(fd.get(), 0, SEEK_END);
  if (end < 0) throw_errno(what + ": cannot find its size");
  // A read at offset 0 proves the image is readable now rather than at the guest's first access.
  char probe;
  if (end > 0 && ::pread(fd.get(), &probe, 1, 0) < 0) throw_errno(what + ": unreadable");
  return std::unique_ptr<RawImage>(new RawImage(path, std::move(fd), end, readonly));
}

}  // namespace keel
