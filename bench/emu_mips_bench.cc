// Guest instructions per second on a CPU-bound loop in guest user space: keel's emu engine
// against the same loop under KVM (which runs CPL3 natively on the host CPU). The loop runs in the
// differential tests' CPL3 sandbox (tests/difftest/sandbox.h), so both engines execute exactly
// the same code from the same state.
#include <unistd.h>

#include <chrono>
#include <optional>
#include <string>

#include "bench.h"
#include "difftest/sandbox.h"
#include "base/error.h"
#include "engine/engine_factory.h"

namespace keel::bench {
namespace {

constexpr uint32_t kIterations = 20'000'000;
constexpr uint64_t kInstructionsPerIteration = 5;

// mov ecx, N; loop: add rax, rbx; xor rdx, rax; rol rbx, 1; dec ecx; jnz loop; then the stop port.
difftest::Program loop_program() {
  using difftest::Instr;
  std::vector<std::vector<uint8_t>> code = {
      {0xb9, uint8_t(kIterations), uint8_t(kIterations >> 8), uint8_t(kIterations >> 16),
       uint8_t(kIterations >> 24)},
      {0x48, 0x01, 0xd8},  // add rax, rbx
      {0x48, 0x31, 0xc2},  // xor rdx, rax
      {0x48, 0xd1, 0xc3},  // rol rbx, 1
      {0xff, 0xc9},        // dec ecx
      {0x75, 0xf4},        // jnz -12 (back to add)
      {0xe6, uint8_t(difftest::layout::kPortDone)},  // out kPortDone, al
      {0xeb, 0xfe},                                  // jmp $
  };
  difftest::Program p;
  uint64_t addr = difftest::layout::kCode;
  for (auto& bytes : code) {
    Instr in;
    in.address = addr;
    addr += bytes.size();
    in.bytes = std::move(bytes);
    p.instrs.push_back(std::move(in));
  }
  p.gpr[x86::RBX] = 0x9e3779b97f4a7c15ull;
  p.gpr[x86::RSP] = difftest::layout::kInitialRsp;
  p.data.assign(difftest::layout::kDataSize, 0);
  p.rodata.assign(4096, 0);
  p.stack.assign(difftest::layout::kStackSize, 0);
  return p;
}

// Millions of guest instructions per second of wall time running the loop on `accel`.
double mips(Accel accel) {
  difftest::Sandbox sandbox(
      [accel](const EngineContext& ctx) { return create_engine(accel, ctx, EngineConfig{}); });
  auto program = loop_program();
  auto t0 = std::chrono::steady_clock::now();
  auto outcome = sandbox.run(program, std::chrono::milliseconds(120'000));
  double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  if (outcome.end != difftest::Outcome::End::kDone)
    throw Error(std::string("user-space loop did not finish: ") + difftest::to_string(outcome.end) +
                " " + outcome.message);
  double instructions = double(kIterations) * kInstructionsPerIteration + 3;
  return instructions / secs / 1e6;
}

KEEL_BENCH_ROW(Row{
    .name = "user-space loop MIPS (emu vs kvm native CPL3)",
    .unit = "MIPS",
    .baseline = "the same CPL3 loop under KVM (native CPU)",
    .sample = [] { return Sample{.keel = mips(Accel::kEmu), .baseline = mips(Accel::kKvm)}; },
    .unavailable =
        []() -> std::optional<std::string> {
          if (access("/dev/kvm", R_OK | W_OK) != 0) return "/dev/kvm is not usable for the baseline";
          return std::nullopt;
        },
    .higher_is_better = true,
});

}  // namespace
}  // namespace keel::bench
