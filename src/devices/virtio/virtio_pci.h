// VirtioPciDevice: the modern virtio-pci transport (virtio 1.x, 4.1) around one VirtioDevice.
//
// BAR 1 (32-bit, 4 KiB) holds the MSI-X table and PBA: one vector for configuration changes and
// one per queue. BAR 4 (64-bit, 16 KiB) holds the four regions the vendor capabilities point at:
//   0x0000 common configuration   0x1000 ISR status   0x2000 device configuration
//   0x3000 notifications (queue q at 0x3000 + 4*q)
// plus the PCI configuration access capability the spec requires.
//
// Threads: register accesses come from vCPU threads and are serialised by the transport mutex
// (device activation and reset run under it). signal_queue/signal_config/queue_broken come from
// device threads and touch only atomics and the MSI-X table (its own mutex).
#pragma once

#include <array>
#include <atomic>
#include <memory>
#include <mutex>
#include <vector>

#include "devices/pci/pci_device.h"
#include "devices/virtio/virtio.h"
#include "devices/virtio/virtio_device.h"
#include "state/persistent.h"

namespace keel {

class VirtioPciDevice : public PciDevice, public VirtioInterrupt, public state::Persistent {
 public:
  static constexpr int kMsixBar = 1;
  static constexpr int kRegionsBar = 4;
  static constexpr uint64_t kCommonOffset = 0x0000;
  static constexpr uint64_t kIsrOffset = 0x1000;
  static constexpr uint64_t kDeviceConfigOffset = 0x2000;
  static constexpr uint64_t kNotifyOffset = 0x3000;
  static constexpr uint32_t kNotifyMultiplier = 4;
  static constexpr uint64_t kCommonSize = 0x38;

  VirtioPciDevice(std::unique_ptr<VirtioDevice> device, GuestMemory& memory,
                  InterruptController* interrupts);
  ~VirtioPciDevice() override;

  std::string name() const override { return device_->name(); }
  VirtioDevice& device() { return *device_; }
  uint8_t status() const { return status_.load(); }
  uint64_t driver_features() const;

  // VirtioInterrupt
  void signal_queue(uint16_t queue) override;
  void signal_config() override;
  void queue_broken(uint16_t queue, const std::string& reason) override;

  // Stops the device's work (VM shutdown): same as a driver reset.
  void shutdown();
  // Where device worker threads come from (the machine's launcher); set before the guest runs.
  void set_thread_launcher(sandbox::ThreadLauncher* launcher) { launcher_ = launcher; }

  // Snapshots. quiesce() stops a live device's work (worker threads joined, in-flight requests
  // completed and published) without the driver noticing; unquiesce() lets it go on, or, after
  // restore_state(), starts it. Called with the vCPUs paused.
  void quiesce();
  void unquiesce();
  // PCI configuration, MSI-X, transport registers, queues and the device's own state.
  void save_state(state::SectionWriter& out) override;
  void restore_state(const state::SectionReader& in) override;

 protected:
  void bar_read(int bar, uint64_t offset, std::span<uint8_t> data) override;
  void bar_write(int bar, uint64_t offset, std::span<const uint8_t> data) override;
  void config_read_hook(uint32_t offset, unsigned size, uint32_t& value) override;
  void config_written(uint32_t offset, unsigned size) override;

 private:
  uint32_t common_read(uint32_t field) const;          // field = offset of a register
  void common_write(uint32_t field, uint32_t value);  // mutex_ held
  void write_status(uint8_t value);
  void reset_locked();
  void activate_locked();
  SplitQueue* selected_queue();
  const SplitQueue* selected_queue() const;
  uint16_t checked_vector(uint16_t vector) const;

  std::unique_ptr<VirtioDevice> device_;
  GuestMemory& memory_;
  uint64_t offered_;
  uint16_t num_queues_;
  uint8_t pci_cfg_cap_ = 0;

  mutable std::mutex mutex_;
  uint32_t device_feature_select_ = 0;
  uint32_t driver_feature_select_ = 0;
  uint64_t driver_features_ = 0;
  uint16_t queue_select_ = 0;
  bool active_ = false;
  bool quiesced_ = false;  // active_ but the device's work is stopped (snapshot in progress)
  std::vector<std::unique_ptr<SplitQueue>> queues_;

  std::atomic<uint8_t> status_{0};
  std::atomic<uint8_t> isr_{0};
  std::atomic<uint8_t> config_generation_{0};
  std::atomic<uint16_t> config_vector_{virtio::kNoVector};
  std::unique_ptr<std::atomic<uint16_t>[]> queue_vectors_;
  sandbox::ThreadLauncher* launcher_ = nullptr;
};

}  // namespace keel
