// The emu engine's translation tier: a code cache of translated blocks (translator.h) and the
// fixed code around them (entry, exit, jump-cache lookup). One Jit per vCPU, used only by that
// vCPU's thread: translations are private to their vCPU (docs/architecture.md, "emu translator").
#pragma once

#include <cstdint>
#include <cstdio>
#include <memory>
#include <optional>
#include <string>

#include "base/mapping.h"
#include "engine/emu/jit/layout.h"
#include "engine/emu/jit/translator.h"

namespace keel::emu::jit {

struct Stats {
  uint64_t blocks = 0;         // translations made
  uint64_t native_insns = 0;   // instructions translated to host code (static count)
  uint64_t helper_insns = 0;   // instructions translated as calls to their handler (static count)
  uint64_t flushes = 0;        // times the code cache was emptied because it was full
  uint64_t links = 0;          // direct branches patched to their target
  uint64_t exits[8] = {};      // returns to the run loop, by JitExit (index 0: none recorded)
  size_t code_bytes = 0;       // code cache in use now
  size_t capacity = 0;
  double translate_seconds = 0;
};

class Jit {
 public:
  // `call` and `pack_flags` are the Cpu entry points translated code calls (layout.h, Stubs);
  // with `count`, translated code adds the instructions it retires to CpuHot::icount_.
  Jit(const void* call, const void* pack_flags, bool count,
      size_t cache_bytes = kDefaultCacheBytes);
  ~Jit();
  Jit(const Jit&) = delete;
  Jit& operator=(const Jit&) = delete;

  static constexpr size_t kDefaultCacheBytes = 64u << 20;

  // Translates `block` for CPL class `user`; nullopt when the cache is full (flush, then retry).
  std::optional<Translation> translate(const Block& block, bool user);
  // Runs translated code from `code` with `hot` as its CPU until it exits (CpuHot::jit_exit).
  void enter(CpuHot* hot, const void* code) { enter_(hot, code); }
  // Points the direct jump at `slot` (a translation's E9 rel32) at `target`.
  void link(uint8_t* slot, const void* target);
  // Forgets every translation; the caller drops its pointers to them.
  void flush();
  const Stats& stats() const { return stats_; }
  void count_exit(uint8_t kind) { ++stats_.exits[kind < 8 ? kind : 0]; }

 private:
  const bool count_;
  Mapping code_;
  size_t stubs_end_ = 0;  // the fixed code at the start of the cache survives flushes
  size_t used_ = 0;
  Stubs stubs_;
  void (*enter_)(CpuHot*, const void*) = nullptr;
  Stats stats_;
  std::string dump_dir_;  // KEEL_EMU_JIT_DUMP: a file per translation, for reading its code
  // KEEL_EMU_PERFMAP=1: /tmp/perf-PID.map names each translation for `perf report`.
  std::unique_ptr<FILE, int (*)(FILE*)> perf_map_{nullptr, &fclose};
};

}  // namespace keel::emu::jit
