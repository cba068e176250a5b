// Translation of one decoded block (insn.h) to host x86-64 through xbyak.
#pragma once

#include <cstddef>
#include <cstdint>

#include "engine/emu/jit/layout.h"

namespace keel::emu::jit {

struct Translation {
  uint8_t* entry = nullptr;  // checked entry: requests and interrupts first
  uint8_t* body = nullptr;   // past the checks (the run loop enters here)
  size_t size = 0;           // bytes emitted, stubs included
  unsigned native = 0;       // instructions translated to host code
  unsigned helpers = 0;      // instructions that call their interpreter handler
};

// Emits the translation of `block` for CPL class `user` (which soft TLB it reads) into
// [buf, buf + avail), counting retired instructions in CpuHot::icount_ when `count`. Throws
// Xbyak::Error when it does not fit. The block must be 64-bit code.
Translation translate_block(const Block& block, bool user, bool count, const Stubs& stubs,
                            uint8_t* buf, size_t avail);

}  // namespace keel::emu::jit
