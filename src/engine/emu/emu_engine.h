// The `emu` engine: keel's software x86-64 CPU behind the Engine/Vcpu interfaces.
#pragma once

#include <memory>

#include "engine/emu/cpu.h"
#include "engine/emu/local_apic.h"
#include "engine/engine.h"
#include "state/state_format.h"

namespace keel::x86 {
struct VcpuSnapshot;
}  // namespace keel::x86

namespace keel::emu {

// What the emu engine needs from the emu platform (engine/emu/platform/) for one VM: the guest
// clock, the interrupt controller devices raise lines on (IOAPIC + MSI), and one local APIC per
// vCPU. The platform owns them; they outlive every vCPU.
class EmuPlatform {
 public:
  virtual ~EmuPlatform() = default;
  virtual GuestClock& clock() = 0;
  virtual InterruptController& interrupts() = 0;
  virtual LocalApic& local_apic(uint32_t index) = 0;
  virtual bool tsc_deadline_supported() const = 0;
  // Snapshots (engine/emu/platform/platform_state.cc): the clock, the local APICs, the IOAPIC,
  // PICs and PIT, as sections "emu/...". restore_state() runs before any vCPU is restored or
  // runs; it continues the guest clock where the snapshot stopped it. A platform that cannot
  // (test stubs) throws Error.
  virtual void save_state(state::Writer& out) { throw Error("this emu platform cannot save state"); }
  virtual void restore_state(const state::Document& in) {
    throw Error("this emu platform cannot restore state");
  }
};

class EmuEngine;

class EmuVcpu : public Vcpu {
 public:
  EmuVcpu(uint32_t index, const Cpu::Deps& deps, EmuEngine* owner);
  ~EmuVcpu() override;
  uint32_t index() const override { return index_; }
  x86::CpuState get_state() override { return cpu_.get_state(); }
  void set_state(const x86::CpuState& s) override { cpu_.set_state(s); }
  x86::FpuState get_fpu() override { return cpu_.get_fpu(); }
  void set_fpu(const x86::FpuState& f) override { cpu_.set_fpu(f); }
  // Secondary vCPUs start waiting for a SIPI (Linux starts them with INIT/SIPI); test guests make
  // them runnable with the state they set.
  void make_runnable() override { waiting_for_sipi_ = false; }
  VcpuExit run() override;
  void kick() override { cpu_.kick(); }

  Cpu& cpu() { return cpu_; }

  // Snapshots (cpu_state.cc): registers, FPU/SSE, the MSRs the Cpu keeps, the guest TSC and
  // whether the vCPU still waits for its SIPI. Only while the vCPU is not running; restore after
  // the platform (its clock and local APIC).
  void save_snapshot(x86::VcpuSnapshot& out);
  void restore_snapshot(const x86::VcpuSnapshot& in);

 private:
  uint32_t index_;
  Cpu cpu_;
  EmuEngine* owner_;  // outlives its vCPUs
  bool waiting_for_sipi_;
  double run_cpu_seconds_ = 0;  // CPU time spent in run()
};

class EmuEngine : public Engine {
 public:
  // Throws UsageError when more vCPUs are asked for than the engine runs.
  EmuEngine(const EngineContext& ctx, const EngineConfig& config,
            std::unique_ptr<EmuPlatform> platform);
  ~EmuEngine() override;
  std::string name() const override { return "emu"; }
  uint32_t max_vcpus() const override { return kMaxVcpus; }
  // xAPIC ids are 8 bits, 0xFF broadcasts.
  static constexpr uint32_t kMaxVcpus = 254;
  InterruptController& interrupts() override { return platform_->interrupts(); }
  std::unique_ptr<Vcpu> create_vcpu(uint32_t index) override;
  EmuPlatform& platform() { return *platform_; }
  // The MMU marks a page dirty when it grants a vCPU write access to it (a write tag in the soft
  // TLB) and on every slow-path store; taking the log revokes every granted write access, with
  // the vCPUs stopped at a block boundary, so the next store to any page marks it again.
  std::string start_dirty_log() override;
  std::vector<uint64_t> take_dirty_log() override;
  void stop_dirty_log() override;

 private:
  EngineContext ctx_;
  EngineConfig config_;
  bool count_instructions_ = false;
  std::unique_ptr<EmuPlatform> platform_;
  VcpuGroup group_;  // shared code pages, exclusive execution
};

}  // namespace keel::emu
