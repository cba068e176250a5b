// Which engine runs a VM, and creating it.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "engine/engine.h"
#include "engine/kvm/kvm_probe.h"
#include "sandbox/syscalls.h"

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

// The system calls an engine's vCPU threads make in their run loop (seccomp, sandbox/). `name` is
// Engine::name(): "kvm" or "emu".
sandbox::AllowList vcpu_syscalls(std::string_view engine_name);
// What the machine's main thread does with the engine while the guest runs and when it tears the
// machine down (routes, irqfds and ioeventfds of devices going away).
sandbox::AllowList main_thread_syscalls(std::string_view engine_name);

// The most vCPUs the engine runs (for kAuto: the most either engine runs, as the choice is not
// made yet). keel run, the machine and the daemon's definitions check counts against it.
uint32_t max_vcpus(Accel accel);
// What a vCPU has counted (metrics), readable from any thread while it runs: its exits to
// userspace by reason (kvm), and the guest instructions it retired (emu, only where every one is
// counted: the interpreter tier, or translated code built to count with KEEL_EMU_STATS or
// KEEL_EMU_PROFILE; counting costs translated code an add per block, so it is not forced on).
struct VcpuCounters {
  std::vector<std::pair<std::string, uint64_t>> exits;
  std::optional<uint64_t> instructions;
};
VcpuCounters vcpu_counters(Vcpu& vcpu);

// Creates the engine. `auto` runs probe_kvm() and choose_engine() first.
std::unique_ptr<Engine> create_engine(Accel accel, EngineContext context, EngineConfig config);

}  // namespace keel
