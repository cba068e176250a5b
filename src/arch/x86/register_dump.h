// A vCPU's registers as text, laid out as QEMU's monitor prints them (`info registers`), so what
// people know how to read from QEMU reads the same from keel's control socket.
#pragma once

#include <string>

#include "arch/x86/cpu_state.h"

namespace keel::x86 {

// Lines end in "\r\n", as the monitor's. `halted` fills in HLT=.
std::string format_registers(const CpuState& state, bool halted = false);

}  // namespace keel::x86
