// MsixTable: the MSI-X vector table and pending-bit array of one PCI function.
//
// The guest programs each vector's message (address, data) and mask bit through the table in a
// BAR, and enables MSI-X / masks the whole function through the capability's message control.
// A device raises vector n with notify(n): the message goes to the InterruptController at once, or,
// while the vector or the function is masked, its pending bit is set and the message is sent when
// it is unmasked (PCI 3.0, 6.8.2).
//
// Thread safety: notify() is called from device worker threads, table accesses from vCPU threads;
// one mutex guards the table. send_msi is called with it held (the controller never calls back).
#pragma once

#include <cstdint>
#include <mutex>
#include <span>
#include <vector>

#include "irq/interrupts.h"

namespace keel {

class MsixTable {
 public:
  static constexpr uint16_t kMaxVectors = 2048;
  static constexpr uint32_t kEntrySize = 16;
  static constexpr uint16_t kControlFunctionMask = 1 << 14;
  static constexpr uint16_t kControlEnable = 1 << 15;

  MsixTable(uint16_t vectors, InterruptController* controller);

  uint16_t vectors() const { return static_cast<uint16_t>(entries_.size()); }
  uint32_t table_bytes() const { return vectors() * kEntrySize; }
  uint32_t pba_bytes() const { return ((vectors() + 63) / 64) * 8; }

  // Raises vector `n`; ignored when n is out of range or MSI-X is disabled. Returns whether a
  // message was sent (false: dropped or left pending).
  bool notify(uint16_t n);
  bool enabled() const;

  // Message control bits 14 (function mask) and 15 (enable), from the capability.
  void set_control(uint16_t control);
  uint16_t control() const;

  // Table and PBA accesses, offset relative to the start of each; any size up to 8 bytes.
  void table_read(uint64_t offset, std::span<uint8_t> data) const;
  void table_write(uint64_t offset, std::span<const uint8_t> data);
  void pba_read(uint64_t offset, std::span<uint8_t> data) const;

  // Back to the power-on state (all vectors masked, nothing pending, disabled).
  void reset();

  // The message vector `n` is programmed with (zero when out of range).
  MsiMessage message(uint16_t n) const;

 private:
  struct Entry {
    uint32_t addr_lo = 0;
    uint32_t addr_hi = 0;
    uint32_t data = 0;
    uint32_t control = 1;  // bit 0: masked
  };
  bool masked_locked(uint16_t n) const;
  void deliver_pending_locked();
  void send_locked(uint16_t n);

  mutable std::mutex mutex_;
  InterruptController* controller_;
  std::vector<Entry> entries_;
  std::vector<uint64_t> pending_;
  bool enabled_ = false;
  bool function_masked_ = false;
};

}  // namespace keel
