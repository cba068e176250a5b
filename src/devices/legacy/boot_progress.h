// BootProgress: a one-byte write-only port (0x520) where a guest reports how far it has booted.
// Each code is timestamped with the host's CLOCK_MONOTONIC when the write arrives, so benchmarks
// can measure "VMM start -> init started" without parsing the console. Code 1 = init started
// (the default guest's /init writes it first thing). Wider writes are ignored; reads return the
// last code written (0 before any).
//
// Thread safety: one mutex; the listener is called on the writing vCPU thread, outside it.
#pragma once

#include <cstdint>
#include <functional>
#include <mutex>
#include <span>
#include <vector>

#include "bus/io_bus.h"

namespace keel {

class BootProgress : public BusDevice {
 public:
  static constexpr uint16_t kPort = 0x520;
  static constexpr uint8_t kInitStarted = 1;

  struct Event {
    uint8_t code;
    uint64_t monotonic_ns;
  };
  using Listener = std::function<void(const Event&)>;

  explicit BootProgress(Listener listener = nullptr);

  void read(uint64_t offset, std::span<uint8_t> data) override;
  void write(uint64_t offset, std::span<const uint8_t> data) override;

  // Every code written so far, oldest first (at most kMaxEvents are kept).
  std::vector<Event> events() const;
  static constexpr size_t kMaxEvents = 1024;

  static uint64_t now_ns();  // CLOCK_MONOTONIC

 private:
  const Listener listener_;
  mutable std::mutex mutex_;
  std::vector<Event> events_;
};

// "init started" and friends, for messages.
const char* boot_progress_name(uint8_t code);

}  // namespace keel
