#include "devices/pci/msix.h"

#include <algorithm>
#include <cstring>

#include "base/error.h"

namespace keel {

namespace {
constexpr uint32_t kVectorMasked = 1;
}

MsixTable::MsixTable(uint16_t vectors, InterruptController* controller)
    : controller_(controller), entries_(vectors), pending_((vectors + 63) / 64) {
  if (vectors == 0 || vectors > kMaxVectors)
    throw Error("MSI-X: invalid vector count " + std::to_string(vectors));
}

bool MsixTable::enabled() const {
  std::lock_guard lock(mutex_);
  return enabled_;
}

bool MsixTable::masked_locked(uint16_t n) const {
  return function_masked_ || (entries_[n].control & kVectorMasked);
}

void MsixTable::send_locked(uint16_t n) {
  if (!controller_) return;
  const Entry& e = entries_[n];
  controller_->send_msi({(uint64_t{e.addr_hi} << 32) | e.addr_lo, e.data});
}

bool MsixTable::notify(uint16_t n) {
  std::lock_guard lock(mutex_);
  if (n >= entries_.size() || !enabled_) return false;
  if (masked_locked(n)) {
    pending_[n / 64] |= uint64_t{1} << (n % 64);
    return false;
  }
  send_locked(n);
  return true;
}

void MsixTable::deliver_pending_locked() {
  if (!enabled_) return;
  for (uint16_t n = 0; n < entries_.size(); ++n) {
    uint64_t bit = uint64_t{1} << (n % 64);
    if ((pending_[n / 64] & bit) && !masked_locked(n)) {
      pending_[n / 64] &= ~bit;
      send_locked(n);
    }
  }
}

void MsixTable::set_control(uint16_t control) {
  std::lock_guard lock(mutex_);
  enabled_ = control & kControlEnable;
  function_masked_ = control & kControlFunctionMask;
  deliver_pending_locked();
}

uint16_t MsixTable::control() const {
  std::lock_guard lock(mutex_);
  return (enabled_ ? kControlEnable : 0) | (function_masked_ ? kControlFunctionMask : 0);
}

void MsixTable::table_read(uint64_t offset, std::span<uint8_t> data) const {
  std::lock_guard lock(mutex_);
  for (size_t i = 0; i < data.size(); ++i) {
    uint64_t off = offset + i;
    uint64_t n = off / kEntrySize;
    if (n >= entries_.size()) {
      data[i] = 0;
      continue;
    }
    uint32_t words[4] = {entries_[n].addr_lo, entries_[n].addr_hi, entries_[n].data,
                         entries_[n].control};
    data[i] = reinterpret_cast<const uint8_t*>(words)[off % kEntrySize];
  }
}

void MsixTable::table_write(uint64_t offset, std::span<const uint8_t> data) {
  std::lock_guard lock(mutex_);
  bool unmasked = false;
  for (size_t i = 0; i < data.size(); ++i) {
    uint64_t off = offset + i;
    uint64_t n = off / kEntrySize;
    if (n >= entries_.size()) continue;
    Entry& e = entries_[n];
    uint32_t words[4] = {e.addr_lo, e.addr_hi, e.data, e.control};
    reinterpret_cast<uint8_t*>(words)[off % kEntrySize] = data[i];
    bool was_masked = e.control & kVectorMasked;
    e.addr_lo = words[0] & ~3u;  // message address is dword aligned
    e.addr_hi = words[1];
    e.data = words[2];
    e.control = words[3] & kVectorMasked;  // other control bits are reserved
    if (was_masked && !(e.control & kVectorMasked)) unmasked = true;
  }
  if (unmasked) deliver_pending_locked();
}

void MsixTable::pba_read(uint64_t offset, std::span<uint8_t> data) const {
  std::lock_guard lock(mutex_);
  for (size_t i = 0; i < data.size(); ++i) {
    uint64_t off = offset + i;
    data[i] = off / 8 < pending_.size() ? static_cast<uint8_t>(pending_[off / 8] >> (off % 8 * 8))
                                        : 0;
  }
}

MsiMessage MsixTable::message(uint16_t n) const {
  std::lock_guard lock(mutex_);
  if (n >= entries_.size()) return {};
  return {(uint64_t{entries_[n].addr_hi} << 32) | entries_[n].addr_lo, entries_[n].data};
}

void MsixTable::reset() {
  std::lock_guard lock(mutex_);
  std::fill(entries_.begin(), entries_.end(), Entry{});
  std::fill(pending_.begin(), pending_.end(), 0);
  enabled_ = false;
  function_masked_ = false;
}

}  // namespace keel
