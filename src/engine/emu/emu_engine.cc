#include "engine/emu/emu_engine.h"

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <ctime>

#include "base/error.h"
#include "engine/emu/jit/jit.h"

namespace keel::emu {

EmuVcpu::EmuVcpu(uint32_t index, const Cpu::Deps& deps, EmuEngine* owner)
    : index_(index), cpu_(deps), owner_(owner), waiting_for_sipi_(index != 0) {}

namespace {
double thread_cpu_seconds() {
  timespec ts;
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return double(ts.tv_sec) + double(ts.tv_nsec) * 1e-9;
}
}  // namespace

EmuVcpu::~EmuVcpu() {
  // KEEL_EMU_STATS=1: guest instructions and emulation speed (CPU time of run()) at exit.
  if (const char* s = std::getenv("KEEL_EMU_STATS"); s && *s == '1' && run_cpu_seconds_ > 0) {
    const uint64_t total = cpu_.instructions(), interpreted = cpu_.interpreted_instructions();
    std::fprintf(stderr,
                 "emu: vCPU %u ran %llu instructions in %.2f s of CPU time (%.1f MIPS): %llu "
                 "interpreted, %llu in translated code\n",
                 index_, static_cast<unsigned long long>(total), run_cpu_seconds_,
                 double(total) / run_cpu_seconds_ / 1e6,
                 static_cast<unsigned long long>(interpreted),
                 static_cast<unsigned long long>(total - interpreted));
    std::fprintf(stderr,
                 "emu: vCPU %u decoded %llu blocks; %llu code pages were written and dropped; "
                 "%llu page walks, %llu TLB flushes\n",
                 index_, static_cast<unsigned long long>(cpu_.blocks_decoded()),
                 static_cast<unsigned long long>(cpu_.code_pages_invalidated()),
                 static_cast<unsigned long long>(cpu_.page_walks()),
                 static_cast<unsigned long long>(cpu_.tlb_flushes()));
    if (const jit::Stats* j = cpu_.jit_stats()) {
      std::fprintf(stderr,
                   "emu: vCPU %u translated %llu blocks (%llu instructions to host code, %llu to "
                   "handler calls) in %.3f s; code cache %.1f of %zu MiB, %llu flushes, %llu "
                   "direct links\n",
                   index_, static_cast<unsigned long long>(j->blocks),
                   static_cast<unsigned long long>(j->native_insns),
                   static_cast<unsigned long long>(j->helper_insns), j->translate_seconds,
                   double(j->code_bytes) / double(1 << 20), j->capacity >> 20,
                   static_cast<unsigned long long>(j->flushes),
                   static_cast<unsigned long long>(j->links));
      std::fprintf(stderr,
                   "emu: vCPU %u left translated code %llu times: %llu faults, %llu for the run "
                   "loop, %llu entry checks, %llu unlinked branches, %llu jump-cache misses\n",
                   index_,
                   static_cast<unsigned long long>(j->exits[1] + j->exits[2] + j->exits[3] +
                                                   j->exits[4] + j->exits[5] + j->exits[6]),
                   static_cast<unsigned long long>(j->exits[1]),
                   static_cast<unsigned long long>(j->exits[2]),
                   static_cast<unsigned long long>(j->exits[4]),
                   static_cast<unsigned long long>(j->exits[5]),
                   static_cast<unsigned long long>(j->exits[6]));
    }
  }
}

VcpuExit EmuVcpu::run() {
  // An application processor waits for its start-up IPI (INIT first: an INIT while waiting
  // changes nothing), then starts in real mode at the SIPI's vector.
  while (waiting_for_sipi_) {
    if (cpu_.take_kick()) return VcpuExit::kStopped;
    LocalApic& apic = cpu_.apic();
    (void)apic.take_init();
    if (std::optional<uint8_t> vector = apic.take_sipi()) {
      cpu_.start_at_sipi(*vector);
      waiting_for_sipi_ = false;
      break;
    }
    apic.wait_for_event(cpu_.kick_flag());
  }
  double t0 = thread_cpu_seconds();
  Cpu::Exit e = cpu_.run();
  run_cpu_seconds_ += thread_cpu_seconds() - t0;
  switch (e) {
    case Cpu::Exit::kStopped: return VcpuExit::kStopped;
    case Cpu::Exit::kShutdown: return VcpuExit::kShutdown;
    case Cpu::Exit::kHalted: return VcpuExit::kHalted;
    case Cpu::Exit::kInit:
      waiting_for_sipi_ = true;  // the next run() waits for the SIPI
      return VcpuExit::kStopped;
  }
  return VcpuExit::kStopped;
}

EmuEngine::EmuEngine(const EngineContext& ctx, const EngineConfig& config,
                     std::unique_ptr<EmuPlatform> platform)
    : ctx_(ctx),
      config_(config),
      platform_(std::move(platform)),
      group_((ctx.memory.end() + 4095) / 4096) {
  // Counting costs translated code a memory add per block: only for KEEL_EMU_STATS/PROFILE.
  for (const char* name : {"KEEL_EMU_STATS", "KEEL_EMU_PROFILE"})
    if (const char* v = std::getenv(name); v && *v == '1') count_instructions_ = true;
  if (config.vcpus > kMaxVcpus)
    throw UsageError("the emu engine runs at most " + std::to_string(kMaxVcpus) + " vCPUs");
  // Writes that bypass the CPU's MMU (device DMA, the loader) drop decoded code of those pages
  // on every vCPU. Called from any thread; the vCPUs only get the pages queued.
  ctx_.memory.set_write_observer([this](uint64_t gpa, uint64_t len) {
    if (len == 0) return;
    for (uint64_t p = gpa >> 12; p <= (gpa + len - 1) >> 12; ++p)
      if (group_.holds_code(p)) group_.code_written(p, nullptr);
  });
}

EmuEngine::~EmuEngine() { ctx_.memory.set_write_observer(nullptr); }

std::string EmuEngine::start_dirty_log() {
  ctx_.memory.start_dirty_log();
  // Write access granted before the log started marked nothing.
  group_.revoke_all_writes();
  return {};
}

std::vector<uint64_t> EmuEngine::take_dirty_log() {
  // Bits first, then the revocation: a page written through a grant that outlives the take was
  // marked when it was granted (after the previous revocation), so it is in these bits, and it
  // is read by the caller only after the revocation returned, with every such store done.
  std::vector<uint64_t> bits = ctx_.memory.take_dirty();
  group_.revoke_all_writes();
  return bits;
}

void EmuEngine::stop_dirty_log() { ctx_.memory.stop_dirty_log(); }

std::unique_ptr<Vcpu> EmuEngine::create_vcpu(uint32_t index) {
  if (index >= std::max(config_.vcpus, 1u))
    throw UsageError("vCPU " + std::to_string(index) + " of an emu VM with " +
                     std::to_string(config_.vcpus));
  Cpu::Deps deps{ctx_.memory, ctx_.pio, ctx_.mmio, platform_->local_apic(index),
                 platform_->clock(), index, platform_->tsc_deadline_supported(), true,
                 config_.emu_tier, config_.emu_hot_threshold, count_instructions_,
                 config_.emu_code_cache_bytes, &group_, config_.vcpus > 1, config_.cpu_model};
  return std::make_unique<EmuVcpu>(index, deps, this);
}

}  // namespace keel::emu
