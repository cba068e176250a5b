// ConsoleInputQueue: console input that arrives faster than the guest reads it (a paste relayed
// by the daemon through the control socket), kept here and fed to the device as the guest
// drains it, so nothing is lost.
//
// Flow: write() hands bytes to ConsoleInput::push_input(); what the device's FIFO does not take is
// queued, up to `capacity` bytes. When the guest has drained the FIFO the device's space callback
// runs on a vCPU thread (no device lock held); it only posts pump() to the EventLoop (cross-thread
// handoff: vCPU thread -> loop thread), and pump() pushes the next part on the loop thread. Input
// beyond `capacity` is dropped and write() says how much: a client that pastes more than 64 KiB
// faster than the guest reads loses the excess, as a full tty input buffer would.
//
// Threads: construct, write(), pump() and destroy on the loop thread (or before the loop runs).
// A pump() posted before destruction and run after it does nothing.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <string>

#include "backends/console/console_port.h"
#include "base/event_loop.h"

namespace keel {

class ConsoleInputQueue {
 public:
  static constexpr size_t kDefaultCapacity = 64 * 1024;

  // Installs `device`'s input space callback (so create it before the guest runs).
  ConsoleInputQueue(EventLoop& loop, ConsoleInput& device, size_t capacity = kDefaultCapacity);
  ~ConsoleInputQueue();
  ConsoleInputQueue(const ConsoleInputQueue&) = delete;
  ConsoleInputQueue& operator=(const ConsoleInputQueue&) = delete;

  // Queues `bytes` behind what is pending and gives the device what it takes now. Returns how many
  // bytes were dropped because the queue was full (0 normally).
  size_t write(std::span<const uint8_t> bytes);
  // Gives the device as much of the queue as it takes.
  void pump();
  size_t pending() const { return state_->pending.size(); }

 private:
  struct State {
    ConsoleInput& device;
    std::string pending;
  };
  static void pump(State& state);

  ConsoleInput& device_;
  size_t capacity_;
  // Owned here alone; the space callback holds a weak_ptr, so a late pump() finds it gone.
  std::shared_ptr<State> state_;
};

}  // namespace keel
