// The seam between a guest-facing console device (Serial16550 today, virtio-console later) and
// whatever carries its bytes on the host (the terminal, a socket relayed by the daemon, a test).
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <span>

namespace keel {

// Bytes the guest writes to its console. Called on a vCPU thread, possibly from several at once
// (the device serialises its own calls); must not call back into the device.
using ConsoleOutput = std::function<void(std::span<const uint8_t> bytes)>;

// Bytes typed for the guest. A device implements this.
class ConsoleInput {
 public:
  virtual ~ConsoleInput() = default;
  // Thread-safe. Queues as many of `bytes` as the device can hold and returns how many; the
  // caller keeps the rest and retries after the space callback runs.
  virtual size_t push_input(std::span<const uint8_t> bytes) = 0;
  // Called (on a vCPU thread, with no device lock held) when the guest has drained input that
  // push_input() could not fully accept. Set once, before the guest runs.
  virtual void set_input_space_callback(std::function<void()> callback) = 0;
};

}  // namespace keel
