// One KVM vCPU: its fd, the mmap'd kvm_run page, and the KVM_RUN loop that dispatches port I/O
// and MMIO exits to the buses.
//
// kick() may come from any thread. It sets kvm_run->immediate_exit (so a KVM_RUN about to start
// returns at once) and, if run() is active, sends SIGUSR1 to the thread inside it (so a KVM_RUN in
// progress, guest code or an in-kernel HLT, returns EINTR). The SIGUSR1 handler is a no-op
// installed without SA_RESTART; run() unblocks SIGUSR1 on its thread.
#pragma once

#include <pthread.h>

#include <array>
#include <atomic>
#include <csignal>
#include <cstdint>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

#include "base/counter.h"
#include "base/fd.h"
#include "base/mapping.h"
#include "engine/engine.h"

struct kvm_run;

namespace keel {

inline constexpr int kKvmKickSignal = SIGUSR1;

// Installs the no-op SIGUSR1 handler (once per process; idempotent).
void install_kvm_kick_handler();

class KvmVcpu final : public Vcpu {
 public:
  // `xsave`: KVM_CAP_XSAVE is present; the FPU state then goes through KVM_GET/SET_XSAVE, whose
  // legacy area is the FXSAVE image (KVM_GET_FPU reports MXCSR as 0 on some hosts).
  KvmVcpu(uint32_t index, UniqueFd fd, size_t run_size, EngineContext context, bool xsave);

  uint32_t index() const override { return index_; }
  x86::CpuState get_state() override;
  void set_state(const x86::CpuState& state) override;
  x86::FpuState get_fpu() override;
  void set_fpu(const x86::FpuState& fpu) override;
  void make_runnable() override;
  VcpuExit run() override;
  void kick() override;

  int fd() const { return fd_.get(); }

  // Exits to userspace by reason (metrics), counted by the vCPU's thread: (name, count) pairs.
  std::vector<std::pair<const char*, uint64_t>> exit_counts() const;
  // "RIP 0x... bytes 0f 0b ..." for error messages: the instruction at RIP, read through the
  // guest's page tables where they resolve.
  std::string describe_position();

 private:
  void handle_io();
  void handle_mmio();
  // Consumes a pending kick; true if there was one.
  bool take_kick();

  uint32_t index_;
  UniqueFd fd_;
  Mapping run_mapping_;
  kvm_run* run_;
  EngineContext context_;
  bool xsave_;

  std::mutex kick_mutex_;      // guards thread_/in_run_ against the kicker
  pthread_t thread_{};
  bool in_run_ = false;
  std::atomic<bool> kicked_{false};

  enum ExitKind { kExitIo, kExitMmio, kExitSignal, kExitHlt, kExitShutdown, kExitSystemEvent,
                  kExitOther, kExitKinds };
  std::array<Counter, kExitKinds> exits_;
};

}  // namespace keel
