// MsixTable: the MSI-X vector table and pending-bit array of one PCI function.
//
// The guest programs each vector's message (address, data) and mask bit through the table in a
// BAR, and enables MSI-X / masks the whole function through the capability's message control.
// Each vector owns an MsiRoute from the InterruptController (on KVM an irqfd on its own GSI route).
// A device raises vector n with notify(n): the route fires at once, or, while the vector or the
// function is masked, its pending bit is set and the route fires when it is unmasked
// (PCI 3.0, 6.8.2); while MSI-X is disabled notifications are dropped. A route is reprogrammed when
// its vector becomes able to fire with a message the route does not carry yet (unmask, enable,
// function unmask, or a rewrite while unmasked): drivers mask a vector while they rewrite it,
// so this is one KVM_SET_GSI_ROUTING per rewrite, on the vCPU thread that unmasks, and notify()
// on a device thread only fires (an eventfd write on KVM).
//
// Thread safety: notify() is called from device worker threads, table accesses from vCPU threads;
// one mutex guards the table and the routes, which are fired and reprogrammed with it held (the
// controller never calls back).
#pragma once

#include <cstdint>
#include <memory>
#include <mutex>
#include <span>
#include <vector>

#include "irq/interrupts.h"
#include "state/state_format.h"

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

  // Raises vector `n`; ignored when n is out of range or MSI-X is disabled. Returns whether the
  // route fired (false: dropped or left pending).
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

  // The table, pending bits, enable and function mask, as fields of the owning device's section
  // (prefixed "msix_"). restore_state() reprograms the routes of the vectors that can fire.
  void save_state(state::SectionWriter& out) const;
  void restore_state(const state::SectionReader& in);

  // The message vector `n` is programmed with (zero when out of range).
  MsiMessage message(uint16_t n) const;

 private:
  struct Entry {
    uint32_t addr_lo = 0;
    uint32_t addr_hi = 0;
    uint32_t data = 0;
    uint32_t control = 1;  // bit 0: masked
    MsiMessage message() const { return {(uint64_t{addr_hi} << 32) | addr_lo, data}; }
  };
  struct Route {
    std::unique_ptr<MsiRoute> route;  // null without a controller
    MsiMessage programmed;            // the message `route` delivers
  };
  bool masked_locked(uint16_t n) const;
  bool pending_locked(uint16_t n) const;
  void set_pending_locked(uint16_t n, bool pending);
  // Vector n can fire: reprogram its route if the guest changed the message, send if pending.
  void refresh_locked(uint16_t n);
  void fire_locked(uint16_t n);

  mutable std::mutex mutex_;
  std::vector<Entry> entries_;
  std::vector<Route> routes_;
  std::vector<uint64_t> pending_;
  bool enabled_ = false;
  bool function_masked_ = false;
};

}  // namespace keel
