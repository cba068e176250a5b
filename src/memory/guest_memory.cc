#include "memory/guest_memory.h"

#include <sys/mman.h>

#include <string>

#include "base/log.h"

namespace keel {

namespace {

std::string hex(uint64_t v) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "0x%llx", static_cast<unsigned long long>(v));
  return buf;
}

}  // namespace

GuestMemory::GuestMemory(uint64_t ram_bytes) : ram_size_(ram_bytes) {
  if (ram_bytes == 0 || ram_bytes % kPageSize != 0)
    throw Error("guest memory size must be a non-zero multiple of 4 KiB, got " +
                std::to_string(ram_bytes));
  backing_ = Mapping::anonymous(ram_bytes);
  // Lazily faulted huge pages: far fewer (slow) host page faults than 4 KiB pages.
  if (::madvise(backing_.data(), ram_bytes, MADV_HUGEPAGE) != 0)
    log::debug("madvise(MADV_HUGEPAGE) failed: {}", std::strerror(errno));
  uint64_t low = std::min(ram_bytes, kMmioHoleStart);
  regions_.push_back({0, low, backing_.data()});
  if (ram_bytes > low) regions_.push_back({kMmioHoleEnd, ram_bytes - low, backing_.data() + low});
}

uint64_t GuestMemory::end() const {
  const auto& last = regions_.back();
  return last.gpa + last.size;
}

std::span<const uint8_t> GuestMemory::read_span(uint64_t gpa, uint64_t len) const {
  uint8_t* p = host_ptr(gpa, len);
  if (!p)
    throw GuestMemoryError("guest memory access out of range: " + hex(gpa) + " + " +
                           std::to_string(len));
  return {p, len};
}

std::span<uint8_t> GuestMemory::write_span(uint64_t gpa, uint64_t len) {
  uint8_t* p = host_ptr(gpa, len);
  if (!p)
    throw GuestMemoryError("guest memory access out of range: " + hex(gpa) + " + " +
                           std::to_string(len));
  notify_write(gpa, len);
  return {p, len};
}

void GuestMemory::read(uint64_t gpa, void* dst, uint64_t len) const {
  auto s = read_span(gpa, len);
  if (len) std::memcpy(dst, s.data(), len);
}

void GuestMemory::write(uint64_t gpa, const void* src, uint64_t len) {
  auto s = write_span(gpa, len);
  if (len) std::memcpy(s.data(), src, len);
}

}  // namespace keel
