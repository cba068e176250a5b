// Near control transfers: JMP, Jcc, CALL, RET, LOOP*, JrCXZ. W is the operand (and stack) width:
// 64-bit code uses 8 bytes, compatibility-mode code 4 (or 2 with 66h).
#include "engine/emu/ops_common.h"

namespace keel::emu {

uint8_t condition_code(ZydisMnemonic m);

namespace {

using namespace x86;

template <int CC>
inline bool cond_t(const Cpu& c) {
  // Fast paths for the common compare/test producers; everything else goes through cond().
  if constexpr ((CC >> 1) == 2) return c.zf() != (CC & 1);
  else return c.cond(CC);
}

template <typename W>
void op_jmp_rel(Cpu& c, const Insn& in) {
  c.rip() = W(c.rip() + in.imm);
}
template <typename W>
void op_jmp_ind(Cpu& c, const Insn& in) {
  c.rip() = get_any<W>(c, in, 0);
}
template <typename W, int CC>
void op_jcc(Cpu& c, const Insn& in) {
  if (cond_t<CC>(c)) c.rip() = W(c.rip() + in.imm);
}
template <typename W>
void op_call_rel(Cpu& c, const Insn& in) {
  c.push<W>(W(c.rip()));
  c.rip() = W(c.rip() + in.imm);
}
template <typename W>
void op_call_ind(Cpu& c, const Insn& in) {
  W t = get_any<W>(c, in, 0);
  c.push<W>(W(c.rip()));
  c.rip() = t;
}
template <typename W>
void op_ret(Cpu& c, const Insn& in) {
  W t = c.pop<W>();
  c.rip() = t;
}
template <typename W>
void op_ret_imm(Cpu& c, const Insn& in) {
  W t = c.pop<W>();
  c.r[RSP] += uint16_t(in.imm);
  c.rip() = t;
}

// LOOP/LOOPE/LOOPNE (cc: 0 plain, 1 while equal, 2 while not equal) and JrCXZ (cc 3).
template <typename W, typename A>
void op_loop(Cpu& c, const Insn& in) {
  A cnt = A(c.r[RCX]);
  bool take;
  if (in.cc == 3) {
    take = cnt == 0;
  } else {
    cnt = A(cnt - 1);
    if constexpr (sizeof(A) == 8) c.r[RCX] = cnt;
    else if constexpr (sizeof(A) == 4) c.r[RCX] = uint32_t(cnt);
    else c.r[RCX] = (c.r[RCX] & ~0xFFFFull) | cnt;
    take = cnt != 0;
    if (in.cc == 1) take = take && c.zf();
    if (in.cc == 2) take = take && !c.zf();
  }
  if (take) c.rip() = W(c.rip() + in.imm);
}

template <typename W>
Handler pick_jcc(uint8_t cc) {
  switch (cc) {
    case 0: return &op_jcc<W, 0>;
    case 1: return &op_jcc<W, 1>;
    case 2: return &op_jcc<W, 2>;
    case 3: return &op_jcc<W, 3>;
    case 4: return &op_jcc<W, 4>;
    case 5: return &op_jcc<W, 5>;
    case 6: return &op_jcc<W, 6>;
    case 7: return &op_jcc<W, 7>;
    case 8: return &op_jcc<W, 8>;
    case 9: return &op_jcc<W, 9>;
    case 10: return &op_jcc<W, 10>;
    case 11: return &op_jcc<W, 11>;
    case 12: return &op_jcc<W, 12>;
    case 13: return &op_jcc<W, 13>;
    case 14: return &op_jcc<W, 14>;
    default: return &op_jcc<W, 15>;
  }
}

// Near branches use 64-bit operands in 64-bit mode regardless of 66h (Intel behaviour).
Handler by_width(int w, Handler h64, Handler h32, Handler h16) {
  return w == 8 ? h64 : w == 4 ? h32 : h16;
}

}  // namespace

bool select_ctl(DecodeCtx& d) {
  Insn& in = d.in;
  const auto m = d.zi.mnemonic;
  const int w = d.mode == 0 ? 8 : in.osz;
  const bool far = d.zi.meta.branch_type == ZYDIS_BRANCH_TYPE_FAR;
  switch (m) {
    case ZYDIS_MNEMONIC_JMP:
      if (far) return false;
      if (in.kind[0] == kOpImm)
        in.fn = by_width(w, &op_jmp_rel<U64>, &op_jmp_rel<U32>, &op_jmp_rel<U16>);
      else
        in.fn = by_width(w, &op_jmp_ind<U64>, &op_jmp_ind<U32>, &op_jmp_ind<U16>);
      return true;
    case ZYDIS_MNEMONIC_CALL:
      if (far) return false;
      if (in.kind[0] == kOpImm)
        in.fn = by_width(w, &op_call_rel<U64>, &op_call_rel<U32>, &op_call_rel<U16>);
      else
        in.fn = by_width(w, &op_call_ind<U64>, &op_call_ind<U32>, &op_call_ind<U16>);
      return true;
    case ZYDIS_MNEMONIC_RET:
      if (far) return false;
      if (in.kind[0] == kOpImm)
        in.fn = by_width(w, &op_ret_imm<U64>, &op_ret_imm<U32>, &op_ret_imm<U16>);
      else
        in.fn = by_width(w, &op_ret<U64>, &op_ret<U32>, &op_ret<U16>);
      return true;
    case ZYDIS_MNEMONIC_JO: case ZYDIS_MNEMONIC_JNO: case ZYDIS_MNEMONIC_JB:
    case ZYDIS_MNEMONIC_JNB: case ZYDIS_MNEMONIC_JZ: case ZYDIS_MNEMONIC_JNZ:
    case ZYDIS_MNEMONIC_JBE: case ZYDIS_MNEMONIC_JNBE: case ZYDIS_MNEMONIC_JS:
    case ZYDIS_MNEMONIC_JNS: case ZYDIS_MNEMONIC_JP: case ZYDIS_MNEMONIC_JNP:
    case ZYDIS_MNEMONIC_JL: case ZYDIS_MNEMONIC_JNL: case ZYDIS_MNEMONIC_JLE:
    case ZYDIS_MNEMONIC_JNLE:
      in.cc = condition_code(m);
      in.fn = w == 8 ? pick_jcc<U64>(in.cc) : w == 4 ? pick_jcc<U32>(in.cc) : pick_jcc<U16>(in.cc);
      return true;
    case ZYDIS_MNEMONIC_LOOP:
    case ZYDIS_MNEMONIC_LOOPE:
    case ZYDIS_MNEMONIC_LOOPNE:
    case ZYDIS_MNEMONIC_JCXZ:
    case ZYDIS_MNEMONIC_JECXZ:
    case ZYDIS_MNEMONIC_JRCXZ: {
      in.cc = m == ZYDIS_MNEMONIC_LOOP ? 0 : m == ZYDIS_MNEMONIC_LOOPE ? 1 : m == ZYDIS_MNEMONIC_LOOPNE ? 2 : 3;
      int a = in.asz;
      if (w == 8) in.fn = a == 8 ? &op_loop<U64, U64> : a == 4 ? &op_loop<U64, U32> : &op_loop<U64, U16>;
      else if (w == 4) in.fn = a == 8 ? &op_loop<U32, U64> : a == 4 ? &op_loop<U32, U32> : &op_loop<U32, U16>;
      else in.fn = a == 8 ? &op_loop<U16, U64> : a == 4 ? &op_loop<U16, U32> : &op_loop<U16, U16>;
      return true;
    }
    default:
      return false;
  }
}

}  // namespace keel::emu
