#include "bus/io_bus.h"

#include <cstring>
#include <mutex>

#include "base/error.h"

namespace keel {

void IoBus::add(uint64_t base, uint64_t size, std::shared_ptr<BusDevice> device) {
  if (size == 0 || base + size < base)
    throw Error(name_ + " bus: invalid range at " + std::to_string(base));
  std::unique_lock lock(mutex_);
  auto next = ranges_.lower_bound(base);
  if (next != ranges_.end() && next->first < base + size)
    throw Error(name_ + " bus: range at " + std::to_string(base) + " overlaps one at " +
                std::to_string(next->first));
  if (next != ranges_.begin()) {
    auto prev = std::prev(next);
    if (prev->first + prev->second.size > base)
      throw Error(name_ + " bus: range at " + std::to_string(base) + " overlaps one at " +
                  std::to_string(prev->first));
  }
  ranges_.emplace(base, Range{size, std::move(device)});
}

bool IoBus::remove(uint64_t base) {
  std::unique_lock lock(mutex_);
  return ranges_.erase(base) > 0;
}

const std::pair<const uint64_t, IoBus::Range>* IoBus::find(uint64_t addr, uint64_t len) const {
  auto it = ranges_.upper_bound(addr);
  if (it == ranges_.begin()) return nullptr;
  --it;
  uint64_t off = addr - it->first;
  if (off >= it->second.size || len > it->second.size - off) return nullptr;
  return &*it;
}

bool IoBus::read(uint64_t addr, std::span<uint8_t> data) const {
  std::shared_ptr<BusDevice> dev;
  uint64_t base = 0;
  {
    std::shared_lock lock(mutex_);
    if (auto* r = find(addr, data.size())) {
      dev = r->second.device;
      base = r->first;
    }
  }
  if (!dev) {
    std::memset(data.data(), 0xff, data.size());
    return false;
  }
  dev->read(addr - base, data);
  return true;
}

bool IoBus::write(uint64_t addr, std::span<const uint8_t> data) const {
  std::shared_ptr<BusDevice> dev;
  uint64_t base = 0;
  {
    std::shared_lock lock(mutex_);
    if (auto* r = find(addr, data.size())) {
      dev = r->second.device;
      base = r->first;
    }
  }
  if (!dev) return false;
  dev->write(addr - base, data);
  return true;
}

}  // namespace keel
