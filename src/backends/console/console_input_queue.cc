#include "backends/console/console_input_queue.h"

#include <algorithm>

namespace keel {

ConsoleInputQueue::ConsoleInputQueue(EventLoop& loop, ConsoleInput& device, size_t capacity)
    : device_(device), capacity_(capacity), state_(std::make_shared<State>(State{device, {}})) {
  // Handoff: the guest drained the FIFO (vCPU thread) -> pump() on the loop thread.
  std::weak_ptr<State> weak = state_;
  device_.set_input_space_callback([&loop, weak] {
    loop.post([weak] {
      if (auto state = weak.lock()) pump(*state);
    });
  });
}

ConsoleInputQueue::~ConsoleInputQueue() { device_.set_input_space_callback(nullptr); }

size_t ConsoleInputQueue::write(std::span<const uint8_t> bytes) {
  std::string& pending = state_->pending;
  size_t kept = std::min(capacity_ - std::min(capacity_, pending.size()), bytes.size());
  pending.append(reinterpret_cast<const char*>(bytes.data()), kept);
  pump();
  return bytes.size() - kept;
}

void ConsoleInputQueue::pump() { pump(*state_); }

void ConsoleInputQueue::pump(State& state) {
  if (state.pending.empty()) return;
  size_t taken = state.device.push_input(
      {reinterpret_cast<const uint8_t*>(state.pending.data()), state.pending.size()});
  state.pending.erase(0, taken);
}

}  // namespace keel
