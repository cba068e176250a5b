// Integer instructions: data movement, ALU, shifts and rotates, multiply/divide, bit operations,
// exchange, string instructions, flag instructions.
#include <sched.h>

#include "engine/emu/ops_common.h"

namespace keel::emu {

namespace {

using namespace x86;

constexpr uint64_t kArith = kFlagCF | kFlagPF | kFlagAF | kFlagZF | kFlagSF | kFlagOF;

inline uint64_t parity_flag(uint64_t v) {
  return (__builtin_popcount(unsigned(v & 0xFF)) & 1) ? 0 : kFlagPF;
}

// Sets all six arithmetic flags eagerly: ZF/SF/PF from `res`, the others from `extra`.
inline void set_flags_szp(Cpu& c, uint64_t res, uint8_t bits, uint64_t extra) {
  uint64_t f = c.flags() & ~kArith;
  uint64_t m = bits == 64 ? ~0ull : ((1ull << bits) - 1);
  res &= m;
  if (res == 0) f |= kFlagZF;
  if ((res >> (bits - 1)) & 1) f |= kFlagSF;
  f |= parity_flag(res);
  c.set_flags(f | extra);
}

// Sets CF and OF only (rotates).
inline void set_cf_of(Cpu& c, bool cf, bool of) {
  uint64_t f = c.flags() & ~(kFlagCF | kFlagOF);
  c.set_flags(f | (cf ? kFlagCF : 0) | (of ? kFlagOF : 0));
}

// ---------------------------------------------------------------- MOV and friends

template <typename T, int DK, int SK>
void op_mov(Cpu& c, const Insn& in) {
  put_op<T, DK>(c, in, 0, get_op<T, SK>(c, in, 1));
}

// MOV between the accumulator and a 64-bit absolute address (moffs64: A0-A3 in 64-bit mode,
// e.g. `mov eax, [0xfee00020]` as compilers emit for a constant pointer above 2 GiB). The
// address does not fit Insn::disp (32 bits, sign-extended), so the decoder keeps it in imm.
template <typename T, bool Load>
void op_mov_moffs64(Cpu& c, const Insn& in) {
  const uint64_t la = in.imm + c.seg_base[in.seg];
  if constexpr (Load)
    c.set_reg<T>(in.reg[0], c.rd<T>(la));
  else
    c.wr<T>(la, c.reg<T>(in.reg[1]));
}

// moffs forms and anything else with a run-time operand kind.
template <typename T>
void op_mov_any(Cpu& c, const Insn& in) {
  put_any<T>(c, in, 0, get_any<T>(c, in, 1));
}

template <typename TD, typename TS, bool Signed_, int SK>
void op_movx(Cpu& c, const Insn& in) {
  TS s = get_op<TS, SK>(c, in, 1);
  TD v = Signed_ ? TD(std::make_signed_t<TD>(std::make_signed_t<TS>(s))) : TD(s);
  c.set_reg<TD>(in.reg[0], v);
}

template <typename T>
void op_lea(Cpu& c, const Insn& in) {
  c.set_reg<T>(in.reg[0], T(c.ea(in)));
}

template <typename T>
void op_xchg(Cpu& c, const Insn& in) {
  if (in.kind[0] == kOpMem || in.kind[1] == kOpMem) {
    int ri = in.kind[0] == kOpReg ? 0 : 1;
    uint64_t a = c.ea(in);
    T r = c.reg<T>(in.reg[ri]);
    T old;
    rmw_mem<T>(c, a, [&](T d) {
      old = d;
      return r;
    }, true);  // XCHG with memory is always locked
    c.set_reg<T>(in.reg[ri], old);
  } else {
    T a = c.reg<T>(in.reg[0]), b = c.reg<T>(in.reg[1]);
    c.set_reg<T>(in.reg[0], b);
    c.set_reg<T>(in.reg[1], a);
  }
}

template <typename T>
void op_bswap(Cpu& c, const Insn& in) {
  if constexpr (sizeof(T) == 8) c.set_reg<T>(in.reg[0], __builtin_bswap64(c.reg<T>(in.reg[0])));
  else if constexpr (sizeof(T) == 4) c.set_reg<T>(in.reg[0], __builtin_bswap32(c.reg<T>(in.reg[0])));
  else c.set_reg<T>(in.reg[0], 0);  // undefined; real CPUs zero the low word
}

template <typename T, int K>
void op_cmov(Cpu& c, const Insn& in) {
  T s = get_op<T, K>(c, in, 1);
  if (c.cond(in.cc)) c.set_reg<T>(in.reg[0], s);
  else if constexpr (sizeof(T) == 4) c.set_reg<T>(in.reg[0], c.reg<T>(in.reg[0]));  // zero-extends
}

template <int K>
void op_setcc(Cpu& c, const Insn& in) {
  put_op<uint8_t, K>(c, in, 0, c.cond(in.cc) ? 1 : 0);
}

// CBW/CWDE/CDQE
template <typename T>
void op_cbw(Cpu& c, const Insn&) {
  using H = std::conditional_t<sizeof(T) == 8, int32_t, std::conditional_t<sizeof(T) == 4, int16_t, int8_t>>;
  c.set_reg<T>(RAX, T(Signed<T>(H(c.r[RAX]))));
}
// CWD/CDQ/CQO
template <typename T>
void op_cwd(Cpu& c, const Insn&) {
  T a = c.reg<T>(RAX);
  c.set_reg<T>(RDX, (a >> (kBits<T> - 1)) ? T(~T(0)) : T(0));
}

// ---------------------------------------------------------------- ALU

enum AluOp { kAdd, kOr, kAdc, kSbb, kAnd, kSub, kXor, kCmp, kTest };

template <int Op, typename T>
inline T alu(Cpu& c, T d, T s) {
  constexpr uint8_t b = kBits<T>;
  if constexpr (Op == kAdd) {
    T r = T(d + s);
    c.set_lazy(FlagOp::kAdd, b, r, d, s);
    return r;
  } else if constexpr (Op == kAdc) {
    uint8_t ci = c.cf();
    T r = T(d + s + ci);
    c.set_lazy(FlagOp::kAdc, b, r, d, s);
    c.lf_cin = ci;
    return r;
  } else if constexpr (Op == kSub || Op == kCmp) {
    T r = T(d - s);
    c.set_lazy(FlagOp::kSub, b, r, d, s);
    return r;
  } else if constexpr (Op == kSbb) {
    uint8_t ci = c.cf();
    T r = T(d - s - ci);
    c.set_lazy(FlagOp::kSbb, b, r, d, s);
    c.lf_cin = ci;
    return r;
  } else {
    T r = Op == kOr ? T(d | s) : Op == kXor ? T(d ^ s) : T(d & s);
    c.set_lazy(FlagOp::kLogic, b, r, 0, 0);
    return r;
  }
}

template <typename T, int Op, int DK, int SK>
void op_alu(Cpu& c, const Insn& in) {
  T s = get_op<T, SK>(c, in, 1);
  if constexpr (DK == kOpReg) {
    T r = alu<Op, T>(c, c.reg<T>(in.reg[0]), s);
    if constexpr (Op != kCmp && Op != kTest) c.set_reg<T>(in.reg[0], r);
  } else {
    uint64_t a = c.ea(in);
    if constexpr (Op == kCmp || Op == kTest) alu<Op, T>(c, c.rd<T>(a), s);
    else rmw_mem<T>(c, a, [&](T d) { return alu<Op, T>(c, d, s); }, locked(in));
  }
}

template <int Op>
Handler pick_alu(const Insn& in) {
  int dk = in.kind[0], sk = in.kind[1];
  if (dk == kOpReg && sk == kOpReg) return KEEL_BY_SIZE(in.osz, op_alu, Op, kOpReg, kOpReg);
  if (dk == kOpReg && sk == kOpMem) return KEEL_BY_SIZE(in.osz, op_alu, Op, kOpReg, kOpMem);
  if (dk == kOpReg && sk == kOpImm) return KEEL_BY_SIZE(in.osz, op_alu, Op, kOpReg, kOpImm);
  if (dk == kOpMem && sk == kOpReg) return KEEL_BY_SIZE(in.osz, op_alu, Op, kOpMem, kOpReg);
  if (dk == kOpMem && sk == kOpImm) return KEEL_BY_SIZE(in.osz, op_alu, Op, kOpMem, kOpImm);
  return nullptr;
}

// INC, DEC, NEG, NOT
enum UnOp { kInc, kDec, kNeg, kNot };

template <int Op, typename T>
inline T unary(Cpu& c, T d) {
  constexpr uint8_t b = kBits<T>;
  if constexpr (Op == kInc || Op == kDec) {
    uint8_t cf = c.cf();
    T r = Op == kInc ? T(d + 1) : T(d - 1);
    c.set_lazy(Op == kInc ? FlagOp::kInc : FlagOp::kDec, b, r, d, 1);
    c.lf_cin = cf;
    return r;
  } else if constexpr (Op == kNeg) {
    T r = T(T(0) - d);
    c.set_lazy(FlagOp::kSub, b, r, 0, d);
    return r;
  } else {
    return T(~d);
  }
}

template <typename T, int Op, int K>
void op_unary(Cpu& c, const Insn& in) {
  if constexpr (K == kOpReg) {
    c.set_reg<T>(in.reg[0], unary<Op, T>(c, c.reg<T>(in.reg[0])));
  } else {
    rmw_mem<T>(c, c.ea(in), [&](T d) { return unary<Op, T>(c, d); }, locked(in));
  }
}

template <int Op>
Handler pick_unary(const Insn& in) {
  if (in.kind[0] == kOpReg) return KEEL_BY_SIZE(in.osz, op_unary, Op, kOpReg);
  return KEEL_BY_SIZE(in.osz, op_unary, Op, kOpMem);
}

// ---------------------------------------------------------------- shifts and rotates

enum ShOp { kRol, kRor, kRcl, kRcr, kShl, kShr, kSal, kSar };

// Returns the result; updates flags unless the masked count is zero.
template <int Op, typename T>
T shift(Cpu& c, T d, unsigned cnt_raw) {
  constexpr unsigned b = kBits<T>;
  unsigned cnt = cnt_raw & (b == 64 ? 63 : 31);
  if (cnt == 0) return d;
  uint64_t v = d;
  switch (Op) {
    case kShl:
    case kSal: {
      uint64_t r, cf;
      if (cnt < 64) {
        r = v << cnt;
        cf = b == 64 ? (v >> (64 - cnt)) & 1 : (cnt <= b ? (v >> (b - cnt)) & 1 : 0);
      } else {
        r = 0;
        cf = 0;
      }
      T res = T(r);
      bool of = ((res >> (b - 1)) & 1) ^ cf;
      set_flags_szp(c, res, b, (cf ? kFlagCF : 0) | (of ? kFlagOF : 0));
      return res;
    }
    case kShr: {
      uint64_t cf = cnt <= b ? (v >> (cnt - 1)) & 1 : 0;
      T res = cnt < b ? T(v >> cnt) : T(0);
      bool of = (v >> (b - 1)) & 1;
      set_flags_szp(c, res, b, (cf ? kFlagCF : 0) | (of ? kFlagOF : 0));
      return res;
    }
    case kSar: {
      int64_t sv = Cpu::sext(v, b);
      unsigned sc = cnt > 63 ? 63 : cnt;
      uint64_t cf = (sv >> (sc - 1)) & 1;
      T res = T(sv >> sc);
      set_flags_szp(c, res, b, cf ? kFlagCF : 0);
      return res;
    }
    case kRol: {
      unsigned k = cnt % b;
      T res = k ? T((d << k) | (d >> (b - k))) : d;
      bool cf = res & 1;
      set_cf_of(c, cf, ((res >> (b - 1)) & 1) ^ cf);
      return res;
    }
    case kRor: {
      unsigned k = cnt % b;
      T res = k ? T((d >> k) | (d << (b - k))) : d;
      bool msb = (res >> (b - 1)) & 1, msb2 = (res >> (b - 2)) & 1;
      set_cf_of(c, msb, msb ^ msb2);
      return res;
    }
    case kRcl: {
      unsigned k = cnt % (b + 1);
      bool cf = c.cf();
      T res = d;
      for (unsigned i = 0; i < k; ++i) {
        bool out = (res >> (b - 1)) & 1;
        res = T((res << 1) | (cf ? 1 : 0));
        cf = out;
      }
      set_cf_of(c, cf, ((res >> (b - 1)) & 1) ^ cf);
      return res;
    }
    default: {  // kRcr
      unsigned k = cnt % (b + 1);
      bool cf = c.cf();
      T res = d;
      bool of = ((res >> (b - 1)) & 1) ^ cf;
      for (unsigned i = 0; i < k; ++i) {
        bool out = res & 1;
        res = T((res >> 1) | (T(cf ? 1 : 0) << (b - 1)));
        cf = out;
      }
      set_cf_of(c, cf, of);
      return res;
    }
  }
}

template <typename T, int Op, int K>
void op_shift(Cpu& c, const Insn& in) {
  unsigned cnt = in.kind[1] == kOpReg ? unsigned(c.r[RCX] & 0xFF) : unsigned(in.imm);
  if constexpr (K == kOpReg) {
    c.set_reg<T>(in.reg[0], shift<Op, T>(c, c.reg<T>(in.reg[0]), cnt));
  } else {
    rmw_mem<T>(c, c.ea(in), [&](T d) { return shift<Op, T>(c, d, cnt); });
  }
}

template <int Op>
Handler pick_shift(const Insn& in) {
  if (in.kind[0] == kOpReg) return KEEL_BY_SIZE(in.osz, op_shift, Op, kOpReg);
  return KEEL_BY_SIZE(in.osz, op_shift, Op, kOpMem);
}

// SHLD/SHRD dst, src, count
template <typename T, bool Left>
void op_shxd(Cpu& c, const Insn& in) {
  constexpr unsigned b = kBits<T>;
  unsigned cnt = (in.kind[2] == kOpReg ? unsigned(c.r[RCX]) : unsigned(in.imm)) & (b == 64 ? 63 : 31);
  T s = c.reg<T>(in.reg[1]);
  auto f = [&](T d) -> T {
    if (cnt == 0) return d;
    T res;
    bool cf;
    if (b == 16) {
      // 16-bit with counts up to 31: shift through op1:op2:op1 (48 bits), as Intel CPUs do.
      uint64_t x;
      if (Left) {
        x = (uint64_t(d) << 32) | (uint64_t(s) << 16) | d;
        res = T(x >> (32 - cnt));
        cf = (x >> (48 - cnt)) & 1;
      } else {
        x = (uint64_t(d) << 32) | (uint64_t(s) << 16) | d;
        res = T(x >> cnt);
        cf = (x >> (cnt - 1)) & 1;
      }
    } else if (Left) {
      res = T((d << cnt) | (s >> (b - cnt)));
      cf = (d >> (b - cnt)) & 1;
    } else {
      res = T((d >> cnt) | (s << (b - cnt)));
      cf = (d >> (cnt - 1)) & 1;
    }
    bool of = ((res ^ d) >> (b - 1)) & 1;
    set_flags_szp(c, res, b, (cf ? kFlagCF : 0) | (of ? kFlagOF : 0));
    return res;
  };
  if (in.kind[0] == kOpReg) c.set_reg<T>(in.reg[0], f(c.reg<T>(in.reg[0])));
  else rmw_mem<T>(c, c.ea(in), f);
}

// ---------------------------------------------------------------- multiply and divide

template <typename T>
void op_mul1(Cpu& c, const Insn& in) {  // MUL r/m: unsigned, into (E/R)DX:(E/R)AX or AX
  T s = get_any<T>(c, in, 0);
  constexpr unsigned b = kBits<T>;
  uint64_t lo, hi;
  if constexpr (b == 64) {
    unsigned __int128 p = (unsigned __int128)c.r[RAX] * s;
    lo = uint64_t(p);
    hi = uint64_t(p >> 64);
  } else {
    uint64_t p = uint64_t(c.reg<T>(RAX)) * s;
    lo = T(p);
    hi = T(p >> b);
  }
  if constexpr (b == 8) {
    c.set_reg<uint16_t>(RAX, uint16_t(lo | (hi << 8)));
  } else {
    c.set_reg<T>(RAX, T(lo));
    c.set_reg<T>(RDX, T(hi));
  }
  uint64_t fl = hi ? (kFlagCF | kFlagOF) : 0;
  set_flags_szp(c, lo, b, fl);
}

template <typename T>
void op_imul1(Cpu& c, const Insn& in) {
  using S = Signed<T>;
  T s = get_any<T>(c, in, 0);
  constexpr unsigned b = kBits<T>;
  uint64_t lo, hi;
  bool overflow;
  if constexpr (b == 64) {
    __int128 p = (__int128)int64_t(c.r[RAX]) * int64_t(s);
    lo = uint64_t(p);
    hi = uint64_t((unsigned __int128)p >> 64);
    overflow = p != (__int128)int64_t(lo);
  } else {
    int64_t p = int64_t(S(c.reg<T>(RAX))) * int64_t(S(s));
    lo = T(p);
    hi = T(uint64_t(p) >> b);
    overflow = p != int64_t(S(T(p)));
  }
  if constexpr (b == 8) {
    c.set_reg<uint16_t>(RAX, uint16_t(lo | (hi << 8)));
  } else {
    c.set_reg<T>(RAX, T(lo));
    c.set_reg<T>(RDX, T(hi));
  }
  set_flags_szp(c, lo, b, overflow ? (kFlagCF | kFlagOF) : 0);
}

template <typename T>
T imul_trunc(Cpu& c, T a, T bv) {
  using S = Signed<T>;
  constexpr unsigned b = kBits<T>;
  T lo;
  bool overflow;
  if constexpr (b == 64) {
    __int128 p = (__int128)int64_t(a) * int64_t(bv);
    lo = T(p);
    overflow = p != (__int128)int64_t(lo);
  } else {
    int64_t p = int64_t(S(a)) * int64_t(S(bv));
    lo = T(p);
    overflow = p != int64_t(S(lo));
  }
  set_flags_szp(c, lo, b, overflow ? (kFlagCF | kFlagOF) : 0);
  return lo;
}

template <typename T>
void op_imul2(Cpu& c, const Insn& in) {  // IMUL r, r/m
  T s = get_any<T>(c, in, 1);
  c.set_reg<T>(in.reg[0], imul_trunc<T>(c, c.reg<T>(in.reg[0]), s));
}
template <typename T>
void op_imul3(Cpu& c, const Insn& in) {  // IMUL r, r/m, imm
  T s = get_any<T>(c, in, 1);
  c.set_reg<T>(in.reg[0], imul_trunc<T>(c, s, T(in.imm)));
}

template <typename T>
void op_div(Cpu& c, const Insn& in) {
  T s = get_any<T>(c, in, 0);
  if (s == 0) raise_fault(kDE);
  constexpr unsigned b = kBits<T>;
  if constexpr (b == 64) {
    unsigned __int128 n = ((unsigned __int128)c.r[RDX] << 64) | c.r[RAX];
    unsigned __int128 q = n / s;
    if (q >> 64) raise_fault(kDE);
    c.r[RAX] = uint64_t(q);
    c.r[RDX] = uint64_t(n % s);
  } else if constexpr (b == 8) {
    uint32_t n = uint16_t(c.r[RAX]);
    uint32_t q = n / s;
    if (q > 0xFF) raise_fault(kDE);
    c.set_reg<uint16_t>(RAX, uint16_t((q & 0xFF) | ((n % s) << 8)));
  } else {
    uint64_t n = (uint64_t(c.reg<T>(RDX)) << b) | c.reg<T>(RAX);
    uint64_t q = n / s;
    if (q >> b) raise_fault(kDE);
    c.set_reg<T>(RAX, T(q));
    c.set_reg<T>(RDX, T(n % s));
  }
}

template <typename T>
void op_idiv(Cpu& c, const Insn& in) {
  using S = Signed<T>;
  S s = S(get_any<T>(c, in, 0));
  if (s == 0) raise_fault(kDE);
  constexpr unsigned b = kBits<T>;
  if constexpr (b == 64) {
    __int128 n = (__int128)(((unsigned __int128)c.r[RDX] << 64) | c.r[RAX]);
    if (s == -1 && n == -((__int128)1 << 127)) raise_fault(kDE);  // would overflow the host too
    __int128 q = n / s;
    if (q != (__int128)int64_t(q)) raise_fault(kDE);
    c.r[RAX] = uint64_t(int64_t(q));
    c.r[RDX] = uint64_t(int64_t(n % s));
  } else if constexpr (b == 8) {
    int32_t n = int16_t(c.r[RAX]);
    int32_t q = n / s;
    if (q != int8_t(q)) raise_fault(kDE);
    c.set_reg<uint16_t>(RAX, uint16_t(uint8_t(q) | (uint16_t(uint8_t(n % s)) << 8)));
  } else {
    int64_t n = int64_t((uint64_t(c.reg<T>(RDX)) << b) | c.reg<T>(RAX));
    if constexpr (b == 16) n = int32_t(uint32_t(n));
    int64_t q = n / s;
    if (q != int64_t(S(q))) raise_fault(kDE);
    c.set_reg<T>(RAX, T(q));
    c.set_reg<T>(RDX, T(n % s));
  }
}

// ---------------------------------------------------------------- bit operations

enum BtOp { kBt, kBts, kBtr, kBtc };

template <typename T, int Op>
void op_bt(Cpu& c, const Insn& in) {
  constexpr unsigned b = kBits<T>;
  uint64_t off;
  uint64_t addr_adj = 0;
  if (in.kind[1] == kOpReg) {
    T o = c.reg<T>(in.reg[1]);
    if (in.kind[0] == kOpMem) {
      int64_t so = Cpu::sext(o, b);
      addr_adj = uint64_t((so >> (b == 64 ? 6 : b == 32 ? 5 : 4)) * int64_t(sizeof(T)));
    }
    off = o & (b - 1);
  } else {
    off = in.imm & (b - 1);
  }
  T mask = T(T(1) << off);
  auto f = [&](T d) -> T {
    c.set_cf(d & mask);
    if (Op == kBts) return T(d | mask);
    if (Op == kBtr) return T(d & ~mask);
    return T(d ^ mask);
  };
  if (in.kind[0] == kOpReg) {
    T d = c.reg<T>(in.reg[0]);
    if (Op == kBt) c.set_cf(d & mask);
    else c.set_reg<T>(in.reg[0], f(d));
  } else {
    uint64_t a = c.ea(in) + addr_adj;
    if (Op == kBt) c.set_cf(c.rd<T>(a) & mask);
    else rmw_mem<T>(c, a, f, locked(in));
  }
}

template <typename T, bool Reverse>
void op_bsf(Cpu& c, const Insn& in) {
  T s = get_any<T>(c, in, 1);
  uint64_t f = c.flags() & ~kArith;
  if (s == 0) {
    c.set_flags(f | kFlagZF);
    return;
  }
  unsigned idx = Reverse ? 63 - __builtin_clzll(uint64_t(s)) : __builtin_ctzll(uint64_t(s));
  c.set_flags(f);
  c.set_reg<T>(in.reg[0], T(idx));
}

template <typename T>
void op_popcnt(Cpu& c, const Insn& in) {
  T s = get_any<T>(c, in, 1);
  uint64_t f = c.flags() & ~kArith;
  c.set_flags(f | (s == 0 ? kFlagZF : 0));
  c.set_reg<T>(in.reg[0], T(__builtin_popcountll(uint64_t(s))));
}

// ---------------------------------------------------------------- XADD, CMPXCHG

template <typename T>
void op_xadd(Cpu& c, const Insn& in) {
  T s = c.reg<T>(in.reg[1]);
  if (in.kind[0] == kOpReg) {
    T d = c.reg<T>(in.reg[0]);
    T r = alu<kAdd, T>(c, d, s);
    c.set_reg<T>(in.reg[1], d);
    c.set_reg<T>(in.reg[0], r);
  } else {
    T old;
    rmw_mem<T>(c, c.ea(in), [&](T d) {
      old = d;
      return alu<kAdd, T>(c, d, s);
    }, locked(in));
    c.set_reg<T>(in.reg[1], old);
  }
}

template <typename T>
void op_cmpxchg(Cpu& c, const Insn& in) {
  T acc = c.reg<T>(RAX);
  T s = c.reg<T>(in.reg[1]);
  if (in.kind[0] == kOpReg) {
    T d = c.reg<T>(in.reg[0]);
    alu<kCmp, T>(c, acc, d);
    if (acc == d) c.set_reg<T>(in.reg[0], s);
    else c.set_reg<T>(RAX, d);
  } else {
    T old;
    rmw_mem<T>(c, c.ea(in), [&](T d) {
      old = d;
      return acc == d ? s : d;
    }, locked(in));
    alu<kCmp, T>(c, acc, old);
    if (acc != old) c.set_reg<T>(RAX, old);
  }
}

void op_cmpxchg8b(Cpu& c, const Insn& in) {
  uint64_t a = c.ea(in);
  uint64_t cmp = (c.r[RDX] << 32) | uint32_t(c.r[RAX]);
  uint64_t nv = (c.r[RCX] << 32) | uint32_t(c.r[RBX]);
  uint64_t old;
  rmw_mem<uint64_t>(c, a, [&](uint64_t d) {
    old = d;
    return d == cmp ? nv : d;
  }, locked(in));
  uint64_t f = c.flags() & ~kFlagZF;
  if (old == cmp) {
    c.set_flags(f | kFlagZF);
  } else {
    c.set_flags(f);
    c.set_reg<uint32_t>(RAX, uint32_t(old));
    c.set_reg<uint32_t>(RDX, uint32_t(old >> 32));
  }
}

void op_cmpxchg16b(Cpu& c, const Insn& in) {
  uint64_t a = c.ea(in);
  if (a & 15) raise_fault(kGP, 0);
  uint8_t* p = c.wptr<U128>(a);
  U128 old;
  bool eq;
  if (p && locked(in)) {
    // Aligned (checked above) host RAM: the host's own LOCK CMPXCHG16B.
    uint64_t lo = c.r[RAX], hi = c.r[RDX];
    asm volatile("lock cmpxchg16b %[m]\n\tsete %[eq]"
                 : [m] "+m"(*reinterpret_cast<U128*>(p)), "+a"(lo), "+d"(hi), [eq] "=q"(eq)
                 : "b"(c.r[RBX]), "c"(c.r[RCX])
                 : "memory", "cc");
    old = U128{lo, hi};
  } else {
    auto body = [&] {
      old = p ? load<U128>(p) : c.rd<U128>(a);
      eq = old.lo == c.r[RAX] && old.hi == c.r[RDX];
      U128 nv = eq ? U128{c.r[RBX], c.r[RCX]} : old;
      if (p) store<U128>(p, nv);
      else c.wr<U128>(a, nv);
    };
    if (locked(in)) c.run_exclusive(body);
    else body();
  }
  uint64_t f = c.flags() & ~kFlagZF;
  if (eq) {
    c.set_flags(f | kFlagZF);
  } else {
    c.set_flags(f);
    c.r[RAX] = old.lo;
    c.r[RDX] = old.hi;
  }
}

// ---------------------------------------------------------------- stack

template <typename T, int K>
void op_push(Cpu& c, const Insn& in) {
  c.push<T>(get_op<T, K>(c, in, 0));
}

template <typename T>
void op_pop_reg(Cpu& c, const Insn& in) {
  T v = c.pop<T>();
  c.set_reg<T>(in.reg[0], v);
}

template <typename T>
void op_pop_mem(Cpu& c, const Insn& in) {
  uint64_t old_sp = c.r[RSP];
  T v = c.pop<T>();
  try {
    c.wr<T>(c.ea(in), v);  // the address uses the incremented RSP
  } catch (const GuestFault&) {
    c.r[RSP] = old_sp;
    throw;
  }
}

template <typename T>
void op_leave(Cpu& c, const Insn&) {
  uint64_t old_sp = c.r[RSP];
  c.r[RSP] = c.r[RBP];
  try {
    T v = c.pop<T>();
    c.set_reg<T>(RBP, v);
  } catch (const GuestFault&) {
    c.r[RSP] = old_sp;
    throw;
  }
}

template <typename T>
void op_enter(Cpu& c, const Insn& in) {
  uint16_t size = uint16_t(in.imm);
  uint8_t level = uint8_t(in.imm2) & 31;
  uint64_t old_sp = c.r[RSP];
  uint64_t old_bp = c.r[RBP];
  try {
    c.push<T>(T(c.r[RBP]));
    uint64_t frame = c.r[RSP];
    if (level > 0) {
      uint64_t bp = old_bp;
      for (unsigned i = 1; i < level; ++i) {
        bp -= sizeof(T);
        c.push<T>(c.rd<T>(bp));
      }
      c.push<T>(T(frame));
    }
    c.set_reg<T>(RBP, T(frame));
    c.r[RSP] -= size;
  } catch (const GuestFault&) {
    c.r[RSP] = old_sp;
    c.r[RBP] = old_bp;
    throw;
  }
}

// ---------------------------------------------------------------- flag instructions

void op_clc(Cpu& c, const Insn&) { c.set_cf(false); }
void op_stc(Cpu& c, const Insn&) { c.set_cf(true); }
void op_cmc(Cpu& c, const Insn&) { c.set_cf(!c.cf()); }
void op_cld(Cpu& c, const Insn&) { c.rflags_ &= ~kFlagDF; }
void op_std(Cpu& c, const Insn&) { c.rflags_ |= kFlagDF; }
void op_lahf(Cpu& c, const Insn&) {
  c.set_reg<uint8_t>(kHigh8 + 0, uint8_t(c.flags() & 0xD5) | 2);
}
void op_sahf(Cpu& c, const Insn&) {
  uint64_t f = c.flags() & ~uint64_t(0xD5);
  c.set_flags(f | (c.reg<uint8_t>(kHigh8 + 0) & 0xD5));
}
void op_nop(Cpu&, const Insn&) {}
// PAUSE: a spin-wait hint. With other vCPUs, give the host core to them: the one this vCPU
// waits for may be waiting for a core (more vCPU threads than host cores), as KVM's PAUSE-loop
// exiting does.
void op_pause(Cpu& c, const Insn&) {
  if (c.smp()) sched_yield();
}

// XLAT: AL = [seg:rBX + AL]
void op_xlat(Cpu& c, const Insn& in) {
  uint64_t a = c.r[RBX] + uint8_t(c.r[RAX]);
  if (in.asz == 4) a = uint32_t(a);
  c.set_reg<uint8_t>(RAX, c.rd<uint8_t>(a + c.seg_base[in.seg]));
}

// ---------------------------------------------------------------- string instructions

enum StrOp { kMovs, kStos, kLods, kCmps, kScas };

template <typename A>
inline uint64_t str_reg(Cpu& c, int i) {
  return A(c.r[i]);
}
template <typename A>
inline void str_set(Cpu& c, int i, uint64_t v) {
  if constexpr (sizeof(A) == 8) c.r[i] = v;
  else if constexpr (sizeof(A) == 4) c.r[i] = uint32_t(v);
  else c.r[i] = (c.r[i] & ~0xFFFFull) | uint16_t(v);
}

// Fast path for REP STOS/MOVS with DF=0 and a 64-bit address size: whole chunks within a page
// through host pointers. Returns false when it could not make progress (MMIO, faults pending):
// the element loop then takes over and raises any fault precisely.
template <typename T, int Op>
bool rep_bulk(Cpu& c, const Insn& in) {
  uint64_t n = c.r[RCX];
  uint64_t di = c.r[RDI];
  uint64_t dpage_left = (4096 - (di & 0xFFF)) / sizeof(T);
  if (dpage_left == 0) return false;
  uint64_t k = std::min<uint64_t>(n, dpage_left);
  if ((di & 0xFFF) + k * sizeof(T) > 4096) return false;
  uint8_t* d = c.wptr<uint8_t>(di);
  if (!d) return false;
  if (k * sizeof(T) > 1 && !c.wptr<T>(di)) return false;
  if constexpr (Op == kStos) {
    T v = T(c.r[RAX]);
    if (sizeof(T) == 1) {
      std::memset(d, uint8_t(v), k);
    } else {
      for (uint64_t i = 0; i < k; ++i) store<T>(d + i * sizeof(T), v);
    }
    c.r[RDI] = di + k * sizeof(T);
  } else {
    uint64_t si = c.r[RSI] + c.seg_base[in.seg];
    uint64_t spage_left = (4096 - (si & 0xFFF)) / sizeof(T);
    if (spage_left == 0) return false;
    k = std::min<uint64_t>(k, spage_left);
    // Translate the source through the read path (fills the TLB); MMIO is not bulk-copied.
    (void)c.rd<T>(si);
    uint64_t gpa = c.translate(si, Access::kRead, c.cpl == 3);
    const uint8_t* s = c.memory().host_ptr(gpa, k * sizeof(T));
    if (!s) return false;
    // Overlap in the forward direction must behave element by element.
    if (d > s && d < s + k * sizeof(T)) {
      for (uint64_t i = 0; i < k * sizeof(T); ++i) d[i] = s[i];
    } else {
      std::memmove(d, s, k * sizeof(T));
    }
    c.r[RSI] += k * sizeof(T);
    c.r[RDI] = di + k * sizeof(T);
  }
  c.r[RCX] = n - k;
  return true;
}

template <typename T, typename A, int Op>
void op_string(Cpu& c, const Insn& in) {
  const bool rep = in.prefix & (kPfxRep | kPfxRepne);
  const int64_t step = (c.rflags_ & kFlagDF) ? -int64_t(sizeof(T)) : int64_t(sizeof(T));
  const uint64_t src_base = c.seg_base[in.seg];
  const uint64_t dst_base = c.seg_base[c.mode == 0 ? kSegFlat : kES];
  if (rep) {
    if constexpr (sizeof(A) == 8 && (Op == kStos || Op == kMovs)) {
      if (step > 0) {
        while (c.r[RCX] != 0 && rep_bulk<T, Op>(c, in)) {
        }
      }
    }
  }
  for (;;) {
    if (rep && str_reg<A>(c, RCX) == 0) return;
    uint64_t si = str_reg<A>(c, RSI), di = str_reg<A>(c, RDI);
    bool stop = false;
    switch (Op) {
      case kMovs:
        c.wr<T>(di + dst_base, c.rd<T>(si + src_base));
        str_set<A>(c, RSI, si + step);
        str_set<A>(c, RDI, di + step);
        break;
      case kStos:
        c.wr<T>(di + dst_base, T(c.r[RAX]));
        str_set<A>(c, RDI, di + step);
        break;
      case kLods:
        c.set_reg<T>(RAX, c.rd<T>(si + src_base));
        str_set<A>(c, RSI, si + step);
        break;
      case kCmps: {
        T a = c.rd<T>(si + src_base);
        T b = c.rd<T>(di + dst_base);
        alu<kCmp, T>(c, a, b);
        str_set<A>(c, RSI, si + step);
        str_set<A>(c, RDI, di + step);
        stop = true;
        break;
      }
      case kScas: {
        T b = c.rd<T>(di + dst_base);
        alu<kCmp, T>(c, T(c.r[RAX]), b);
        str_set<A>(c, RDI, di + step);
        stop = true;
        break;
      }
    }
    if (!rep) return;
    str_set<A>(c, RCX, str_reg<A>(c, RCX) - 1);
    if (stop) {
      bool z = c.zf();
      if ((in.prefix & kPfxRepne) ? z : !z) return;
    }
  }
}

template <int Op>
Handler pick_string(const Insn& in) {
  int osz = in.osz;
  switch (in.asz) {
    case 8: return KEEL_BY_SIZE(osz, op_string, uint64_t, Op);
    case 4: return KEEL_BY_SIZE(osz, op_string, uint32_t, Op);
    default: return KEEL_BY_SIZE(osz, op_string, uint16_t, Op);
  }
}

uint8_t cc_of(ZydisMnemonic m) {
  switch (m) {
    case ZYDIS_MNEMONIC_CMOVO: case ZYDIS_MNEMONIC_SETO: case ZYDIS_MNEMONIC_JO: return 0;
    case ZYDIS_MNEMONIC_CMOVNO: case ZYDIS_MNEMONIC_SETNO: case ZYDIS_MNEMONIC_JNO: return 1;
    case ZYDIS_MNEMONIC_CMOVB: case ZYDIS_MNEMONIC_SETB: case ZYDIS_MNEMONIC_JB: return 2;
    case ZYDIS_MNEMONIC_CMOVNB: case ZYDIS_MNEMONIC_SETNB: case ZYDIS_MNEMONIC_JNB: return 3;
    case ZYDIS_MNEMONIC_CMOVZ: case ZYDIS_MNEMONIC_SETZ: case ZYDIS_MNEMONIC_JZ: return 4;
    case ZYDIS_MNEMONIC_CMOVNZ: case ZYDIS_MNEMONIC_SETNZ: case ZYDIS_MNEMONIC_JNZ: return 5;
    case ZYDIS_MNEMONIC_CMOVBE: case ZYDIS_MNEMONIC_SETBE: case ZYDIS_MNEMONIC_JBE: return 6;
    case ZYDIS_MNEMONIC_CMOVNBE: case ZYDIS_MNEMONIC_SETNBE: case ZYDIS_MNEMONIC_JNBE: return 7;
    case ZYDIS_MNEMONIC_CMOVS: case ZYDIS_MNEMONIC_SETS: case ZYDIS_MNEMONIC_JS: return 8;
    case ZYDIS_MNEMONIC_CMOVNS: case ZYDIS_MNEMONIC_SETNS: case ZYDIS_MNEMONIC_JNS: return 9;
    case ZYDIS_MNEMONIC_CMOVP: case ZYDIS_MNEMONIC_SETP: case ZYDIS_MNEMONIC_JP: return 10;
    case ZYDIS_MNEMONIC_CMOVNP: case ZYDIS_MNEMONIC_SETNP: case ZYDIS_MNEMONIC_JNP: return 11;
    case ZYDIS_MNEMONIC_CMOVL: case ZYDIS_MNEMONIC_SETL: case ZYDIS_MNEMONIC_JL: return 12;
    case ZYDIS_MNEMONIC_CMOVNL: case ZYDIS_MNEMONIC_SETNL: case ZYDIS_MNEMONIC_JNL: return 13;
    case ZYDIS_MNEMONIC_CMOVLE: case ZYDIS_MNEMONIC_SETLE: case ZYDIS_MNEMONIC_JLE: return 14;
    case ZYDIS_MNEMONIC_CMOVNLE: case ZYDIS_MNEMONIC_SETNLE: case ZYDIS_MNEMONIC_JNLE: return 15;
    default: return 0xFF;
  }
}

}  // namespace

uint8_t condition_code(ZydisMnemonic m) { return cc_of(m); }

namespace {
// True if a visible operand is a register outside the GPRs (segment, control, debug, ...).
bool has_special_reg(const DecodeCtx& d) {
  for (int i = 0; i < d.zi.operand_count_visible; ++i) {
    if (d.ops[i].type != ZYDIS_OPERAND_TYPE_REGISTER) continue;
    auto cls = ZydisRegisterGetClass(d.ops[i].reg.value);
    if (cls != ZYDIS_REGCLASS_GPR8 && cls != ZYDIS_REGCLASS_GPR16 && cls != ZYDIS_REGCLASS_GPR32 &&
        cls != ZYDIS_REGCLASS_GPR64)
      return true;
  }
  return false;
}
}  // namespace

bool select_int(DecodeCtx& d) {
  Insn& in = d.in;
  const auto m = d.zi.mnemonic;
  const int k0 = in.kind[0], k1 = in.kind[1];
  switch (m) {
    case ZYDIS_MNEMONIC_MOV:
      if (has_special_reg(d)) return false;
      if (d.zi.raw.disp.size == 64) {
        in.imm = d.zi.raw.disp.value;
        in.prefix &= ~kPfxGpr;  // the translator's MOV would read disp: this handler runs instead
        if (k0 == kOpReg && k1 == kOpMem) in.fn = KEEL_BY_SIZE(in.osz, op_mov_moffs64, true);
        else if (k0 == kOpMem && k1 == kOpReg) in.fn = KEEL_BY_SIZE(in.osz, op_mov_moffs64, false);
        else return false;
        return true;
      }
      if (k0 == kOpReg && k1 == kOpReg) in.fn = KEEL_BY_SIZE(in.osz, op_mov, kOpReg, kOpReg);
      else if (k0 == kOpReg && k1 == kOpMem) in.fn = KEEL_BY_SIZE(in.osz, op_mov, kOpReg, kOpMem);
      else if (k0 == kOpReg && k1 == kOpImm) in.fn = KEEL_BY_SIZE(in.osz, op_mov, kOpReg, kOpImm);
      else if (k0 == kOpMem && k1 == kOpReg) in.fn = KEEL_BY_SIZE(in.osz, op_mov, kOpMem, kOpReg);
      else if (k0 == kOpMem && k1 == kOpImm) in.fn = KEEL_BY_SIZE(in.osz, op_mov, kOpMem, kOpImm);
      else return false;
      return true;
    case ZYDIS_MNEMONIC_MOVZX:
    case ZYDIS_MNEMONIC_MOVSX:
    case ZYDIS_MNEMONIC_MOVSXD: {
      bool sx = m != ZYDIS_MNEMONIC_MOVZX;
      int s = in.opsz2;
      bool mem = k1 == kOpMem;
#define KEEL_MOVX(TD, TS)                                                        \
  in.fn = sx ? (mem ? &op_movx<TD, TS, true, kOpMem> : &op_movx<TD, TS, true, kOpReg>) \
             : (mem ? &op_movx<TD, TS, false, kOpMem> : &op_movx<TD, TS, false, kOpReg>)
      if (in.osz == 2) {
        if (s == 1) KEEL_MOVX(U16, U8); else KEEL_MOVX(U16, U16);
      } else if (in.osz == 4) {
        if (s == 1) KEEL_MOVX(U32, U8); else if (s == 2) KEEL_MOVX(U32, U16); else KEEL_MOVX(U32, U32);
      } else {
        if (s == 1) KEEL_MOVX(U64, U8); else if (s == 2) KEEL_MOVX(U64, U16); else KEEL_MOVX(U64, U32);
      }
#undef KEEL_MOVX
      return true;
    }
    case ZYDIS_MNEMONIC_LEA:
      in.seg = kSegFlat;
      in.fn = KEEL_BY_SIZE(in.osz, op_lea);
      return true;
    case ZYDIS_MNEMONIC_XCHG:
      if (k0 == kOpReg && k1 == kOpReg && in.reg[0] == in.reg[1] && in.osz != 4) {
        in.fn = op_nop;  // 90 (xchg eax,eax in 64-bit mode does zero-extend; handled below)
        return true;
      }
      in.fn = KEEL_BY_SIZE(in.osz, op_xchg);
      return true;
    case ZYDIS_MNEMONIC_BSWAP: in.fn = KEEL_BY_SIZE(in.osz, op_bswap); return true;
    case ZYDIS_MNEMONIC_CBW: case ZYDIS_MNEMONIC_CWDE: case ZYDIS_MNEMONIC_CDQE:
      in.fn = KEEL_BY_SIZE(in.osz, op_cbw);
      return true;
    case ZYDIS_MNEMONIC_CWD: case ZYDIS_MNEMONIC_CDQ: case ZYDIS_MNEMONIC_CQO:
      in.fn = KEEL_BY_SIZE(in.osz, op_cwd);
      return true;

    case ZYDIS_MNEMONIC_ADD: in.fn = pick_alu<kAdd>(in); return in.fn;
    case ZYDIS_MNEMONIC_OR: in.fn = pick_alu<kOr>(in); return in.fn;
    case ZYDIS_MNEMONIC_ADC: in.fn = pick_alu<kAdc>(in); return in.fn;
    case ZYDIS_MNEMONIC_SBB: in.fn = pick_alu<kSbb>(in); return in.fn;
    case ZYDIS_MNEMONIC_AND: in.fn = pick_alu<kAnd>(in); return in.fn;
    case ZYDIS_MNEMONIC_SUB: in.fn = pick_alu<kSub>(in); return in.fn;
    case ZYDIS_MNEMONIC_XOR: in.fn = pick_alu<kXor>(in); return in.fn;
    case ZYDIS_MNEMONIC_CMP: in.fn = pick_alu<kCmp>(in); return in.fn;
    case ZYDIS_MNEMONIC_TEST:
      if (k0 == kOpReg && k1 == kOpMem) {  // canonical form is TEST r/m, r
        std::swap(in.kind[0], in.kind[1]);
        std::swap(in.reg[0], in.reg[1]);
      }
      in.fn = pick_alu<kTest>(in);
      return in.fn;
    case ZYDIS_MNEMONIC_INC: in.fn = pick_unary<kInc>(in); return true;
    case ZYDIS_MNEMONIC_DEC: in.fn = pick_unary<kDec>(in); return true;
    case ZYDIS_MNEMONIC_NEG: in.fn = pick_unary<kNeg>(in); return true;
    case ZYDIS_MNEMONIC_NOT: in.fn = pick_unary<kNot>(in); return true;

    case ZYDIS_MNEMONIC_ROL: in.fn = pick_shift<kRol>(in); return true;
    case ZYDIS_MNEMONIC_ROR: in.fn = pick_shift<kRor>(in); return true;
    case ZYDIS_MNEMONIC_RCL: in.fn = pick_shift<kRcl>(in); return true;
    case ZYDIS_MNEMONIC_RCR: in.fn = pick_shift<kRcr>(in); return true;
    case ZYDIS_MNEMONIC_SHL: in.fn = pick_shift<kShl>(in); return true;
    case ZYDIS_MNEMONIC_SHR: in.fn = pick_shift<kShr>(in); return true;
    case ZYDIS_MNEMONIC_SAR: in.fn = pick_shift<kSar>(in); return true;
    case ZYDIS_MNEMONIC_SHLD: in.fn = KEEL_BY_SIZE(in.osz, op_shxd, true); return true;
    case ZYDIS_MNEMONIC_SHRD: in.fn = KEEL_BY_SIZE(in.osz, op_shxd, false); return true;

    case ZYDIS_MNEMONIC_MUL: in.fn = KEEL_BY_SIZE(in.osz, op_mul1); return true;
    case ZYDIS_MNEMONIC_IMUL:
      if (d.zi.operand_count_visible == 1 || in.kind[1] == kOpNone) in.fn = KEEL_BY_SIZE(in.osz, op_imul1);
      else if (in.kind[2] == kOpImm) in.fn = KEEL_BY_SIZE(in.osz, op_imul3);
      else in.fn = KEEL_BY_SIZE(in.osz, op_imul2);
      return true;
    case ZYDIS_MNEMONIC_DIV: in.fn = KEEL_BY_SIZE(in.osz, op_div); return true;
    case ZYDIS_MNEMONIC_IDIV: in.fn = KEEL_BY_SIZE(in.osz, op_idiv); return true;

    case ZYDIS_MNEMONIC_BT: in.fn = KEEL_BY_SIZE(in.osz, op_bt, kBt); return true;
    case ZYDIS_MNEMONIC_BTS: in.fn = KEEL_BY_SIZE(in.osz, op_bt, kBts); return true;
    case ZYDIS_MNEMONIC_BTR: in.fn = KEEL_BY_SIZE(in.osz, op_bt, kBtr); return true;
    case ZYDIS_MNEMONIC_BTC: in.fn = KEEL_BY_SIZE(in.osz, op_bt, kBtc); return true;
    case ZYDIS_MNEMONIC_BSF: in.fn = KEEL_BY_SIZE(in.osz, op_bsf, false); return true;
    case ZYDIS_MNEMONIC_BSR: in.fn = KEEL_BY_SIZE(in.osz, op_bsf, true); return true;
    case ZYDIS_MNEMONIC_POPCNT: in.fn = KEEL_BY_SIZE(in.osz, op_popcnt); return true;

    case ZYDIS_MNEMONIC_XADD: in.fn = KEEL_BY_SIZE(in.osz, op_xadd); return true;
    case ZYDIS_MNEMONIC_CMPXCHG: in.fn = KEEL_BY_SIZE(in.osz, op_cmpxchg); return true;
    case ZYDIS_MNEMONIC_CMPXCHG8B: in.fn = op_cmpxchg8b; return true;
    case ZYDIS_MNEMONIC_CMPXCHG16B: in.fn = op_cmpxchg16b; return true;

    case ZYDIS_MNEMONIC_PUSH: {
      if (has_special_reg(d)) return false;
      int sz = in.osz;
      if (k0 == kOpReg) in.fn = sz == 8 ? &op_push<U64, kOpReg> : sz == 4 ? &op_push<U32, kOpReg> : &op_push<U16, kOpReg>;
      else if (k0 == kOpMem) in.fn = sz == 8 ? &op_push<U64, kOpMem> : sz == 4 ? &op_push<U32, kOpMem> : &op_push<U16, kOpMem>;
      else if (k0 == kOpImm) in.fn = sz == 8 ? &op_push<U64, kOpImm> : sz == 4 ? &op_push<U32, kOpImm> : &op_push<U16, kOpImm>;
      else return false;
      return true;
    }
    case ZYDIS_MNEMONIC_POP: {
      if (has_special_reg(d)) return false;
      int sz = in.osz;
      if (k0 == kOpReg) in.fn = sz == 8 ? &op_pop_reg<U64> : sz == 4 ? &op_pop_reg<U32> : &op_pop_reg<U16>;
      else if (k0 == kOpMem) in.fn = sz == 8 ? &op_pop_mem<U64> : sz == 4 ? &op_pop_mem<U32> : &op_pop_mem<U16>;
      else return false;
      return true;
    }
    case ZYDIS_MNEMONIC_LEAVE:
      in.fn = in.osz == 8 ? &op_leave<U64> : in.osz == 4 ? &op_leave<U32> : &op_leave<U16>;
      return true;
    case ZYDIS_MNEMONIC_ENTER:
      in.fn = in.osz == 8 ? &op_enter<U64> : in.osz == 4 ? &op_enter<U32> : &op_enter<U16>;
      return true;

    case ZYDIS_MNEMONIC_CMOVO: case ZYDIS_MNEMONIC_CMOVNO: case ZYDIS_MNEMONIC_CMOVB:
    case ZYDIS_MNEMONIC_CMOVNB: case ZYDIS_MNEMONIC_CMOVZ: case ZYDIS_MNEMONIC_CMOVNZ:
    case ZYDIS_MNEMONIC_CMOVBE: case ZYDIS_MNEMONIC_CMOVNBE: case ZYDIS_MNEMONIC_CMOVS:
    case ZYDIS_MNEMONIC_CMOVNS: case ZYDIS_MNEMONIC_CMOVP: case ZYDIS_MNEMONIC_CMOVNP:
    case ZYDIS_MNEMONIC_CMOVL: case ZYDIS_MNEMONIC_CMOVNL: case ZYDIS_MNEMONIC_CMOVLE:
    case ZYDIS_MNEMONIC_CMOVNLE:
      in.cc = cc_of(m);
      if (k1 == kOpMem) in.fn = KEEL_BY_SIZE(in.osz, op_cmov, kOpMem);
      else in.fn = KEEL_BY_SIZE(in.osz, op_cmov, kOpReg);
      return true;
    case ZYDIS_MNEMONIC_SETO: case ZYDIS_MNEMONIC_SETNO: case ZYDIS_MNEMONIC_SETB:
    case ZYDIS_MNEMONIC_SETNB: case ZYDIS_MNEMONIC_SETZ: case ZYDIS_MNEMONIC_SETNZ:
    case ZYDIS_MNEMONIC_SETBE: case ZYDIS_MNEMONIC_SETNBE: case ZYDIS_MNEMONIC_SETS:
    case ZYDIS_MNEMONIC_SETNS: case ZYDIS_MNEMONIC_SETP: case ZYDIS_MNEMONIC_SETNP:
    case ZYDIS_MNEMONIC_SETL: case ZYDIS_MNEMONIC_SETNL: case ZYDIS_MNEMONIC_SETLE:
    case ZYDIS_MNEMONIC_SETNLE:
      in.cc = cc_of(m);
      in.fn = k0 == kOpMem ? &op_setcc<kOpMem> : &op_setcc<kOpReg>;
      return true;

    case ZYDIS_MNEMONIC_CLC: in.fn = op_clc; return true;
    case ZYDIS_MNEMONIC_STC: in.fn = op_stc; return true;
    case ZYDIS_MNEMONIC_CMC: in.fn = op_cmc; return true;
    case ZYDIS_MNEMONIC_CLD: in.fn = op_cld; return true;
    case ZYDIS_MNEMONIC_STD: in.fn = op_std; return true;
    case ZYDIS_MNEMONIC_LAHF: in.fn = op_lahf; return true;
    case ZYDIS_MNEMONIC_SAHF: in.fn = op_sahf; return true;
    case ZYDIS_MNEMONIC_XLAT:
      in.seg = override_seg(d.zi, d.mode);
      in.fn = op_xlat;
      return true;

    case ZYDIS_MNEMONIC_PAUSE: in.fn = op_pause; return true;
    case ZYDIS_MNEMONIC_NOP: case ZYDIS_MNEMONIC_LFENCE:
    case ZYDIS_MNEMONIC_MFENCE: case ZYDIS_MNEMONIC_SFENCE: case ZYDIS_MNEMONIC_PREFETCH:
    case ZYDIS_MNEMONIC_PREFETCHNTA: case ZYDIS_MNEMONIC_PREFETCHT0:
    case ZYDIS_MNEMONIC_PREFETCHT1: case ZYDIS_MNEMONIC_PREFETCHT2:
    case ZYDIS_MNEMONIC_PREFETCHW: case ZYDIS_MNEMONIC_ENDBR64: case ZYDIS_MNEMONIC_ENDBR32:
      in.fn = op_nop;
      return true;

    case ZYDIS_MNEMONIC_MOVSB: case ZYDIS_MNEMONIC_MOVSW: case ZYDIS_MNEMONIC_MOVSQ:
      in.seg = override_seg(d.zi, d.mode);
      in.fn = pick_string<kMovs>(in);
      return true;
    case ZYDIS_MNEMONIC_MOVSD:
      if (d.zi.opcode_map != ZYDIS_OPCODE_MAP_DEFAULT) return false;  // SSE2 movsd
      in.seg = override_seg(d.zi, d.mode);
      in.fn = pick_string<kMovs>(in);
      return true;
    case ZYDIS_MNEMONIC_STOSB: case ZYDIS_MNEMONIC_STOSW: case ZYDIS_MNEMONIC_STOSD:
    case ZYDIS_MNEMONIC_STOSQ:
      in.fn = pick_string<kStos>(in);
      return true;
    case ZYDIS_MNEMONIC_LODSB: case ZYDIS_MNEMONIC_LODSW: case ZYDIS_MNEMONIC_LODSD:
    case ZYDIS_MNEMONIC_LODSQ:
      in.seg = override_seg(d.zi, d.mode);
      in.fn = pick_string<kLods>(in);
      return true;
    case ZYDIS_MNEMONIC_CMPSB: case ZYDIS_MNEMONIC_CMPSW: case ZYDIS_MNEMONIC_CMPSQ:
      in.seg = override_seg(d.zi, d.mode);
      in.fn = pick_string<kCmps>(in);
      return true;
    case ZYDIS_MNEMONIC_CMPSD:
      if (d.zi.opcode_map != ZYDIS_OPCODE_MAP_DEFAULT) return false;  // SSE2 cmpsd
      in.seg = override_seg(d.zi, d.mode);
      in.fn = pick_string<kCmps>(in);
      return true;
    case ZYDIS_MNEMONIC_SCASB: case ZYDIS_MNEMONIC_SCASW: case ZYDIS_MNEMONIC_SCASD:
    case ZYDIS_MNEMONIC_SCASQ:
      in.fn = pick_string<kScas>(in);
      return true;
    default:
      return false;
  }
}

}  // namespace keel::emu
