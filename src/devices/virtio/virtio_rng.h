// VirtioRng: virtio entropy device (5.4). One request queue; each chain's writable buffers are
// filled from the host's getrandom(). Requests are small and served inline on the thread that
// kicked the queue (a vCPU or the main loop), under the device mutex.
#pragma once

#include <mutex>
#include <optional>

#include "devices/virtio/virtio_device.h"

namespace keel {

class VirtioRng : public VirtioDevice {
 public:
  // Upper bound on the bytes served per request, so a guest cannot make one kick expensive.
  static constexpr uint32_t kMaxRequestBytes = 64 * 1024;

  std::string name() const override { return "virtio-rng"; }
  uint16_t device_id() const override;
  uint64_t features() const override;
  uint16_t num_queues() const override { return 1; }
  void read_config(uint64_t, std::span<uint8_t> data) override {}
  void activate(const VirtioContext& ctx) override;
  void notify(uint16_t queue) override;
  void reset() override;

 private:
  void process_locked();

  std::mutex mutex_;
  std::optional<VirtioContext> ctx_;
};

}  // namespace keel
