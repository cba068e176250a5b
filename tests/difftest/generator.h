// Random instruction sequences from a seed (deterministic: same seed, same options -> same
// program, on every host), encoded with Zydis's encoder.
//
// The generator keeps the program inside the sandbox: every memory operand is set up by
// generator-emitted MOV/LEA instructions to land in the data page, the read-only page or the stack
// page; RSP only moves through PUSH/POP within the stack page; shift counts, divisors and string
// counts it needs to know are loaded explicitly. It tracks which arithmetic flags the SDM leaves
// undefined after each instruction and never lets a later instruction consume one (it emits a CMP
// first), so the only undefined state left to mask is in RFLAGS itself.
#pragma once

#include <cstddef>
#include <cstdint>

#include "difftest/program.h"

namespace keel::difftest {

struct GenOptions {
  size_t items = 24;                // generated instructions (plus their setup), before the end
  ClassSet classes = kAllClasses;   // kSetup is always enabled
  // Percent chance that the program ends with an instruction that raises an exception.
  int fault_percent = 12;
  // Shapes for the translation tier (chained blocks, a block turning hot mid-run, invalidation):
  // > 0: the random instructions run as a loop body this many times (RSP reset at the top, a
  // SUB/JNZ on a counter in layout::kScratch at the bottom; the fault, if any, after the loop).
  int loop_iterations = 0;
  // One ADD r32, imm32 whose immediate the program rewrites just before it runs (every
  // iteration): directly through the code page, or through layout::kCodeAlias then a jump.
  bool self_modifying = false;
};

Program generate(uint64_t seed, const GenOptions& options = {});

}  // namespace keel::difftest
