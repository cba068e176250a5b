// emu's two tiers must agree: a generated program (tests/difftest, the generator the differential
// tests use against KVM) runs on the interpreter and on the translation tier, and the outcomes
// (registers, flags but the undefined ones, XMM, memory, exceptions) must be the same. Needs no
// KVM, so it runs anywhere the fuzzers do.
//
// Input: 8 bytes seed, then one byte of shape: bit 0 loops (40 iterations), bit 1 self-modifying
// code, bit 2 translate after 3 runs instead of at once, bits 3..7 the share of items (4..35).
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>

#include "difftest/compare.h"
#include "difftest/generator.h"
#include "difftest/sandbox.h"
#include "engine/engine_factory.h"

namespace {

using namespace keel;
using namespace keel::difftest;

std::unique_ptr<Sandbox> make_sandbox(EmuTier tier, uint32_t threshold) {
  return std::make_unique<Sandbox>([tier, threshold](const EngineContext& ctx) {
    return create_engine(Accel::kEmu, ctx,
                         EngineConfig{.emu_tier = tier, .emu_hot_threshold = threshold});
  });
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 9) return 0;
  static auto interp = make_sandbox(EmuTier::kInterp, 0);
  static auto jit_now = make_sandbox(EmuTier::kJit, 0);
  static auto jit_hot = make_sandbox(EmuTier::kJit, 3);
  uint64_t seed;
  std::memcpy(&seed, data, 8);
  const uint8_t shape = data[8];
  GenOptions o;
  o.loop_iterations = (shape & 1) ? 40 : 0;
  o.self_modifying = shape & 2;
  o.items = 4 + (shape >> 3);
  Program p = generate(seed, o);
  Sandbox& jit = (shape & 4) ? *jit_hot : *jit_now;
  Outcome a = interp->run(p);
  Outcome b = jit.run(p);
  auto diffs = compare(p, a, b, CompareOptions{});
  if (!diffs.empty()) {
    std::fprintf(stderr, "%s", report(p, a, b, diffs, "emu interpreter", "emu jit").c_str());
    std::abort();
  }
  return 0;
}
