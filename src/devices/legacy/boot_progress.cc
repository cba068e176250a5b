#include "devices/legacy/boot_progress.h"

#include <ctime>

namespace keel {

BootProgress::BootProgress(Listener listener) : listener_(std::move(listener)) {}

uint64_t BootProgress::now_ns() {
  timespec ts{};
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<uint64_t>(ts.tv_sec) * 1'000'000'000 + ts.tv_nsec;
}

void BootProgress::read(uint64_t offset, std::span<uint8_t> data) {
  std::lock_guard lock(mutex_);
  for (auto& b : data) b = 0xFF;
  if (offset == 0 && !data.empty()) data[0] = events_.empty() ? 0 : events_.back().code;
}

void BootProgress::write(uint64_t offset, std::span<const uint8_t> data) {
  if (offset != 0 || data.size() != 1) return;
  Event ev{data[0], now_ns()};
  {
    std::lock_guard lock(mutex_);
    // A guest writing codes in a loop must not grow host memory without bound.
    if (events_.size() >= kMaxEvents) return;
    events_.push_back(ev);
  }
  if (listener_) listener_(ev);
}

void BootProgress::save_state(state::SectionWriter& out) {
  std::lock_guard lock(mutex_);
  std::vector<uint8_t> codes;
  for (const Event& e : events_) codes.push_back(e.code);
  out.bytes("codes", codes);
}

void BootProgress::restore_state(const state::SectionReader& in) {
  auto codes = in.bytes("codes", kMaxEvents);
  std::lock_guard lock(mutex_);
  events_.clear();
  for (uint8_t c : codes) events_.push_back({c, 0});
}

std::vector<BootProgress::Event> BootProgress::events() const {
  std::lock_guard lock(mutex_);
  return events_;
}

const char* boot_progress_name(uint8_t code) {
  switch (code) {
    case BootProgress::kInitStarted: return "init started";
    default: return "progress";
  }
}

}  // namespace keel
