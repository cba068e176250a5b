#include "memory/guest_memory.h"

#include <sys/mman.h>
#include <sys/stat.h>

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

namespace {
void check_size(uint64_t ram_bytes) {
  if (ram_bytes == 0 || ram_bytes % kPageSize != 0)
    throw Error("guest memory size must be a non-zero multiple of 4 KiB, got " +
                std::to_string(ram_bytes));
}
}  // namespace

GuestMemory::GuestMemory(uint64_t ram_bytes) : ram_size_(ram_bytes) {
  check_size(ram_bytes);
  backing_ = Mapping::anonymous(ram_bytes);
  // Lazily faulted huge pages: far fewer (slow) host page faults than 4 KiB pages.
  if (::madvise(backing_.data(), ram_bytes, MADV_HUGEPAGE) != 0)
    log::debug("madvise(MADV_HUGEPAGE) failed: {}", std::strerror(errno));
  layout(backing_.data());
}

GuestMemory::GuestMemory(uint64_t ram_bytes, int fd) : ram_size_(ram_bytes) {
  check_size(ram_bytes);
  struct stat st;
  if (::fstat(fd, &st) != 0) throw_errno("guest memory file: fstat");
  if (static_cast<uint64_t>(st.st_size) < ram_bytes)
    throw Error("guest memory file holds " + std::to_string(st.st_size) + " bytes, the guest has " +
                std::to_string(ram_bytes));
  backing_ = Mapping::file(fd, ram_bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_NORESERVE);
  layout(backing_.data());
}

void GuestMemory::layout(uint8_t* host) {
  uint64_t low = std::min(ram_size_, kMmioHoleStart);
  regions_.push_back({0, low, host});
  if (ram_size_ > low) regions_.push_back({kMmioHoleEnd, ram_size_ - low, host + low});
}

uint64_t GuestMemory::ram_offset(uint64_t gpa) const {
  for (const auto& r : regions_)
    if (gpa >= r.gpa && gpa - r.gpa < r.size) return static_cast<uint64_t>(r.host - ram_base()) + (gpa - r.gpa);
  return ~0ull;
}

uint64_t GuestMemory::gpa_of_offset(uint64_t offset) const {
  for (const auto& r : regions_) {
    uint64_t start = static_cast<uint64_t>(r.host - ram_base());
    if (offset >= start && offset - start < r.size) return r.gpa + (offset - start);
  }
  return ~0ull;
}

void GuestMemory::start_dirty_log() {
  size_t words = (page_count() + 63) / 64;
  if (!dirty_) dirty_ = std::make_unique<std::atomic<uint64_t>[]>(words);
  for (size_t i = 0; i < words; ++i) dirty_[i].store(0, std::memory_order_relaxed);
  logging_.store(true, std::memory_order_seq_cst);
}

void GuestMemory::stop_dirty_log() { logging_.store(false, std::memory_order_seq_cst); }

void GuestMemory::mark_dirty_pages(uint64_t first, uint64_t count) {
  if (!dirty_ || first >= page_count()) return;
  count = std::min(count, page_count() - first);
  for (uint64_t p = first; p < first + count; ++p)
    dirty_[p / 64].fetch_or(uint64_t{1} << (p % 64), std::memory_order_relaxed);
}

void GuestMemory::mark_dirty_slow(uint64_t gpa, uint64_t len) {
  if (len == 0) return;
  for (const auto& r : regions_) {
    // The part of [gpa, gpa + len) inside this region.
    uint64_t lo = std::max(gpa, r.gpa), hi = std::min(gpa + len, r.gpa + r.size);
    if (lo >= hi) continue;
    uint64_t base = static_cast<uint64_t>(r.host - ram_base()) - r.gpa;
    uint64_t first = (lo + base) / kPageSize, last = (hi - 1 + base) / kPageSize;
    mark_dirty_pages(first, last - first + 1);
  }
}

bool GuestMemory::page_dirty(uint64_t gpa) const {
  uint64_t off = ram_offset(gpa);
  if (!dirty_ || off == ~0ull) return false;
  uint64_t p = off / kPageSize;
  return (dirty_[p / 64].load(std::memory_order_relaxed) >> (p % 64)) & 1;
}

std::vector<uint64_t> GuestMemory::take_dirty() {
  std::vector<uint64_t> out((page_count() + 63) / 64);
  if (!dirty_) return out;
  for (size_t i = 0; i < out.size(); ++i) out[i] = dirty_[i].exchange(0, std::memory_order_acq_rel);
  return out;
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
  // Reported after the copy: a dirty-log reader that clears the page in between sees it again.
  auto s = read_span(gpa, len);
  if (len) std::memcpy(const_cast<uint8_t*>(s.data()), src, len);
  notify_write(gpa, len);
}

}  // namespace keel
