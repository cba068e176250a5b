// What devices may ask of the machine: power off (ACPI S5), reset (i8042 0xFE, ACPI reset, port
// 0xCF9), and what follows a guest panic (pvpanic: the machine pauses or ends, as configured).
// The machine implements it; devices hold a reference and never see the machine itself.
#pragma once

#include <string>

namespace keel {

enum class StopReason { kPowerOff, kReset, kPanic };

class PowerControl {
 public:
  virtual ~PowerControl() = default;
  // Thread-safe; may be called from a vCPU thread inside a device handler. `detail` says what
  // asked ("ACPI S5", "i8042 reset line", ...).
  virtual void request_stop(StopReason reason, std::string detail) = 0;
};

}  // namespace keel
