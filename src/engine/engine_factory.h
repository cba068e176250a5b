// Which engine runs a VM, and creating it.
#pragma once

#include <memory>
#include <string>
#include <string_view>

#include "engine/engine.h"
#include "engine/kvm/kvm_probe.h"

namespace keel {

const char* to_string(Accel accel);
// "auto", "kvm" or "emu"; throws UsageError otherwise.
Accel parse_accel(std::string_view text);

struct EngineChoice {
  Accel accel = Accel::kKvm;  // never kAuto
  std::string reason;         // one line for the user: why this engine
};

// `auto` picks kvm when the probe says KVM can run a stock kernel, else emu. An explicit choice
// is kept (the reason then says what the probe thinks of it).
EngineChoice choose_engine(Accel requested, const KvmProbeResult& probe);

// Creates the engine. `auto` runs probe_kvm() and choose_engine() first.
std::unique_ptr<Engine> create_engine(Accel accel, EngineContext context, EngineConfig config);

}  // namespace keel
