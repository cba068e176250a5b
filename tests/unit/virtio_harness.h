// A host-side virtio driver for tests: a GuestMemory, the PCI bus with one virtio-pci device on
// it, and a minimal split-virtqueue driver that lays out descriptor chains in guest RAM and talks
// to the device only through its registers (PCI config ports, MMIO BARs). No vCPU is involved.
#pragma once

#include <gtest/gtest.h>

#include <chrono>
#include <condition_variable>
#include <cstring>
#include <memory>
#include <mutex>
#include <optional>
#include <vector>

#include "bus/io_bus.h"
#include "devices/pci/pci_bus.h"
#include "devices/virtio/descriptor_chain.h"
#include "devices/virtio/virtio.h"
#include "devices/virtio/virtio_pci.h"
#include "memory/guest_memory.h"

namespace keel::testing {

// Records MSI messages; the data byte is the vector the harness programmed (0x40 + table index).
class MsiRecorder : public InterruptController {
 public:
  void set_irq(uint32_t, bool) override {}
  void send_msi(const MsiMessage& msg) override {
    std::lock_guard lock(mutex_);
    ++counts_[msg.data & 0xff];
    cv_.notify_all();
  }
  int count(uint32_t data) {
    std::lock_guard lock(mutex_);
    return counts_[data & 0xff];
  }
  // Waits until vector `data` has fired at least `n` times in total; false after 10 s.
  bool wait(uint32_t data, int n) {
    std::unique_lock lock(mutex_);
    return cv_.wait_for(lock, std::chrono::seconds(10), [&] { return counts_[data & 0xff] >= n; });
  }
  // Waits until `pred` holds, re-checking on every interrupt and every millisecond (completions
  // the driver has not consumed yet may legitimately raise no interrupt); false after 10 s.
  template <typename Pred>
  bool wait_until(Pred pred) {
    auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
    std::unique_lock lock(mutex_);
    while (!pred()) {
      if (std::chrono::steady_clock::now() > deadline) return false;
      cv_.wait_for(lock, std::chrono::milliseconds(1));
    }
    return true;
  }

 private:
  std::mutex mutex_;
  std::condition_variable cv_;
  int counts_[256] = {};
};

struct Buf {
  uint64_t gpa;
  uint32_t len;
  bool write;  // device-writable
};

struct UsedElem {
  uint32_t id;
  uint32_t len;
};

class VirtioHarness {
 public:
  static constexpr uint64_t kRam = 16 << 20;
  static constexpr uint32_t kMsiBase = 0x40;  // MSI data for table entry i is kMsiBase + i

  explicit VirtioHarness(std::unique_ptr<VirtioDevice> device)
      : memory(kRam), mmio("mmio"), pio("pio"), bus(mmio) {
    pio.add(PciHostBridge::kPortBase, PciHostBridge::kPortCount,
            std::make_shared<PciHostBridge>(bus));
    transport = std::make_shared<VirtioPciDevice>(std::move(device), memory, &msi);
    slot = bus.add(transport);
    find_caps();
  }
  ~VirtioHarness() { transport->shutdown(); }

  // --- PCI configuration space through the 0xCF8/0xCFC ports.
  uint32_t cfg_read(uint8_t reg, unsigned size) {
    uint32_t addr = 0x8000'0000u | (uint32_t{slot} << 11) | (reg & 0xfc);
    pio.write(0xcf8, {reinterpret_cast<uint8_t*>(&addr), 4});
    uint32_t v = 0;
    pio.read(0xcfc + (reg & 3), {reinterpret_cast<uint8_t*>(&v), size});
    return v;
  }
  void cfg_write(uint8_t reg, unsigned size, uint32_t v) {
    uint32_t addr = 0x8000'0000u | (uint32_t{slot} << 11) | (reg & 0xfc);
    pio.write(0xcf8, {reinterpret_cast<uint8_t*>(&addr), 4});
    pio.write(0xcfc + (reg & 3), {reinterpret_cast<uint8_t*>(&v), size});
  }

  // --- BAR 4 regions, found through the vendor capabilities like a driver does.
  uint64_t read(uint64_t addr, unsigned size) {
    uint64_t v = 0;
    mmio.read(addr, {reinterpret_cast<uint8_t*>(&v), size});
    return v;
  }
  void write(uint64_t addr, unsigned size, uint64_t v) {
    mmio.write(addr, {reinterpret_cast<uint8_t*>(&v), size});
  }
  uint64_t common(uint32_t off, unsigned size) { return read(common_ + off, size); }
  void set_common(uint32_t off, unsigned size, uint64_t v) { write(common_ + off, size, v); }
  uint8_t status() { return common(0x14, 1); }
  uint64_t device_features() {
    set_common(0x00, 4, 0);
    uint64_t lo = common(0x04, 4);
    set_common(0x00, 4, 1);
    return lo | (common(0x04, 4) << 32);
  }
  uint64_t device_cfg(uint32_t off, unsigned size) { return read(device_ + off, size); }
  uint8_t isr() { return read(isr_, 1); }

  // --- Driver initialisation (3.1.1). `features` = what the driver accepts; returns status.
  uint8_t init(uint64_t features = ~0ull, std::vector<uint16_t> queue_sizes = {}) {
    set_common(0x14, 1, 0);
    set_common(0x14, 1, virtio::kStatusAcknowledge);
    set_common(0x14, 1, virtio::kStatusAcknowledge | virtio::kStatusDriver);
    uint64_t f = device_features() & features;
    set_common(0x08, 4, 0);
    set_common(0x0c, 4, static_cast<uint32_t>(f));
    set_common(0x08, 4, 1);
    set_common(0x0c, 4, static_cast<uint32_t>(f >> 32));
    set_common(0x14, 1, virtio::kStatusAcknowledge | virtio::kStatusDriver | virtio::kStatusFeaturesOk);
    if (!(status() & virtio::kStatusFeaturesOk)) return status();
    event_idx = f & virtio::bit(virtio::kFeatureRingEventIdx);
    enable_msix();
    set_common(0x10, 2, 0);  // config vector 0
    uint16_t nq = common(0x12, 2);
    queues.assign(nq, {});
    for (uint16_t q = 0; q < nq; ++q) {
      set_common(0x16, 2, q);
      uint16_t size = q < queue_sizes.size() ? queue_sizes[q] : common(0x18, 2);
      set_common(0x18, 2, size);
      DriverQueue& dq = queues[q];
      dq.size = size;
      dq.desc = alloc(16ull * size, 16);
      dq.avail = alloc(6 + 2ull * size, 2);
      dq.used = alloc(6 + 8ull * size, 4);
      dq.notify = notify_ + uint64_t{common(0x1e, 2)} * notify_multiplier_;
      set_common(0x20, 4, dq.desc);
      set_common(0x24, 4, dq.desc >> 32);
      set_common(0x28, 4, dq.avail);
      set_common(0x2c, 4, 0);
      set_common(0x30, 4, dq.used);
      set_common(0x34, 4, 0);
      set_common(0x1a, 2, q + 1);  // queue q -> vector q+1
      set_common(0x1c, 2, 1);
    }
    set_common(0x14, 1,
               virtio::kStatusAcknowledge | virtio::kStatusDriver | virtio::kStatusFeaturesOk |
                   virtio::kStatusDriverOk);
    return status();
  }

  void enable_msix() {
    uint64_t table = bus.mapped_address(slot, VirtioPciDevice::kMsixBar);
    uint16_t n = (cfg_read(msix_cap_ + 2, 2) & 0x7ff) + 1;
    for (uint16_t i = 0; i < n; ++i) {
      write(table + 16 * i, 4, 0xfee0'0000);
      write(table + 16 * i + 4, 4, 0);
      write(table + 16 * i + 8, 4, kMsiBase + i);
      write(table + 16 * i + 12, 4, 0);
    }
    cfg_write(msix_cap_ + 2, 2, MsixTable::kControlEnable);
  }

  // --- Guest memory for buffers: a bump allocator above the rings.
  uint64_t alloc(uint64_t len, uint64_t align = 8) {
    next_ = (next_ + align - 1) & ~(align - 1);
    uint64_t gpa = next_;
    next_ += len;
    if (next_ > kRam) throw Error("harness out of guest memory");
    return gpa;
  }
  uint64_t put(const void* data, uint32_t len) {
    uint64_t gpa = alloc(len);
    memory.write(gpa, data, len);
    return gpa;
  }

  // --- Split virtqueue, driver side.
  struct DriverQueue {
    uint16_t size = 0;
    uint64_t desc = 0, avail = 0, used = 0, notify = 0;
    uint16_t next_desc = 0;  // descriptors are used round-robin
    uint16_t avail_idx = 0;
    uint16_t last_used = 0;
  };

  void write_desc(uint16_t q, uint16_t index, uint64_t addr, uint32_t len, uint16_t flags,
                  uint16_t next) {
    VirtqDesc d{addr, len, flags, next};
    memory.write_obj(queues[q].desc + 16ull * index, d);
  }
  // Places `bufs` as a chain of direct descriptors and makes it available; returns the head.
  uint16_t add_chain(uint16_t q, const std::vector<Buf>& bufs) {
    DriverQueue& dq = queues[q];
    uint16_t head = dq.next_desc;
    for (size_t i = 0; i < bufs.size(); ++i) {
      uint16_t index = (head + i) % dq.size;
      bool last = i + 1 == bufs.size();
      write_desc(q, index, bufs[i].gpa, bufs[i].len,
                 (bufs[i].write ? kDescFlagWrite : 0) | (last ? 0 : kDescFlagNext),
                 (index + 1) % dq.size);
    }
    dq.next_desc = (head + bufs.size()) % dq.size;
    make_available(q, head);
    return head;
  }
  // Places `bufs` in an indirect table referenced by one descriptor.
  uint16_t add_indirect_chain(uint16_t q, const std::vector<Buf>& bufs) {
    uint64_t table = alloc(16 * bufs.size(), 16);
    for (size_t i = 0; i < bufs.size(); ++i) {
      bool last = i + 1 == bufs.size();
      VirtqDesc d{bufs[i].gpa, bufs[i].len,
                  static_cast<uint16_t>((bufs[i].write ? kDescFlagWrite : 0) | (last ? 0 : kDescFlagNext)),
                  static_cast<uint16_t>(i + 1)};
      memory.write_obj(table + 16 * i, d);
    }
    DriverQueue& dq = queues[q];
    uint16_t head = dq.next_desc;
    write_desc(q, head, table, 16 * bufs.size(), kDescFlagIndirect, 0);
    dq.next_desc = (head + 1) % dq.size;
    make_available(q, head);
    return head;
  }
  void make_available(uint16_t q, uint16_t head) {
    DriverQueue& dq = queues[q];
    memory.write_obj<uint16_t>(dq.avail + 4 + 2ull * (dq.avail_idx % dq.size), head);
    ++dq.avail_idx;
    memory.write_obj<uint16_t>(dq.avail + 2, dq.avail_idx);
  }
  void set_used_event(uint16_t q, uint16_t v) {
    memory.write_obj<uint16_t>(queues[q].avail + 4 + 2ull * queues[q].size, v);
  }
  void kick(uint16_t q) { write(queues[q].notify, 2, q); }

  uint16_t used_idx(uint16_t q) { return memory.read_obj<uint16_t>(queues[q].used + 2); }
  std::optional<UsedElem> get_used(uint16_t q) {
    DriverQueue& dq = queues[q];
    if (used_idx(q) == dq.last_used) return std::nullopt;
    UsedElem e = memory.read_obj<UsedElem>(dq.used + 4 + 8ull * (dq.last_used % dq.size));
    ++dq.last_used;
    if (event_idx) set_used_event(q, dq.last_used);  // as Linux does: interrupt for the next one
    return e;
  }
  // Waits until the device has used `n` more chains than the driver consumed (10 s at most).
  bool wait_pending_used(uint16_t q, uint16_t n = 1) {
    return msi.wait_until([&] { return static_cast<uint16_t>(used_idx(q) - queues[q].last_used) >= n; });
  }
  // Waits for the next used element (10 s at most).
  std::optional<UsedElem> next_used(uint16_t q) {
    if (!wait_pending_used(q)) return std::nullopt;
    return get_used(q);
  }
  // Waits for the queue's interrupt (count `n` in total) and returns the next used element.
  std::optional<UsedElem> wait_used(uint16_t q, int n) {
    if (!msi.wait(kMsiBase + q + 1, n)) return std::nullopt;
    return get_used(q);
  }
  int interrupts(uint16_t q) { return msi.count(kMsiBase + q + 1); }
  int config_interrupts() { return msi.count(kMsiBase); }

  GuestMemory memory;
  IoBus mmio, pio;
  PciBus bus;
  MsiRecorder msi;
  std::shared_ptr<VirtioPciDevice> transport;
  uint8_t slot = 0;
  std::vector<DriverQueue> queues;
  bool event_idx = false;

 private:
  void find_caps() {
    uint64_t bar4 = bus.mapped_address(slot, VirtioPciDevice::kRegionsBar);
    for (uint8_t cap = cfg_read(0x34, 1); cap; cap = cfg_read(cap + 1, 1)) {
      uint8_t id = cfg_read(cap, 1);
      if (id == pci::kCapIdMsix) msix_cap_ = cap;
      if (id != pci::kCapIdVendor) continue;
      uint8_t type = cfg_read(cap + 3, 1);
      uint8_t bar = cfg_read(cap + 4, 1);
      uint32_t offset = cfg_read(cap + 8, 4);
      if (bar != VirtioPciDevice::kRegionsBar) continue;
      if (type == 1) common_ = bar4 + offset;
      if (type == 2) {
        notify_ = bar4 + offset;
        notify_multiplier_ = cfg_read(cap + 16, 4);
      }
      if (type == 3) isr_ = bar4 + offset;
      if (type == 4) device_ = bar4 + offset;
    }
  }

  uint64_t common_ = 0, notify_ = 0, isr_ = 0, device_ = 0;
  uint32_t notify_multiplier_ = 0;
  uint8_t msix_cap_ = 0;
  uint64_t next_ = 0x10000;
};

}  // namespace keel::testing
