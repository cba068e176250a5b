// A scripted Engine for machine-level tests that need no KVM: each FakeVcpu runs a behaviour
// function on its vCPU thread, which may touch the buses as a guest would.
#pragma once

#include <atomic>
#include <functional>
#include <memory>
#include <thread>

#include "engine/engine.h"
#include "fake_devices.h"

namespace keel::testing {

class FakeVcpu : public Vcpu {
 public:
  using Behaviour = std::function<VcpuExit(FakeVcpu&)>;
  FakeVcpu(uint32_t index, EngineContext context, Behaviour behaviour)
      : index_(index), context_(context), behaviour_(std::move(behaviour)) {}

  uint32_t index() const override { return index_; }
  x86::CpuState get_state() override { return state_; }
  void set_state(const x86::CpuState& state) override { state_ = state; }
  x86::FpuState get_fpu() override { return {}; }
  void set_fpu(const x86::FpuState&) override {}
  void make_runnable() override { runnable = true; }
  VcpuExit run() override {
    in_run = true;
    ++runs;
    VcpuExit exit = take_kick() ? VcpuExit::kStopped : behaviour_(*this);
    in_run = false;
    return exit;
  }
  void kick() override { kicked_ = true; }

  // For behaviours.
  bool take_kick() { return kicked_.exchange(false); }
  // Spins (yielding) until kicked, as a guest running forever would; returns kStopped.
  VcpuExit run_until_kicked() {
    while (!take_kick()) {
      ++spins;
      std::this_thread::yield();
    }
    return VcpuExit::kStopped;
  }
  void outb(uint16_t port, uint8_t value) { context_.pio.write(port, {&value, 1}); }
  uint8_t inb(uint16_t port) {
    uint8_t v = 0;
    context_.pio.read(port, {&v, 1});
    return v;
  }

  std::atomic<bool> in_run{false};
  std::atomic<uint64_t> runs{0};
  std::atomic<uint64_t> spins{0};
  bool runnable = false;
  x86::CpuState state_;

 private:
  uint32_t index_;
  EngineContext context_;
  Behaviour behaviour_;
  std::atomic<bool> kicked_{false};
};

class FakeEngine : public Engine {
 public:
  FakeEngine(EngineContext context, FakeVcpu::Behaviour behaviour, uint32_t max_vcpus = 8)
      : context_(context), behaviour_(std::move(behaviour)), max_vcpus_(max_vcpus) {}
  std::string name() const override { return "fake"; }
  uint32_t max_vcpus() const override { return max_vcpus_; }
  InterruptController& interrupts() override { return irqs; }
  std::unique_ptr<Vcpu> create_vcpu(uint32_t index) override {
    auto v = std::make_unique<FakeVcpu>(index, context_, behaviour_);
    vcpus.push_back(v.get());
    return v;
  }

  RecordingInterrupts irqs;
  std::vector<FakeVcpu*> vcpus;

 private:
  EngineContext context_;
  FakeVcpu::Behaviour behaviour_;
  uint32_t max_vcpus_;
};

}  // namespace keel::testing
