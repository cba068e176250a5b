// PvPanic: QEMU's ISA `pvpanic` device, one port at 0x505, with which a guest says it panicked.
// Reading the port gives the events the device supports (PVPANIC_PANICKED | PVPANIC_CRASH_LOADED,
// <misc/pvpanic.h>); writing PVPANIC_PANICKED reports a panic (PowerControl::request_stop(kPanic)),
// PVPANIC_CRASH_LOADED that a crash kernel took over (noted, nothing stops). Linux's pvpanic-mmio
// driver finds it through the DSDT, where the machine describes it as QEMU does: a `QEMU0001`
// device whose _CRS holds this port.
//
// Thread safety: stateless; request_stop() is thread-safe.
#pragma once

#include <cstdint>
#include <span>

#include "bus/io_bus.h"
#include "devices/power.h"

namespace keel {

class PvPanic : public BusDevice {
 public:
  static constexpr uint16_t kPort = 0x505;

  explicit PvPanic(PowerControl& power) : power_(power) {}

  void read(uint64_t offset, std::span<uint8_t> data) override;
  void write(uint64_t offset, std::span<const uint8_t> data) override;

 private:
  PowerControl& power_;
};

}  // namespace keel
