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
  GuestMemory(const GuestMemory&) = delete;
  GuestMemory& operator=(const GuestMemory&) = delete;

  uint64_t ram_size() const { return ram_size_; }
  std::span<const MemoryRegion> regions() const { return regions_; }
  // One past the highest guest-physical RAM address.
  uint64_t end() const;

  // Host pointer for [gpa, gpa+len) if it lies inside one RAM region, else nullptr.
  uint8_t* host_ptr(uint64_t gpa, uint64_t len) const {
    for (const auto& r : regions_)
      if (r.contains(gpa, len)) return r.host + (gpa - r.gpa);
    return nullptr;
  }
  bool contains(uint64_t gpa, uint64_t len) const { return host_ptr(gpa, len) != nullptr; }

  // Bounds-checked span over guest RAM; throws GuestMemoryError when out of range.
  std::span<const uint8_t> read_span(uint64_t gpa, uint64_t len) const;
  // As read_span, for writing: also reports the write to the write observer (see below).
  std::span<uint8_t> write_span(uint64_t gpa, uint64_t len);

  void read(uint64_t gpa, void* dst, uint64_t len) const;
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
  void notify_write(uint64_t gpa, uint64_t len) {
    if (write_observer_) write_observer_(gpa, len);
  }

 private:
  uint64_t ram_size_;
  Mapping backing_;
  std::vector<MemoryRegion> regions_;
  WriteObserver write_observer_;
};

}  // namespace keel
