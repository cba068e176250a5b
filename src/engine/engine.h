// The execution-engine interface. `kvm` (engine/kvm/) and `emu` (engine/emu/) implement it; the
// machine (vm/) and the tests use only this. Devices never see the engine: the engine dispatches
// guest port I/O and MMIO to the buses it was given, and exposes its interrupt controllers through
// InterruptController.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "arch/x86/cpuid_policy.h"
#include "arch/x86/cpu_state.h"
#include "bus/io_bus.h"
#include "irq/interrupts.h"
#include "memory/guest_memory.h"

namespace keel {

enum class Accel { kAuto, kKvm, kEmu };

// Why Vcpu::run() returned.
enum class VcpuExit {
  kStopped,    // kick() was called (pause, stop, or a device asked the machine to stop)
  kShutdown,   // triple fault / shutdown: the guest reset itself
  kReset,      // the guest requested a system reset through the engine (e.g. KVM system event)
  kPowerOff,   // the guest requested power-off through the engine (e.g. KVM system event)
  kHalted,     // HLT with interrupts disabled: the vCPU can never run again
};

const char* to_string(VcpuExit exit);

class Vcpu {
 public:
  virtual ~Vcpu() = default;
  virtual uint32_t index() const = 0;

  virtual x86::CpuState get_state() = 0;
  virtual void set_state(const x86::CpuState& state) = 0;
  virtual x86::FpuState get_fpu() = 0;
  virtual void set_fpu(const x86::FpuState& fpu) = 0;
  // Secondary vCPUs wait for INIT/SIPI by default; this makes the vCPU runnable at once with the
  // state set by set_state() (used by test guests that start every vCPU in 64-bit mode).
  virtual void make_runnable() = 0;

  // Runs the guest on the calling thread until kick() or a lifecycle event. Port I/O and MMIO are
  // dispatched to the buses inside. Throws Error on a failure the guest cannot continue from (an
  // internal error, a failed entry), naming the reason, RIP and the instruction bytes.
  virtual VcpuExit run() = 0;
  // Thread-safe and sticky: run() returns kStopped as soon as possible, or at once if the kick
  // arrives before run() is entered.
  virtual void kick() = 0;
};

struct EngineContext {
  GuestMemory& memory;
  IoBus& pio;
  IoBus& mmio;
};

// Which tiers of the emu engine run guest code (the kvm engine ignores it): its interpreter
// alone, or the interpreter until a block is hot and then the block's translation to host code.
enum class EmuTier : uint8_t { kInterp, kJit };

struct EngineConfig {
  uint32_t vcpus = 1;
  EmuTier emu_tier = EmuTier::kJit;
  // emu: executions of a block by the interpreter before it is translated (0: at once). 64, not
  // 16: a restored guest answering its shell translated 6809 blocks in 39 ms of a 71 ms restore at
  // 16, 2086 in 13 ms at 64 (55 ms); boot and compute were no slower (docs/architecture.md).
  uint32_t emu_hot_threshold = 64;
  x86::CpuModel cpu_model = x86::CpuModel::kHost;  // what the guest's CPUID shows
  // emu: bytes of translated code per vCPU before the cache is emptied (0: the default, 64 MiB).
  size_t emu_code_cache_bytes = 0;
};

class Engine {
 public:
  virtual ~Engine() = default;
  virtual std::string name() const = 0;
  virtual uint32_t max_vcpus() const = 0;
  virtual InterruptController& interrupts() = 0;
  // Creates vCPU `index` (its APIC id). vCPU 0 is the bootstrap processor.
  virtual std::unique_ptr<Vcpu> create_vcpu(uint32_t index) = 0;

  // ---- Dirty page log (live migration) ----
  // Starts logging every guest write to RAM (the vCPUs' and the devices') in the guest memory's
  // dirty bitmap (GuestMemory::start_dirty_log). Returns "" when it does, else why this engine
  // cannot (the caller then finds changed pages some other way). From one thread at a time.
  virtual std::string start_dirty_log() { return "the " + name() + " engine logs no dirty pages"; }
  // The RAM pages (bit p = RAM offset p * 4096) written since start_dirty_log() or the previous
  // call, cleared as they are read. Once it returns, every later write sets its bit again.
  virtual std::vector<uint64_t> take_dirty_log() { return {}; }
  // Never throws: it runs on cleanup paths.
  virtual void stop_dirty_log() {}
};

}  // namespace keel
