// A console device (ConsoleInput) with a small input FIFO that a test drains by hand, as a guest
// would: drain() empties it and, if push_input() refused bytes, runs the space callback.
#pragma once

#include <algorithm>
#include <deque>
#include <functional>
#include <string>

#include "backends/console/console_port.h"

namespace keel::testing {

class FakeConsoleInput : public ConsoleInput {
 public:
  explicit FakeConsoleInput(size_t fifo_size) : fifo_size_(fifo_size) {}

  size_t push_input(std::span<const uint8_t> bytes) override {
    size_t n = std::min(bytes.size(), fifo_size_ - fifo_.size());
    fifo_.insert(fifo_.end(), bytes.begin(), bytes.begin() + static_cast<ptrdiff_t>(n));
    if (n < bytes.size()) refused_ = true;
    ++pushes;
    return n;
  }
  void set_input_space_callback(std::function<void()> callback) override {
    space_ = std::move(callback);
  }

  std::string drain() {
    std::string out(fifo_.begin(), fifo_.end());
    fifo_.clear();
    if (refused_ && space_) {
      refused_ = false;
      space_();
    }
    return out;
  }
  bool has_space_callback() const { return static_cast<bool>(space_); }
  int pushes = 0;  // push_input() calls

 private:
  size_t fifo_size_;
  std::deque<uint8_t> fifo_;
  bool refused_ = false;
  std::function<void()> space_;
};

}  // namespace keel::testing
