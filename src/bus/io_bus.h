// IoBus: maps address ranges to devices. The machine has two: port I/O (16-bit addresses) and MMIO
// (guest-physical addresses outside RAM). Both engines dispatch guest accesses here: KVM from its
// KVM_EXIT_IO / KVM_EXIT_MMIO exits, emu directly from its in/out and memory instructions.
//
// Thread safety: vCPU threads dispatch concurrently (shared lock); ranges may be added, moved or
// removed at run time (PCI BAR programming) under the exclusive lock. Devices do their own locking.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <shared_mutex>
#include <span>
#include <string>

namespace keel {

class BusDevice {
 public:
  virtual ~BusDevice() = default;
  // `offset` is relative to the base of the range the device was added at; data.size() is the
  // access size (1, 2, 4 or 8 bytes; other sizes are possible for MMIO and must be handled).
  virtual void read(uint64_t offset, std::span<uint8_t> data) = 0;
  virtual void write(uint64_t offset, std::span<const uint8_t> data) = 0;
};

class IoBus {
 public:
  explicit IoBus(std::string name) : name_(std::move(name)) {}

  // Adds [base, base+size). Throws Error if it overlaps an existing range or size is zero.
  void add(uint64_t base, uint64_t size, std::shared_ptr<BusDevice> device);
  // Removes the range starting at `base`; returns false if there is none.
  bool remove(uint64_t base);

  // Dispatch. An access with no device behind it reads as all-ones and ignores writes, as on real
  // hardware; the return value says whether a device handled it.
  bool read(uint64_t addr, std::span<uint8_t> data) const;
  bool write(uint64_t addr, std::span<const uint8_t> data) const;

 private:
  struct Range {
    uint64_t size;
    std::shared_ptr<BusDevice> device;
  };
  // Returns the device covering [addr, addr+len) and its base, or nullptr.
  const std::pair<const uint64_t, Range>* find(uint64_t addr, uint64_t len) const;

  std::string name_;
  mutable std::shared_mutex mutex_;
  std::map<uint64_t, Range> ranges_;  // keyed by base
};

}  // namespace keel
