// VirtioDevice: what a virtio device model (blk, net, console, rng) implements, independent of the
// transport; and VirtioInterrupt: how it signals the driver through the transport.
//
// Life cycle, driven by the transport from the driver's device-status writes:
//   activate(ctx)  at DRIVER_OK: queues are configured and enabled; the device starts its work
//                  (worker threads, backend polling). It processes whatever is already available.
//   notify(q)      the driver kicked queue q (on the thread that wrote the notify register: a vCPU,
//                  or the main loop for a KVM ioeventfd). Devices with a worker hand it over.
//   reset()        status 0 written (or the VM stops): stop all work, wait for in-flight I/O that
//                  writes guest memory, forget the queues. Idempotent.
#pragma once

#include <cstdint>
#include <functional>
#include <span>
#include <string>
#include <thread>
#include <vector>

#include "devices/virtio/split_queue.h"
#include "memory/guest_memory.h"
#include "sandbox/syscalls.h"
#include "state/state_format.h"

namespace keel {

namespace sandbox {
class ThreadLauncher;
}

class VirtioInterrupt {
 public:
  virtual ~VirtioInterrupt() = default;
  // Thread-safe: raise the queue's interrupt (its MSI-X vector).
  virtual void signal_queue(uint16_t queue) = 0;
  // Thread-safe: the device configuration changed (config generation moves, config vector fires).
  virtual void signal_config() = 0;
  // Thread-safe: queue `queue` is broken beyond one request; sets DEVICE_NEEDS_RESET.
  virtual void queue_broken(uint16_t queue, const std::string& reason) = 0;
};

struct VirtioContext {
  GuestMemory& memory;
  std::vector<SplitQueue*> queues;  // index = queue number; owned by the transport
  VirtioInterrupt& interrupt;
  uint64_t features;  // negotiated
  sandbox::ThreadLauncher* launcher = nullptr;  // the machine's, if any
};

// Starts a device's worker thread: through the machine's launcher when there is one (a confined
// VMM starts it under the device-worker seccomp filter), else as a plain thread.
std::thread start_device_thread(const VirtioContext& ctx, const std::string& name,
                                std::function<void()> fn);

class VirtioDevice {
 public:
  virtual ~VirtioDevice() = default;

  virtual std::string name() const = 0;
  virtual uint16_t device_id() const = 0;
  // Device-specific and ring feature bits offered; the transport adds VIRTIO_F_VERSION_1.
  virtual uint64_t features() const = 0;
  virtual uint16_t num_queues() const = 0;
  virtual uint16_t queue_max_size(uint16_t queue) const { return 256; }

  // Device-specific configuration space (little-endian layout of the device's config struct).
  virtual uint32_t config_size() const { return 0; }
  virtual void read_config(uint64_t offset, std::span<uint8_t> data) = 0;
  virtual void write_config(uint64_t offset, std::span<const uint8_t> data) {}

  virtual void activate(const VirtioContext& ctx) = 0;
  virtual void notify(uint16_t queue) = 0;
  virtual void reset() = 0;

  // State of the device beyond its queues (console input not yet delivered, ...), as fields of
  // the transport's section. Called while the device is stopped (the transport reset it to
  // quiesce, or has not activated it yet after a restore).
  virtual void save_device_state(state::SectionWriter& out) {}
  virtual void restore_device_state(const state::SectionReader& in) {}

  // An eventfd whose signalling means "queue q was kicked", for KVM ioeventfd; -1 when the device
  // handles kicks inline in notify().
  virtual int kick_fd(uint16_t queue) const { return -1; }
};

// Helper for devices: copies `data` out of a little-endian config struct image.
void read_config_image(std::span<const uint8_t> image, uint64_t offset, std::span<uint8_t> data);

}  // namespace keel
