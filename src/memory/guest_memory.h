// GuestMemory: the guest's RAM, as regions of guest-physical address space backed by host memory.
//
// Everything a device reads or writes on behalf of the guest goes through here, and every access
// is bounds-checked: an address outside RAM (or an access that straddles a region end) throws
// GuestMemoryError, which device code turns into an error status for that one request.
//
// RAM is mapped lazily with transparent huge pages: host page faults are expensive, and most of a
// guest's RAM is never touched during boot.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <cstring>
#include <functional>
#include <span>
#include <type_traits>
#include <vector>

#include "base/error.h"
#include "base/mapping.h"

namespace keel {

class GuestMemoryError : public Error {
 public:
  using Error::Error;
};

// x86 guest-physical layout: RAM below the 32-bit MMIO hole, the rest above 4 GiB.
inline constexpr uint64_t kMmioHoleStart = 0xC000'0000;   // 3 GiB
inline constexpr uint64_t kMmioHoleEnd = 0x1'0000'0000;   // 4 GiB
inline constexpr uint64_t kPageSize = 4096;

struct MemoryRegion {
  uint64_t gpa;    // guest-physical start
  uint64_t size;   // bytes
  uint8_t* host;   // host address of gpa
  bool contains(uint64_t addr, uint64_t len) const {
    return addr >= gpa && len <= size && addr - gpa <= size - len;
  }
};

class GuestMemory {
 public:
  // Allocates `ram_bytes` of RAM laid out around the MMIO hole. Throws Error if the size is zero or
  // not a multiple of 4 KiB.
  explicit GuestMemory(uint64_t ram_bytes);
  // RAM backed by the first `ram_bytes` of file `fd`, mapped MAP_PRIVATE: pages are read from the
  // file when the guest first touches them and copied on its first write, so the file is never
  // changed and any number of VMs may start from it (a snapshot's memory file). Throws Error if
  // the file is shorter than `ram_bytes`.
  GuestMemory(uint64_t ram_bytes, int fd);
  GuestMemory(const GuestMemory&) = delete;
  GuestMemory& operator=(const GuestMemory&) = delete;

  uint64_t ram_size() const { return ram_size_; }
  std::span<const MemoryRegion> regions() const { return regions_; }
  // One past the highest guest-physical RAM address.
  uint64_t end() const;
  // All of RAM as one host range: region i starts at offset (regions()[i].host - ram_base()).
  uint8_t* ram_base() const { return backing_.data(); }
  // The RAM offset of guest-physical `gpa` (inside a region), or ~0 when it is not RAM.
  uint64_t ram_offset(uint64_t gpa) const;
  // The guest-physical address of RAM offset `offset` (< ram_size()).
  uint64_t gpa_of_offset(uint64_t offset) const;

  // Host pointer for [gpa, gpa+len) if it lies inside one RAM region, else nullptr.
  uint8_t* host_ptr(uint64_t gpa, uint64_t len) const {
    for (const auto& r : regions_)
      if (r.contains(gpa, len)) return r.host + (gpa - r.gpa);
    return nullptr;
  }
  bool contains(uint64_t gpa, uint64_t len) const { return host_ptr(gpa, len) != nullptr; }

  // Bounds-checked span over guest RAM; throws GuestMemoryError when out of range.
  std::span<const uint8_t> read_span(uint64_t gpa, uint64_t len) const;
  // As read_span, for writing: also reports the write (write observer, dirty log) before it
  // happens, so it is for writers that fill RAM before the guest runs (the loader, ACPI tables).
  std::span<uint8_t> write_span(uint64_t gpa, uint64_t len);

  void read(uint64_t gpa, void* dst, uint64_t len) const;
  // Copies into RAM, then reports the write (write observer, dirty log).
  void write(uint64_t gpa, const void* src, uint64_t len);

  template <typename T>
  T read_obj(uint64_t gpa) const {
    static_assert(std::is_trivially_copyable_v<T>);
    T v;
    read(gpa, &v, sizeof v);
    return v;
  }
  template <typename T>
  void write_obj(uint64_t gpa, const T& v) {
    static_assert(std::is_trivially_copyable_v<T>);
    write(gpa, &v, sizeof v);
  }

  // The emu engine caches decoded code per guest-physical page; writes that do not go through its
  // own MMU (device DMA, the loader) must invalidate that cache. The observer is called with the
  // written range. Set once, before vCPUs or devices run.
  using WriteObserver = std::function<void(uint64_t gpa, uint64_t len)>;
  void set_write_observer(WriteObserver observer) { write_observer_ = std::move(observer); }
  // Also marks the range dirty while dirty logging is on: writers that go around write() (DMA
  // through host pointers) call it once their data has landed.
  void notify_write(uint64_t gpa, uint64_t len) {
    mark_dirty(gpa, len);
    if (write_observer_) write_observer_(gpa, len);
  }

  // ---- Dirty page log (live migration) ----
  // While logging, every page written through this class, through notify_write() or marked by an
  // engine (the emu MMU's stores, KVM's dirty log merged in) has its bit set in a bitmap indexed
  // by RAM page (ram_offset / 4096). Bits are set from any thread; take_dirty() swaps them out.
  // start/stop are not thread-safe against each other (the migration thread owns them).
  void start_dirty_log();  // every page clean
  void stop_dirty_log();
  bool dirty_logging() const { return logging_.load(std::memory_order_relaxed); }
  void mark_dirty(uint64_t gpa, uint64_t len) {
    if (logging_.load(std::memory_order_relaxed)) [[unlikely]] mark_dirty_slow(gpa, len);
  }
  // Marks RAM pages [first, first + count) by page index.
  void mark_dirty_pages(uint64_t first, uint64_t count);
  bool page_dirty(uint64_t gpa) const;
  // The dirty bitmap (one bit per RAM page, 64 pages per word), cleared as it is read.
  std::vector<uint64_t> take_dirty();
  uint64_t page_count() const { return ram_size_ / kPageSize; }

 private:
  void layout(uint8_t* host);
  void mark_dirty_slow(uint64_t gpa, uint64_t len);

  uint64_t ram_size_;
  Mapping backing_;
  std::vector<MemoryRegion> regions_;
  WriteObserver write_observer_;
  std::atomic<bool> logging_{false};
  std::unique_ptr<std::atomic<uint64_t>[]> dirty_;  // page_count() bits, allocated on first use
};

}  // namespace keel
