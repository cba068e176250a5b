// Test doubles for what devices see of the machine: an interrupt controller that records line
// levels and a PowerControl that records stop requests.
#pragma once

#include <map>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

#include "devices/power.h"
#include "irq/interrupts.h"

namespace keel::testing {

class RecordingInterrupts : public InterruptController {
 public:
  void set_irq(uint32_t gsi, bool level) override {
    std::lock_guard lock(mutex);
    levels[gsi] = level;
    history.emplace_back(gsi, level);
  }
  void send_msi(const MsiMessage& msg) override {
    std::lock_guard lock(mutex);
    msis.push_back(msg);
  }
  bool level(uint32_t gsi) {
    std::lock_guard lock(mutex);
    return levels[gsi];
  }
  // Number of rising edges seen on `gsi`.
  int edges(uint32_t gsi) {
    std::lock_guard lock(mutex);
    int n = 0;
    for (auto& [g, l] : history)
      if (g == gsi && l) ++n;
    return n;
  }

  std::mutex mutex;
  std::map<uint32_t, bool> levels;
  std::vector<std::pair<uint32_t, bool>> history;
  std::vector<MsiMessage> msis;
};

class RecordingPower : public PowerControl {
 public:
  void request_stop(StopReason reason, std::string detail) override {
    std::lock_guard lock(mutex);
    requests.emplace_back(reason, std::move(detail));
  }
  std::mutex mutex;
  std::vector<std::pair<StopReason, std::string>> requests;
};

}  // namespace keel::testing
