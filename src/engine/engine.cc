#include "engine/engine.h"

namespace keel {

const char* to_string(VcpuExit exit) {
  switch (exit) {
    case VcpuExit::kStopped: return "stopped";
    case VcpuExit::kShutdown: return "shutdown (triple fault)";
    case VcpuExit::kReset: return "reset";
    case VcpuExit::kPowerOff: return "power off";
    case VcpuExit::kHalted: return "halted with interrupts disabled";
  }
  return "unknown";
}

}  // namespace keel
