// IsaDebugExit: QEMU's isa-debug-exit device at port 0xF4 (4 ports, as kvm-unit-tests configures
// it: iobase=0xf4,iosize=0x4). A write of value V ends the VM with exit status (V << 1) | 1, so a
// test kernel can report its result through keel's exit status the way it does through QEMU's.
// Reads return 0. Only present when asked for (`keel run --isa-debug-exit`).
#pragma once

#include <cstdint>
#include <functional>
#include <span>

#include "bus/io_bus.h"

namespace keel {

class IsaDebugExit : public BusDevice {
 public:
  static constexpr uint16_t kBasePort = 0xf4;
  static constexpr uint16_t kPortCount = 4;

  // Called with the exit status on the writing vCPU thread.
  using ExitFn = std::function<void(int status)>;
  explicit IsaDebugExit(ExitFn exit) : exit_(std::move(exit)) {}

  static int status_for(uint32_t value) { return static_cast<int>((value << 1) | 1); }

  void read(uint64_t, std::span<uint8_t> data) override {
    for (auto& b : data) b = 0;
  }
  void write(uint64_t offset, std::span<const uint8_t> data) override {
    uint32_t v = 0;
    for (size_t i = 0; i < data.size() && i < 4; ++i) v |= uint32_t{data[i]} << (8 * i);
    exit_(status_for(v));
  }

 private:
  const ExitFn exit_;
};

}  // namespace keel
