#include "boot/memory_map.h"

#include <algorithm>

namespace keel::boot {

std::vector<E820Entry> build_e820(const GuestMemory& memory) {
  std::vector<E820Entry> map;
  auto add = [&](uint64_t start, uint64_t end, uint32_t type) {
    if (end > start) map.push_back({start, end - start, type});
  };
  for (const auto& r : memory.regions()) {
    const uint64_t end = r.gpa + r.size;
    if (r.gpa < kLowReservedEnd) {
      // The low region: conventional memory, the legacy hole, then RAM from 1 MiB.
      add(r.gpa, std::min(end, kLowReservedStart), kE820Ram);
      add(std::max(r.gpa, kLowReservedEnd), end, kE820Ram);
    } else {
      add(r.gpa, end, kE820Ram);
    }
  }
  add(kLowReservedStart, kLowReservedEnd, kE820Reserved);
  add(kPlatformMmioStart, kMmioHoleEnd, kE820Reserved);
  std::sort(map.begin(), map.end(),
            [](const E820Entry& a, const E820Entry& b) { return a.addr < b.addr; });
  return map;
}

}  // namespace keel::boot
