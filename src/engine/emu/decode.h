// Decoding glue between Zydis and the pre-decoded Insn form. Each ops_*.cc file provides a
// selector that picks the handler (and fixes up operands) for the mnemonics it implements.
#pragma once

#include <Zydis/Zydis.h>

#include "engine/emu/insn.h"

namespace keel::emu {

struct DecodeCtx {
  const ZydisDecodedInstruction& zi;
  const ZydisDecodedOperand* ops;  // visible operands first
  Insn& in;
  uint8_t mode;             // 0 = 64-bit, 1 = 32-bit, 2 = 16-bit
  bool ends_block = false;  // set by a selector: the block ends after this instruction
};

bool select_int(DecodeCtx& d);
bool select_ctl(DecodeCtx& d);
bool select_sys(DecodeCtx& d);
bool select_sse(DecodeCtx& d);
bool select_x87(DecodeCtx& d);  // ops_x87.cc

void op_ud(Cpu& c, const Insn& in);  // raises #UD

// Decodes one instruction at `bytes` (at most `avail` bytes) into `in`. Returns false if the
// bytes do not form a complete instruction within `avail` (then `*need_more` says whether more
// bytes could help). Unknown or unimplemented instructions decode to op_ud.
class Decoder {
 public:
  Decoder();
  bool decode(uint8_t mode, const uint8_t* bytes, unsigned avail, Insn& in, bool* ends_block,
              bool* need_more);

 private:
  ZydisDecoder dec_[3];
};

}  // namespace keel::emu
