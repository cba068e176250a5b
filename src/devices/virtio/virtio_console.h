// VirtioConsole: virtio console device (5.3), port 0 only (no MULTIPORT): the guest's hvc0.
//
// Queue 0 (receiveq) carries host input to the guest, queue 1 (transmitq) guest output to the
// host. Both are served inline under the device mutex: output on the thread that kicked the
// transmit queue (a vCPU), input on the thread that calls push_input() (the main loop). Input that
// finds no receive buffers waits in a small buffer; when the guest adds buffers the waiting bytes
// go in and the ConsoleInput space callback tells the terminal to read more.
#pragma once

#include <deque>
#include <mutex>
#include <optional>

#include "backends/console/console_port.h"
#include "devices/virtio/virtio_device.h"

namespace keel {

class VirtioConsole : public VirtioDevice, public ConsoleInput {
 public:
  static constexpr size_t kInputBuffer = 4096;

  explicit VirtioConsole(ConsoleOutput output) : output_(std::move(output)) {}

  std::string name() const override { return "virtio-console"; }
  uint16_t device_id() const override;
  uint64_t features() const override;
  uint16_t num_queues() const override { return 2; }
  void read_config(uint64_t, std::span<uint8_t> data) override {}
  void activate(const VirtioContext& ctx) override;
  void notify(uint16_t queue) override;
  void reset() override;

  void save_device_state(state::SectionWriter& out) override;
  void restore_device_state(const state::SectionReader& in) override;

  // ConsoleInput
  size_t push_input(std::span<const uint8_t> bytes) override;
  void set_input_space_callback(std::function<void()> callback) override {
    space_callback_ = std::move(callback);
  }

 private:
  void transmit_locked();
  void receive_locked();
  void process(uint16_t queue);

  ConsoleOutput output_;
  std::function<void()> space_callback_;
  std::mutex mutex_;
  std::optional<VirtioContext> ctx_;
  std::deque<uint8_t> pending_;  // input not yet in guest buffers
  bool refused_ = false;         // push_input() took less than offered
};

}  // namespace keel
