// Counters for metrics that cost a hot path nothing it would notice: each is written by one thread
// only (a vCPU, a device worker) and read on demand by any other (the control socket's
// query-stats). add() is a relaxed load and store, no locked instruction and no fence, so it costs
// what `++x` costs; a reader sees a recent value, never a torn one.
#pragma once

#include <atomic>
#include <cstdint>

namespace keel {

class Counter {
 public:
  // Only from the counter's one writing thread.
  void add(uint64_t n = 1) {
    value_.store(value_.load(std::memory_order_relaxed) + n, std::memory_order_relaxed);
  }
  // From any thread.
  uint64_t get() const { return value_.load(std::memory_order_relaxed); }

 private:
  std::atomic<uint64_t> value_{0};
};

}  // namespace keel
