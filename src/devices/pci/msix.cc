#include "devices/pci/msix.h"

#include <algorithm>
#include <cstring>

#include "base/error.h"

namespace keel {

namespace {
constexpr uint32_t kVectorMasked = 1;
}

MsixTable::MsixTable(uint16_t vectors, InterruptController* controller)
    : entries_(vectors), routes_(vectors), pending_((vectors + 63) / 64) {
  if (vectors == 0 || vectors > kMaxVectors)
    throw Error("MSI-X: invalid vector count " + std::to_string(vectors));
  if (controller)
    for (auto& r : routes_) r.route = controller->create_msi_route(r.programmed);
}

bool MsixTable::enabled() const {
  std::lock_guard lock(mutex_);
  return enabled_;
}

bool MsixTable::masked_locked(uint16_t n) const {
  return function_masked_ || (entries_[n].control & kVectorMasked);
}

bool MsixTable::pending_locked(uint16_t n) const {
  return pending_[n / 64] & (uint64_t{1} << (n % 64));
}

void MsixTable::set_pending_locked(uint16_t n, bool pending) {
  uint64_t bit = uint64_t{1} << (n % 64);
  pending_[n / 64] = pending ? pending_[n / 64] | bit : pending_[n / 64] & ~bit;
}

void MsixTable::fire_locked(uint16_t n) {
  if (routes_[n].route) routes_[n].route->fire();
}

bool MsixTable::notify(uint16_t n) {
  std::lock_guard lock(mutex_);
  if (n >= entries_.size() || !enabled_) return false;
  if (masked_locked(n)) {
    set_pending_locked(n, true);
    return false;
  }
  fire_locked(n);
  return true;
}

void MsixTable::refresh_locked(uint16_t n) {
  if (!enabled_ || masked_locked(n)) return;
  Route& r = routes_[n];
  MsiMessage msg = entries_[n].message();
  if (r.route && r.programmed != msg) {
    r.route->set_message(msg);
    r.programmed = msg;
  }
  if (pending_locked(n)) {
    set_pending_locked(n, false);
    fire_locked(n);
  }
}

void MsixTable::set_control(uint16_t control) {
  std::lock_guard lock(mutex_);
  enabled_ = control & kControlEnable;
  function_masked_ = control & kControlFunctionMask;
  for (uint16_t n = 0; n < entries_.size(); ++n) refresh_locked(n);
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
  if (data.empty()) return;
  std::lock_guard lock(mutex_);
  for (size_t i = 0; i < data.size(); ++i) {
    uint64_t off = offset + i;
    uint64_t n = off / kEntrySize;
    if (n >= entries_.size()) continue;
    Entry& e = entries_[n];
    uint32_t words[4] = {e.addr_lo, e.addr_hi, e.data, e.control};
    reinterpret_cast<uint8_t*>(words)[off % kEntrySize] = data[i];
    e.addr_lo = words[0] & ~3u;  // message address is dword aligned
    e.addr_hi = words[1];
    e.data = words[2];
    e.control = words[3] & kVectorMasked;  // other control bits are reserved
  }
  // An access of at most 8 bytes touches one or two entries.
  uint64_t last = (offset + data.size() - 1) / kEntrySize;
  for (uint64_t n = offset / kEntrySize; n <= last && n < entries_.size(); ++n)
    refresh_locked(static_cast<uint16_t>(n));
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
  return entries_[n].message();
}

void MsixTable::reset() {
  // Routes keep their programmed message; refresh_locked() reprograms them once vectors can fire.
  std::lock_guard lock(mutex_);
  std::fill(entries_.begin(), entries_.end(), Entry{});
  std::fill(pending_.begin(), pending_.end(), 0);
  enabled_ = false;
  function_masked_ = false;
}

void MsixTable::save_state(state::SectionWriter& out) const {
  std::lock_guard lock(mutex_);
  std::vector<uint32_t> table;
  for (const Entry& e : entries_) table.insert(table.end(), {e.addr_lo, e.addr_hi, e.data, e.control});
  out.u32s("msix_table", table);
  out.u64s("msix_pending", pending_);
  out.boolean("msix_enabled", enabled_);
  out.boolean("msix_function_masked", function_masked_);
}

void MsixTable::restore_state(const state::SectionReader& in) {
  std::vector<uint32_t> table = in.u32s("msix_table", 4 * entries_.size());
  std::vector<uint64_t> pending = in.u64s("msix_pending", pending_.size());
  if (table.size() != 4 * entries_.size() || pending.size() != pending_.size())
    in.fail("MSI-X table has " + std::to_string(table.size() / 4) + " vectors, this device " +
            std::to_string(entries_.size()));
  std::lock_guard lock(mutex_);
  for (size_t n = 0; n < entries_.size(); ++n) {
    entries_[n].addr_lo = table[4 * n] & ~3u;
    entries_[n].addr_hi = table[4 * n + 1];
    entries_[n].data = table[4 * n + 2];
    entries_[n].control = table[4 * n + 3] & kVectorMasked;
  }
  // Bits beyond the last vector stay clear.
  if (entries_.size() % 64) pending.back() &= (uint64_t{1} << (entries_.size() % 64)) - 1;
  pending_ = pending;
  enabled_ = in.boolean("msix_enabled");
  function_masked_ = in.boolean("msix_function_masked");
  for (uint16_t n = 0; n < entries_.size(); ++n) refresh_locked(n);
}

}  // namespace keel
