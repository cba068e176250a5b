// Differential CPU tests on engines (tests/difftest/README.md): random programs at CPL3 on KVM
// (the oracle: guest CPL3 runs natively on this host's CPU) and on emu.
//
// KEEL_DIFFTEST_SEEDS=start:count replaces each test's fixed seed set (a longer sweep).
#include <fmt/format.h>
#include <gtest/gtest.h>

#include <chrono>
#include <cstdlib>
#include <string>

#include "base/error.h"
#include "difftest/compare.h"
#include "difftest/generator.h"
#include "difftest/sandbox.h"
#include "engine/emu/emu_engine.h"
#include "engine/emu/jit/jit.h"
#include "engine/engine_factory.h"

namespace keel::difftest {
namespace {

struct Seeds {
  uint64_t start, count;
};

// The test's own seed set, or KEEL_DIFFTEST_SEEDS=start:count.
Seeds seeds(uint64_t start, uint64_t count) {
  const char* env = std::getenv("KEEL_DIFFTEST_SEEDS");
  if (!env || !*env) return {start, count};
  std::string s(env);
  auto colon = s.find(':');
  if (colon == std::string::npos) throw UsageError("KEEL_DIFFTEST_SEEDS must be start:count");
  return {std::stoull(s.substr(0, colon), nullptr, 0), std::stoull(s.substr(colon + 1), nullptr, 0)};
}

std::unique_ptr<Engine> kvm_engine(const EngineContext& ctx) {
  return create_engine(Accel::kKvm, ctx, EngineConfig{});
}
std::unique_ptr<Engine> emu_engine(const EngineContext& ctx) {
  return create_engine(Accel::kEmu, ctx, EngineConfig{.emu_tier = EmuTier::kInterp});
}
// emu's translation tier, translating every block the first time it runs, or once it ran
// `threshold` times (a loop then changes tiers in the middle of a program).
std::unique_ptr<Engine> emu_jit_engine(const EngineContext& ctx, uint32_t threshold = 0,
                                       size_t code_cache_bytes = 0) {
  return create_engine(Accel::kEmu, ctx,
                       EngineConfig{.emu_tier = EmuTier::kJit,
                                    .emu_hot_threshold = threshold,
                                    .emu_code_cache_bytes = code_cache_bytes});
}

// The translation tier's figures for a sandbox on emu's translation tier.
const emu::jit::Stats& jit_stats(Sandbox& sb) {
  auto& vcpu = dynamic_cast<emu::EmuVcpu&>(sb.vcpu());
  const emu::jit::Stats* stats = vcpu.cpu().jit_stats();
  if (!stats) throw Error("the sandbox's emu vCPU has no translation tier");
  return *stats;
}

// Programs that loop 40 times over their random body (translator chaining, a block turning hot
// in the middle of a run), optionally rewriting one of their own instructions on every iteration
// (code invalidation while it runs).
GenOptions looping(bool self_modifying) {
  GenOptions o;
  o.loop_iterations = 40;
  o.self_modifying = self_modifying;
  return o;
}

// A sandbox on `factory`, or nullptr with the reason when the engine cannot be created here.
std::unique_ptr<Sandbox> try_sandbox(const EngineFactory& factory, std::string& why) {
  try {
    return std::make_unique<Sandbox>(factory);
  } catch (const std::exception& e) {
    why = e.what();
    return nullptr;
  }
}

#define SANDBOX_OR_SKIP(var, factory, name)                                 \
  std::string var##_why;                                                    \
  auto var = try_sandbox(factory, var##_why);                               \
  if (!var) GTEST_SKIP() << name " engine unavailable: " << var##_why

constexpr int kMaxReports = 5;

// Runs `seeds` on both sandboxes and reports every difference (the first few in full).
void run_differential(Sandbox& expected, const char* expected_name, Sandbox& actual,
                      const char* actual_name, Seeds s, const GenOptions& options,
                      const CompareOptions& compare_options) {
  uint64_t failed = 0;
  auto t0 = std::chrono::steady_clock::now();
  for (uint64_t seed = s.start; seed < s.start + s.count; seed++) {
    Program p = generate(seed, options);
    Outcome e = expected.run(p);
    Outcome a = actual.run(p);
    auto diffs = compare(p, e, a, compare_options);
    if (diffs.empty()) continue;
    if (++failed <= kMaxReports) {
      int culprit = first_divergence(p, expected, actual, compare_options);
      std::string where = culprit < 0 ? "" : "first differing after instruction at " +
          fmt::format("{:#x}", p.instrs[culprit].address) + "\n";
      ADD_FAILURE() << report(p, e, a, diffs, expected_name, actual_name) << where;
    }
  }
  double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::printf("[ difftest ] %s vs %s: seeds %llu..%llu, %llu differ, %.2f s\n", expected_name,
              actual_name, static_cast<unsigned long long>(s.start),
              static_cast<unsigned long long>(s.start + s.count - 1),
              static_cast<unsigned long long>(failed), secs);
  EXPECT_EQ(failed, 0u) << failed << " of " << s.count << " programs differ";
}

// The runner is deterministic: every program gives identical results (every flag included) in
// two VMs, one of them reused across all programs.
TEST(DiffTest, KvmAgainstKvmIsIdentical) {
  SANDBOX_OR_SKIP(a, kvm_engine, "kvm");
  SANDBOX_OR_SKIP(b, kvm_engine, "kvm");
  run_differential(*a, "kvm", *b, "kvm (second VM)", seeds(0, 200), GenOptions{},
                   CompareOptions{false});
}

// Every program ends where the generator meant it to: at the stop port, or with an exception at
// its final faulting instruction (an IDIV of INT_MIN by -1 may fault earlier). An unexpected #PF
// or #GP would mean the generator let an access escape the sandbox.
TEST(DiffTest, KvmRunsEveryProgramToItsIntendedEnd) {
  SANDBOX_OR_SKIP(sb, kvm_engine, "kvm");
  Seeds s = seeds(0, 300);
  int faults = 0;
  for (uint64_t seed = s.start; seed < s.start + s.count; seed++) {
    Program p = generate(seed);
    Outcome o = sb->run(p);
    const Instr* fault = nullptr;
    for (const auto& in : p.instrs)
      if (in.cls == InsnClass::kFault) fault = &in;
    if (o.end == Outcome::End::kException) {
      const Instr* at = p.find(o.frame.rip);
      bool intended = fault && (at == fault || !at);  // !at: a jump's fetch fault at its target
      bool accidental_de = o.vector == 0 && at && at->cls == InsnClass::kMulDiv;
      EXPECT_TRUE(intended || accidental_de)
          << "unexpected vector " << o.vector << "\n" << listing(p, o.frame.rip);
      faults += intended;
    } else {
      EXPECT_EQ(o.end, Outcome::End::kDone) << "seed " << seed << ": " << o.message;
      EXPECT_EQ(fault, nullptr) << "seed " << seed << " did not fault\n" << listing(p);
    }
  }
  EXPECT_GT(faults, 0);
}

// A deliberately wrong oracle: an engine whose vCPU reports one corrupted register, flag, XMM
// byte or memory byte after each run. The comparison must catch every one.
class CorruptingVcpu : public Vcpu {
 public:
  CorruptingVcpu(std::unique_ptr<Vcpu> inner, GuestMemory& memory)
      : inner_(std::move(inner)), memory_(memory) {}
  uint32_t index() const override { return inner_->index(); }
  x86::CpuState get_state() override {
    x86::CpuState s = inner_->get_state();
    if (corrupt_ && mode_ == 0) s.gpr[run_ % 16] ^= 1ull << (run_ % 64);
    if (corrupt_ && mode_ == 1) s.rflags ^= 1u << 10;  // DF: never undefined
    if (corrupt_ && mode_ == 2) s.rip += 1;
    return s;
  }
  void set_state(const x86::CpuState& s) override { inner_->set_state(s); }
  x86::FpuState get_fpu() override {
    x86::FpuState f = inner_->get_fpu();
    if (corrupt_ && mode_ == 3) f.fxsave[160 + run_ % 256] ^= 0x10;
    if (corrupt_ && mode_ == 4) f.fxsave[24] ^= 0x01;  // MXCSR.IE
    return f;
  }
  void set_fpu(const x86::FpuState& f) override {
    corrupt_ = false;  // set_fpu comes before run(): report clean state until it returns
    inner_->set_fpu(f);
  }
  void make_runnable() override { inner_->make_runnable(); }
  VcpuExit run() override {
    VcpuExit e = inner_->run();
    run_++;
    mode_ = run_ % 6;
    corrupt_ = true;
    if (mode_ == 5) {
      uint64_t addr = layout::kData + (run_ * 97) % layout::kDataSize;
      memory_.write_obj<uint8_t>(addr, memory_.read_obj<uint8_t>(addr) ^ 0x40);
    }
    return e;
  }
  void kick() override { inner_->kick(); }

 private:
  std::unique_ptr<Vcpu> inner_;
  GuestMemory& memory_;
  uint64_t run_ = 0;
  int mode_ = 0;
  bool corrupt_ = false;
};

class CorruptingEngine : public Engine {
 public:
  explicit CorruptingEngine(const EngineContext& ctx) : inner_(kvm_engine(ctx)), memory_(ctx.memory) {}
  std::string name() const override { return "corrupting " + inner_->name(); }
  uint32_t max_vcpus() const override { return 1; }
  InterruptController& interrupts() override { return inner_->interrupts(); }
  std::unique_ptr<Vcpu> create_vcpu(uint32_t index) override {
    return std::make_unique<CorruptingVcpu>(inner_->create_vcpu(index), memory_);
  }

 private:
  std::unique_ptr<Engine> inner_;
  GuestMemory& memory_;
};

TEST(DiffTest, AWrongOracleIsDetected) {
  SANDBOX_OR_SKIP(good, kvm_engine, "kvm");
  SANDBOX_OR_SKIP(bad, [](const EngineContext& c) { return std::make_unique<CorruptingEngine>(c); },
                  "kvm");
  for (uint64_t seed = 0; seed < 60; seed++) {
    Program p = generate(seed);
    Outcome e = good->run(p);
    Outcome a = bad->run(p);
    EXPECT_FALSE(compare(p, e, a).empty()) << "corruption " << (seed + 1) % 6 << " not detected, seed " << seed;
  }
}

TEST(DiffTest, EmuMatchesKvm) {
  SANDBOX_OR_SKIP(kvm, kvm_engine, "kvm");
  SANDBOX_OR_SKIP(emu, emu_engine, "emu");
  // Every instruction class: emu has no known gaps against KVM.
  run_differential(*kvm, "kvm", *emu, "emu", seeds(0, 300), GenOptions{}, CompareOptions{});
}

// The same programs on the translation tier: every block runs as translated code.
TEST(DiffTest, EmuTranslatedMatchesKvm) {
  SANDBOX_OR_SKIP(kvm, kvm_engine, "kvm");
  SANDBOX_OR_SKIP(emu, [](const EngineContext& c) { return emu_jit_engine(c); }, "emu");
  run_differential(*kvm, "kvm", *emu, "emu jit", seeds(0, 300), GenOptions{}, CompareOptions{});
  const auto& st = jit_stats(*emu);
  EXPECT_GT(st.blocks, 300u);
  // Random programs favour rare instructions (string, SSE, x87-free FP, DIV, RCL...); most are
  // still translated to host code rather than handed to their handler.
  EXPECT_GT(st.native_insns, st.helper_insns);
}

// Loops (blocks linked to each other and to themselves) and self-modifying code, on the
// interpreter, on translated code, and across the change of tier when a block turns hot.
TEST(DiffTest, EmuLoopsAndSelfModifyingCodeMatchKvm) {
  SANDBOX_OR_SKIP(kvm, kvm_engine, "kvm");
  SANDBOX_OR_SKIP(interp, emu_engine, "emu");
  SANDBOX_OR_SKIP(jit, [](const EngineContext& c) { return emu_jit_engine(c); }, "emu");
  SANDBOX_OR_SKIP(hot, [](const EngineContext& c) { return emu_jit_engine(c, 16); }, "emu");
  const Seeds s = seeds(5000, 100);
  for (bool smc : {false, true}) {
    const GenOptions o = looping(smc);
    const uint64_t blocks_before = jit_stats(*jit).blocks;
    run_differential(*kvm, "kvm", *interp, "emu interpreter", s, o, CompareOptions{});
    run_differential(*kvm, "kvm", *jit, "emu jit", s, o, CompareOptions{});
    run_differential(*kvm, "kvm", *hot, "emu jit, hot after 16 runs", s, o, CompareOptions{});
    // Rewriting code the previous iteration ran forces a new translation each time.
    if (smc) {
      EXPECT_GT(jit_stats(*jit).blocks - blocks_before, 10 * s.count);
    }
  }
  EXPECT_GT(jit_stats(*jit).links, 0u) << "no branch was linked to its target";
  EXPECT_GT(jit_stats(*hot).blocks, 0u) << "no loop body turned hot";
}

// A code cache a few blocks large: it fills and is emptied over and over, in the middle of
// loops and of self-modifying programs, and long blocks (60 items) still fit.
TEST(DiffTest, EmuTranslationCacheFlushesKeepProgramsRight) {
  SANDBOX_OR_SKIP(kvm, kvm_engine, "kvm");
  SANDBOX_OR_SKIP(jit, [](const EngineContext& c) { return emu_jit_engine(c, 0, 64 << 10); }, "emu");
  GenOptions o = looping(true);
  o.items = 60;
  run_differential(*kvm, "kvm", *jit, "emu jit, 64 KiB code cache", seeds(7000, 100), o,
                   CompareOptions{});
  EXPECT_GT(jit_stats(*jit).flushes, 10u);
}

}  // namespace
}  // namespace keel::difftest
