// Snapshots of an engine and its vCPUs (vm/machine_snapshot.cc): one section "engine" naming it,
// one section "cpuN" per vCPU (x86::VcpuSnapshot's encoding, arch/x86/machine_state.h) and the
// engine's own sections for its interrupt controllers, timers and clock ("emu/...").
//
// Both are called with every vCPU stopped. restore_engine_state() runs on a freshly built engine
// and vCPUs before anything runs; it throws state::StateError (or Error) naming what it refuses,
// and the caller then discards the machine.
#pragma once

#include <memory>
#include <span>

#include "engine/engine.h"
#include "state/state_format.h"

namespace keel {

void save_engine_state(Engine& engine, std::span<const std::unique_ptr<Vcpu>> vcpus,
                       state::Writer& out);
void restore_engine_state(Engine& engine, std::span<const std::unique_ptr<Vcpu>> vcpus,
                          const state::Document& in);

}  // namespace keel
