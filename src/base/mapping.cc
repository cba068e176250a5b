#include "base/mapping.h"

#include "base/error.h"

namespace keel {

Mapping Mapping::anonymous(size_t size, int prot) {
  void* p = ::mmap(nullptr, size, prot, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (p == MAP_FAILED) throw_errno("mmap of " + std::to_string(size) + " bytes");
  return Mapping(p, size);
}

Mapping Mapping::file(int fd, size_t size, int prot, int flags, off_t offset) {
  void* p = ::mmap(nullptr, size, prot, flags, fd, offset);
  if (p == MAP_FAILED) throw_errno("mmap of file");
  return Mapping(p, size);
}

}  // namespace keel
