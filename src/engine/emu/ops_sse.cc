// SSE/SSE2 (moves, integer and floating-point arithmetic glibc and busybox use), MXCSR, FXSAVE/
// FXRSTOR, and the x87 control instructions (FNINIT, FNSTCW, FLDCW, FNSTSW, FWAIT). The host is
// x86-64, so the lane arithmetic uses host SSE2 intrinsics (round-to-nearest; MXCSR exception
// flags are not tracked).
#include <emmintrin.h>

#include <cmath>

#include "engine/emu/ops_common.h"

namespace keel::emu {

namespace {

using namespace x86;

constexpr uint64_t kCr0Em = 1ull << 2, kCr0Ts = 1ull << 3;
constexpr uint64_t kCr4Osfxsr = 1ull << 9;

inline __m128i to_m(const U128& v) { return _mm_loadu_si128(reinterpret_cast<const __m128i*>(&v)); }
inline U128 from_m(__m128i v) {
  U128 r;
  _mm_storeu_si128(reinterpret_cast<__m128i*>(&r), v);
  return r;
}

// SSE instructions fault with #UD without CR4.OSFXSR or with CR0.EM, #NM with CR0.TS.
inline void sse_check(Cpu& c) {
  if ((c.cr0 & kCr0Em) || !(c.cr4 & kCr4Osfxsr)) [[unlikely]]
    raise_fault(kUD);
  if (c.cr0 & kCr0Ts) [[unlikely]]
    raise_fault(kNM);
}

// Runs host floating-point SSE under the guest's MXCSR (rounding, DAZ, FTZ) with every
// exception masked on the host, then merges the raised flags into the guest MXCSR; an exception
// the guest left unmasked becomes #XM (or #UD without CR4.OSXMMEXCPT).
class GuestMxcsr {
 public:
  explicit GuestMxcsr(Cpu& c) : c_(c), host_(_mm_getcsr()) { _mm_setcsr((c.mxcsr & ~0x3Fu) | 0x1F80u); }
  ~GuestMxcsr() { _mm_setcsr(host_); }
  // Call after the operation, before committing its result.
  void finish() {
    uint32_t raised = _mm_getcsr() & 0x3F;
    _mm_setcsr(host_);
    uint32_t unmasked = raised & ~(c_.mxcsr >> 7) & 0x3F;
    c_.mxcsr |= raised;
    if (unmasked) raise_fault((c_.cr4 & (1u << 10)) ? kXM : kUD);
  }

 private:
  Cpu& c_;
  uint32_t host_;
};

// 128-bit operand i: XMM register or memory (aligned: #GP(0) when not 16-byte aligned).
template <bool Aligned>
inline __m128i xsrc(Cpu& c, const Insn& in, int i) {
  if (in.kind[i] == kOpReg) return to_m(c.xmm[in.reg[i]]);
  uint64_t a = c.ea(in);
  if (Aligned && (a & 15)) raise_fault(kGP, 0);
  return to_m(c.rd<U128>(a));
}
template <bool Aligned>
inline void xdst(Cpu& c, const Insn& in, int i, __m128i v) {
  if (in.kind[i] == kOpReg) {
    c.xmm[in.reg[i]] = from_m(v);
    return;
  }
  uint64_t a = c.ea(in);
  if (Aligned && (a & 15)) raise_fault(kGP, 0);
  c.wr<U128>(a, from_m(v));
}
// 64-bit (low quadword) operand i.
inline uint64_t qsrc(Cpu& c, const Insn& in, int i) {
  if (in.kind[i] == kOpReg) return c.xmm[in.reg[i]].lo;
  return c.rd<uint64_t>(c.ea(in));
}
inline uint32_t dsrc(Cpu& c, const Insn& in, int i) {
  if (in.kind[i] == kOpReg) return uint32_t(c.xmm[in.reg[i]].lo);
  return c.rd<uint32_t>(c.ea(in));
}

// ---------------------------------------------------------------- moves

template <bool Aligned>
void op_mov128(Cpu& c, const Insn& in) {
  sse_check(c);
  xdst<Aligned>(c, in, 0, xsrc<Aligned>(c, in, 1));
}

// MOVQ/MOVD between XMM, GPR and memory. cc: size in bytes (4 or 8).
void op_movq_d(Cpu& c, const Insn& in) {
  sse_check(c);
  unsigned n = in.cc;
  // Direction and operand classes were resolved at decode time into in.imm2:
  // 0 = xmm <- xmm/mem, 1 = xmm <- gpr, 2 = gpr <- xmm, 3 = mem <- xmm.
  switch (in.imm2) {
    case 0: {
      uint64_t v = n == 8 ? qsrc(c, in, 1) : dsrc(c, in, 1);
      c.xmm[in.reg[0]] = U128{v, 0};
      return;
    }
    case 1: {
      uint64_t v = n == 8 ? c.r[in.reg[1]] : uint32_t(c.r[in.reg[1]]);
      c.xmm[in.reg[0]] = U128{v, 0};
      return;
    }
    case 2:
      c.r[in.reg[0]] = n == 8 ? c.xmm[in.reg[1]].lo : uint32_t(c.xmm[in.reg[1]].lo);
      return;
    default:
      if (n == 8) c.wr<uint64_t>(c.ea(in), c.xmm[in.reg[1]].lo);
      else c.wr<uint32_t>(c.ea(in), uint32_t(c.xmm[in.reg[1]].lo));
      return;
  }
}

// MOVSD/MOVSS: reg-reg merges the low element; load zero-extends; store writes the element.
template <typename T>
void op_movs_scalar(Cpu& c, const Insn& in) {
  sse_check(c);
  if (in.kind[0] == kOpMem) {
    T v;
    std::memcpy(&v, &c.xmm[in.reg[1]], sizeof(T));
    c.wr<T>(c.ea(in), v);
  } else if (in.kind[1] == kOpMem) {
    T v = c.rd<T>(c.ea(in));
    U128 r{0, 0};
    std::memcpy(&r, &v, sizeof(T));
    c.xmm[in.reg[0]] = r;
  } else {
    std::memcpy(&c.xmm[in.reg[0]], &c.xmm[in.reg[1]], sizeof(T));
  }
}

// MOVHPS/MOVHPD (cc=1) and MOVLPS/MOVLPD (cc=0) with memory; MOVHLPS/MOVLHPS reg forms.
void op_movhl(Cpu& c, const Insn& in) {
  sse_check(c);
  bool high = in.cc;
  if (in.kind[0] == kOpMem) {
    c.wr<uint64_t>(c.ea(in), high ? c.xmm[in.reg[1]].hi : c.xmm[in.reg[1]].lo);
  } else if (in.kind[1] == kOpMem) {
    uint64_t v = c.rd<uint64_t>(c.ea(in));
    if (high) c.xmm[in.reg[0]].hi = v;
    else c.xmm[in.reg[0]].lo = v;
  } else if (high) {  // MOVLHPS: dst.hi = src.lo
    c.xmm[in.reg[0]].hi = c.xmm[in.reg[1]].lo;
  } else {  // MOVHLPS: dst.lo = src.hi
    c.xmm[in.reg[0]].lo = c.xmm[in.reg[1]].hi;
  }
}

void op_movnti(Cpu& c, const Insn& in) {
  if (in.osz == 8) c.wr<uint64_t>(c.ea(in), c.r[in.reg[1]]);
  else c.wr<uint32_t>(c.ea(in), uint32_t(c.r[in.reg[1]]));
}

void op_pmovmskb(Cpu& c, const Insn& in) {
  sse_check(c);
  c.r[in.reg[0]] = uint32_t(_mm_movemask_epi8(to_m(c.xmm[in.reg[1]])));
}
void op_movmskps(Cpu& c, const Insn& in) {
  sse_check(c);
  c.r[in.reg[0]] = uint32_t(_mm_movemask_ps(_mm_castsi128_ps(to_m(c.xmm[in.reg[1]]))));
}
void op_movmskpd(Cpu& c, const Insn& in) {
  sse_check(c);
  c.r[in.reg[0]] = uint32_t(_mm_movemask_pd(_mm_castsi128_pd(to_m(c.xmm[in.reg[1]]))));
}

// ---------------------------------------------------------------- packed binary operations

template <typename F, bool Fp = false>
struct Bin {
  static void run(Cpu& c, const Insn& in) {
    sse_check(c);
    __m128i a = to_m(c.xmm[in.reg[0]]);
    __m128i b = xsrc<true>(c, in, 1);
    if constexpr (Fp) {
      GuestMxcsr m(c);
      __m128i r = F::f(a, b);
      m.finish();
      c.xmm[in.reg[0]] = from_m(r);
    } else {
      c.xmm[in.reg[0]] = from_m(F::f(a, b));
    }
  }
};

#define KEEL_BIN(name, expr)                                   \
  struct name {                                                \
    static __m128i f(__m128i a, __m128i b) { return expr; }    \
  };
#define KEEL_BINPS(name, expr)                                                          \
  struct name {                                                                          \
    static __m128i f(__m128i ai, __m128i bi) {                                           \
      __m128 a = _mm_castsi128_ps(ai), b = _mm_castsi128_ps(bi);                         \
      (void)a;                                                                           \
      return _mm_castps_si128(expr);                                                     \
    }                                                                                    \
  };
#define KEEL_BINPD(name, expr)                                                          \
  struct name {                                                                          \
    static __m128i f(__m128i ai, __m128i bi) {                                           \
      __m128d a = _mm_castsi128_pd(ai), b = _mm_castsi128_pd(bi);                        \
      (void)a;                                                                           \
      return _mm_castpd_si128(expr);                                                     \
    }                                                                                    \
  };

KEEL_BIN(Pxor, _mm_xor_si128(a, b))
KEEL_BIN(Por, _mm_or_si128(a, b))
KEEL_BIN(Pand, _mm_and_si128(a, b))
KEEL_BIN(Pandn, _mm_andnot_si128(a, b))
KEEL_BIN(Pcmpeqb, _mm_cmpeq_epi8(a, b))
KEEL_BIN(Pcmpeqw, _mm_cmpeq_epi16(a, b))
KEEL_BIN(Pcmpeqd, _mm_cmpeq_epi32(a, b))
KEEL_BIN(Pcmpgtb, _mm_cmpgt_epi8(a, b))
KEEL_BIN(Pcmpgtw, _mm_cmpgt_epi16(a, b))
KEEL_BIN(Pcmpgtd, _mm_cmpgt_epi32(a, b))
KEEL_BIN(Pminub, _mm_min_epu8(a, b))
KEEL_BIN(Pmaxub, _mm_max_epu8(a, b))
KEEL_BIN(Pminsw, _mm_min_epi16(a, b))
KEEL_BIN(Pmaxsw, _mm_max_epi16(a, b))
KEEL_BIN(Paddb, _mm_add_epi8(a, b))
KEEL_BIN(Paddw, _mm_add_epi16(a, b))
KEEL_BIN(Paddd, _mm_add_epi32(a, b))
KEEL_BIN(Paddq, _mm_add_epi64(a, b))
KEEL_BIN(Psubb, _mm_sub_epi8(a, b))
KEEL_BIN(Psubw, _mm_sub_epi16(a, b))
KEEL_BIN(Psubd, _mm_sub_epi32(a, b))
KEEL_BIN(Psubq, _mm_sub_epi64(a, b))
KEEL_BIN(Paddusb, _mm_adds_epu8(a, b))
KEEL_BIN(Paddusw, _mm_adds_epu16(a, b))
KEEL_BIN(Psubusb, _mm_subs_epu8(a, b))
KEEL_BIN(Psubusw, _mm_subs_epu16(a, b))
KEEL_BIN(Paddsb, _mm_adds_epi8(a, b))
KEEL_BIN(Paddsw, _mm_adds_epi16(a, b))
KEEL_BIN(Psubsb, _mm_subs_epi8(a, b))
KEEL_BIN(Psubsw, _mm_subs_epi16(a, b))
KEEL_BIN(Pmullw, _mm_mullo_epi16(a, b))
KEEL_BIN(Pmulhw, _mm_mulhi_epi16(a, b))
KEEL_BIN(Pmulhuw, _mm_mulhi_epu16(a, b))
KEEL_BIN(Pmuludq, _mm_mul_epu32(a, b))
KEEL_BIN(Pmaddwd, _mm_madd_epi16(a, b))
KEEL_BIN(Psadbw, _mm_sad_epu8(a, b))
KEEL_BIN(Pavgb, _mm_avg_epu8(a, b))
KEEL_BIN(Pavgw, _mm_avg_epu16(a, b))
KEEL_BIN(Punpcklbw, _mm_unpacklo_epi8(a, b))
KEEL_BIN(Punpcklwd, _mm_unpacklo_epi16(a, b))
KEEL_BIN(Punpckldq, _mm_unpacklo_epi32(a, b))
KEEL_BIN(Punpcklqdq, _mm_unpacklo_epi64(a, b))
KEEL_BIN(Punpckhbw, _mm_unpackhi_epi8(a, b))
KEEL_BIN(Punpckhwd, _mm_unpackhi_epi16(a, b))
KEEL_BIN(Punpckhdq, _mm_unpackhi_epi32(a, b))
KEEL_BIN(Punpckhqdq, _mm_unpackhi_epi64(a, b))
KEEL_BIN(Packuswb, _mm_packus_epi16(a, b))
KEEL_BIN(Packsswb, _mm_packs_epi16(a, b))
KEEL_BIN(Packssdw, _mm_packs_epi32(a, b))
KEEL_BINPS(Xorps, _mm_xor_ps(a, b))
KEEL_BINPS(Andps, _mm_and_ps(a, b))
KEEL_BINPS(Andnps, _mm_andnot_ps(a, b))
KEEL_BINPS(Orps, _mm_or_ps(a, b))
KEEL_BINPS(Addps, _mm_add_ps(a, b))
KEEL_BINPS(Subps, _mm_sub_ps(a, b))
KEEL_BINPS(Mulps, _mm_mul_ps(a, b))
KEEL_BINPS(Divps, _mm_div_ps(a, b))
KEEL_BINPS(Minps, _mm_min_ps(a, b))
KEEL_BINPS(Maxps, _mm_max_ps(a, b))
KEEL_BINPS(Unpcklps, _mm_unpacklo_ps(a, b))
KEEL_BINPS(Unpckhps, _mm_unpackhi_ps(a, b))
KEEL_BINPD(Sqrtpd, _mm_sqrt_pd(b))
KEEL_BINPS(Sqrtps, _mm_sqrt_ps(b))
KEEL_BINPD(Addpd, _mm_add_pd(a, b))
KEEL_BINPD(Subpd, _mm_sub_pd(a, b))
KEEL_BINPD(Mulpd, _mm_mul_pd(a, b))
KEEL_BINPD(Divpd, _mm_div_pd(a, b))
KEEL_BINPD(Minpd, _mm_min_pd(a, b))
KEEL_BINPD(Maxpd, _mm_max_pd(a, b))
KEEL_BINPD(Unpcklpd, _mm_unpacklo_pd(a, b))
KEEL_BINPD(Unpckhpd, _mm_unpackhi_pd(a, b))

// Scalar double/single arithmetic: the memory form reads only the element.
template <typename F>
struct ScalarSd {
  static void run(Cpu& c, const Insn& in) {
    sse_check(c);
    __m128d a = _mm_castsi128_pd(to_m(c.xmm[in.reg[0]]));
    __m128d b = _mm_castsi128_pd(_mm_set_epi64x(0, int64_t(qsrc(c, in, 1))));
    GuestMxcsr m(c);
    __m128d r = F::f(a, b);
    m.finish();
    c.xmm[in.reg[0]] = from_m(_mm_castpd_si128(r));
  }
};
template <typename F>
struct ScalarSs {
  static void run(Cpu& c, const Insn& in) {
    sse_check(c);
    __m128 a = _mm_castsi128_ps(to_m(c.xmm[in.reg[0]]));
    __m128 b = _mm_castsi128_ps(_mm_set_epi32(0, 0, 0, int32_t(dsrc(c, in, 1))));
    GuestMxcsr m(c);
    __m128 r = F::f(a, b);
    m.finish();
    c.xmm[in.reg[0]] = from_m(_mm_castps_si128(r));
  }
};
#define KEEL_SD(name, expr) \
  struct name {             \
    static __m128d f(__m128d a, __m128d b) { return expr; } \
  };
#define KEEL_SS(name, expr) \
  struct name {             \
    static __m128 f(__m128 a, __m128 b) { return expr; } \
  };
KEEL_SD(Addsd, _mm_add_sd(a, b))
KEEL_SD(Subsd, _mm_sub_sd(a, b))
KEEL_SD(Mulsd, _mm_mul_sd(a, b))
KEEL_SD(Divsd, _mm_div_sd(a, b))
KEEL_SD(Minsd, _mm_min_sd(a, b))
KEEL_SD(Maxsd, _mm_max_sd(a, b))
KEEL_SD(Sqrtsd, _mm_sqrt_sd(a, b))
KEEL_SS(Addss, _mm_add_ss(a, b))
KEEL_SS(Subss, _mm_sub_ss(a, b))
KEEL_SS(Mulss, _mm_mul_ss(a, b))
KEEL_SS(Divss, _mm_div_ss(a, b))
KEEL_SS(Minss, _mm_min_ss(a, b))
KEEL_SS(Maxss, _mm_max_ss(a, b))
KEEL_SS(Sqrtss, _mm_move_ss(a, _mm_sqrt_ss(b)))

// Packed shifts by immediate (cc: 0 = psrlw,1 psraw,2 psllw,3 psrld,4 psrad,5 pslld,6 psrlq,
// 7 psllq, 8 psrldq, 9 pslldq) or by an XMM/m128 count.
void op_pshift(Cpu& c, const Insn& in) {
  sse_check(c);
  uint64_t cnt;
  if (in.kind[1] == kOpImm) cnt = in.imm & 0xFF;
  else cnt = uint64_t(_mm_cvtsi128_si64(xsrc<true>(c, in, 1)));
  __m128i a = to_m(c.xmm[in.reg[0]]);
  __m128i n = _mm_cvtsi64_si128(int64_t(cnt));
  __m128i r;
  switch (in.cc) {
    case 0: r = _mm_srl_epi16(a, n); break;
    case 1: r = _mm_sra_epi16(a, n); break;
    case 2: r = _mm_sll_epi16(a, n); break;
    case 3: r = _mm_srl_epi32(a, n); break;
    case 4: r = _mm_sra_epi32(a, n); break;
    case 5: r = _mm_sll_epi32(a, n); break;
    case 6: r = _mm_srl_epi64(a, n); break;
    case 7: r = _mm_sll_epi64(a, n); break;
    default: {
      alignas(16) uint8_t b[16], o[16] = {};
      _mm_store_si128(reinterpret_cast<__m128i*>(b), a);
      unsigned k = cnt > 16 ? 16 : unsigned(cnt);
      if (in.cc == 8) {
        for (unsigned i = 0; i + k < 16; ++i) o[i] = b[i + k];
      } else {
        for (unsigned i = k; i < 16; ++i) o[i] = b[i - k];
      }
      r = _mm_load_si128(reinterpret_cast<const __m128i*>(o));
    }
  }
  c.xmm[in.reg[0]] = from_m(r);
}

// PSHUFD (cc 0), PSHUFLW (1), PSHUFHW (2)
void op_pshuf(Cpu& c, const Insn& in) {
  sse_check(c);
  __m128i s = xsrc<true>(c, in, 1);
  alignas(16) uint32_t d[4];
  alignas(16) uint16_t w[8];
  uint8_t imm = uint8_t(in.imm);
  if (in.cc == 0) {
    alignas(16) uint32_t v[4];
    _mm_store_si128(reinterpret_cast<__m128i*>(v), s);
    for (int i = 0; i < 4; ++i) d[i] = v[(imm >> (2 * i)) & 3];
    c.xmm[in.reg[0]] = from_m(_mm_load_si128(reinterpret_cast<const __m128i*>(d)));
    return;
  }
  alignas(16) uint16_t v[8];
  _mm_store_si128(reinterpret_cast<__m128i*>(v), s);
  for (int i = 0; i < 8; ++i) w[i] = v[i];
  int off = in.cc == 1 ? 0 : 4;
  for (int i = 0; i < 4; ++i) w[off + i] = v[off + ((imm >> (2 * i)) & 3)];
  c.xmm[in.reg[0]] = from_m(_mm_load_si128(reinterpret_cast<const __m128i*>(w)));
}

void op_shufps(Cpu& c, const Insn& in) {
  sse_check(c);
  alignas(16) uint32_t a[4], b[4], r[4];
  _mm_store_si128(reinterpret_cast<__m128i*>(a), to_m(c.xmm[in.reg[0]]));
  _mm_store_si128(reinterpret_cast<__m128i*>(b), xsrc<true>(c, in, 1));
  uint8_t imm = uint8_t(in.imm);
  r[0] = a[imm & 3];
  r[1] = a[(imm >> 2) & 3];
  r[2] = b[(imm >> 4) & 3];
  r[3] = b[(imm >> 6) & 3];
  c.xmm[in.reg[0]] = from_m(_mm_load_si128(reinterpret_cast<const __m128i*>(r)));
}

void op_shufpd(Cpu& c, const Insn& in) {
  sse_check(c);
  U128 a = c.xmm[in.reg[0]];
  U128 b = from_m(xsrc<true>(c, in, 1));
  uint8_t imm = uint8_t(in.imm);
  c.xmm[in.reg[0]] = U128{(imm & 1) ? a.hi : a.lo, (imm & 2) ? b.hi : b.lo};
}

void op_pextrw(Cpu& c, const Insn& in) {
  sse_check(c);
  alignas(16) uint16_t v[8];
  _mm_store_si128(reinterpret_cast<__m128i*>(v), to_m(c.xmm[in.reg[1]]));
  c.r[in.reg[0]] = v[in.imm & 7];
}

void op_pinsrw(Cpu& c, const Insn& in) {
  sse_check(c);
  uint16_t s = in.kind[1] == kOpReg ? uint16_t(c.r[in.reg[1]]) : c.rd<uint16_t>(c.ea(in));
  alignas(16) uint16_t v[8];
  _mm_store_si128(reinterpret_cast<__m128i*>(v), to_m(c.xmm[in.reg[0]]));
  v[in.imm & 7] = s;
  c.xmm[in.reg[0]] = from_m(_mm_load_si128(reinterpret_cast<const __m128i*>(v)));
}

// ---------------------------------------------------------------- compares and conversions


// (U)COMISD/(U)COMISS on the host under the guest MXCSR (DAZ, exception flags); ZF/PF/CF as the
// host sets them, OF/SF/AF cleared.
template <bool Double>
void op_ucomis(Cpu& c, const Insn& in) {
  sse_check(c);
  __m128i a = to_m(c.xmm[in.reg[0]]);
  __m128i b = Double ? _mm_set_epi64x(0, int64_t(qsrc(c, in, 1)))
                     : _mm_set_epi32(0, 0, 0, int32_t(dsrc(c, in, 1)));
  uint8_t z, p, cf;
  {
    GuestMxcsr m(c);
    if (Double) {
      if (in.cc)
        asm volatile("comisd %4, %3\n\tsetz %0\n\tsetp %1\n\tsetc %2"
                     : "=r"(z), "=r"(p), "=r"(cf) : "x"(a), "x"(b) : "cc");
      else
        asm volatile("ucomisd %4, %3\n\tsetz %0\n\tsetp %1\n\tsetc %2"
                     : "=r"(z), "=r"(p), "=r"(cf) : "x"(a), "x"(b) : "cc");
    } else {
      if (in.cc)
        asm volatile("comiss %4, %3\n\tsetz %0\n\tsetp %1\n\tsetc %2"
                     : "=r"(z), "=r"(p), "=r"(cf) : "x"(a), "x"(b) : "cc");
      else
        asm volatile("ucomiss %4, %3\n\tsetz %0\n\tsetp %1\n\tsetc %2"
                     : "=r"(z), "=r"(p), "=r"(cf) : "x"(a), "x"(b) : "cc");
    }
    m.finish();
  }
  uint64_t f = c.flags() & ~(kFlagCF | kFlagPF | kFlagAF | kFlagZF | kFlagSF | kFlagOF);
  if (z) f |= kFlagZF;
  if (p) f |= kFlagPF;
  if (cf) f |= kFlagCF;
  c.set_flags(f);
}

// CMPSD/CMPSS/CMPPD/CMPPS with predicate imm 0..7. cc: 0 sd, 1 ss, 2 pd, 3 ps.
template <typename F>
uint64_t cmp_pred(F a, F b, unsigned p) {
  bool un = std::isnan(a) || std::isnan(b);
  bool r;
  switch (p & 7) {
    case 0: r = !un && a == b; break;
    case 1: r = !un && a < b; break;
    case 2: r = !un && a <= b; break;
    case 3: r = un; break;
    case 4: r = un || a != b; break;
    case 5: r = un || !(a < b); break;
    case 6: r = un || !(a <= b); break;
    default: r = !un; break;
  }
  return r ? ~0ull : 0;
}

void op_cmpfp(Cpu& c, const Insn& in) {
  sse_check(c);
  U128& d = c.xmm[in.reg[0]];
  unsigned p = unsigned(in.imm);
  switch (in.cc) {
    case 0: {
      double a, b;
      uint64_t bv = qsrc(c, in, 1);
      std::memcpy(&a, &d.lo, 8);
      std::memcpy(&b, &bv, 8);
      d.lo = cmp_pred(a, b, p);
      return;
    }
    case 1: {
      float a, b;
      uint32_t av = uint32_t(d.lo), bv = dsrc(c, in, 1);
      std::memcpy(&a, &av, 4);
      std::memcpy(&b, &bv, 4);
      d.lo = (d.lo & ~0xFFFFFFFFull) | (cmp_pred(a, b, p) & 0xFFFFFFFFull);
      return;
    }
    case 2: {
      U128 s = from_m(xsrc<true>(c, in, 1));
      double a0, a1, b0, b1;
      std::memcpy(&a0, &d.lo, 8);
      std::memcpy(&a1, &d.hi, 8);
      std::memcpy(&b0, &s.lo, 8);
      std::memcpy(&b1, &s.hi, 8);
      d = U128{cmp_pred(a0, b0, p), cmp_pred(a1, b1, p)};
      return;
    }
    default: {
      alignas(16) float a[4], b[4];
      alignas(16) uint32_t r[4];
      _mm_store_si128(reinterpret_cast<__m128i*>(a), to_m(d));
      _mm_store_si128(reinterpret_cast<__m128i*>(b), xsrc<true>(c, in, 1));
      for (int i = 0; i < 4; ++i) r[i] = uint32_t(cmp_pred(a[i], b[i], p));
      d = from_m(_mm_load_si128(reinterpret_cast<const __m128i*>(r)));
      return;
    }
  }
}

// CVTSI2SD/CVTSI2SS xmm, r/m32/64 (cc: 0 sd, 1 ss; opsz2: integer size)
void op_cvtsi2f(Cpu& c, const Insn& in) {
  sse_check(c);
  int64_t v;
  if (in.opsz2 == 8) v = int64_t(get_any<uint64_t>(c, in, 1));
  else v = int32_t(get_any<uint32_t>(c, in, 1));
  U128& d = c.xmm[in.reg[0]];
  GuestMxcsr m(c);
  if (in.cc == 0) {
    __m128d r = _mm_cvtsi64_sd(_mm_setzero_pd(), v);
    m.finish();
    double f = _mm_cvtsd_f64(r);
    std::memcpy(&d.lo, &f, 8);
  } else {
    __m128 r = _mm_cvtsi64_ss(_mm_setzero_ps(), v);
    m.finish();
    float f = _mm_cvtss_f32(r);
    uint32_t bits;
    std::memcpy(&bits, &f, 4);
    d.lo = (d.lo & ~0xFFFFFFFFull) | bits;
  }
}

// CVT(T)SD2SI / CVT(T)SS2SI r32/64, xmm/m (cc bit0: ss, bit1: truncate)
void op_cvtf2si(Cpu& c, const Insn& in) {
  sse_check(c);
  bool ss = in.cc & 1, trunc = in.cc & 2;
  double v;
  if (ss) {
    uint32_t bits = dsrc(c, in, 1);
    float f;
    std::memcpy(&f, &bits, 4);
    v = f;
  } else {
    uint64_t bits = qsrc(c, in, 1);
    std::memcpy(&v, &bits, 8);
  }
  uint64_t out;
  {
    GuestMxcsr m(c);
    if (ss) {
      float f = float(v);  // exact: v came from a float
      __m128 x = _mm_set_ss(f);
      out = in.osz == 8 ? uint64_t(trunc ? _mm_cvttss_si64(x) : _mm_cvtss_si64(x))
                        : uint32_t(trunc ? _mm_cvttss_si32(x) : _mm_cvtss_si32(x));
    } else {
      __m128d x = _mm_set_sd(v);
      out = in.osz == 8 ? uint64_t(trunc ? _mm_cvttsd_si64(x) : _mm_cvtsd_si64(x))
                        : uint32_t(trunc ? _mm_cvttsd_si32(x) : _mm_cvtsd_si32(x));
    }
    m.finish();
  }
  c.r[in.reg[0]] = out;
}

void op_cvtsd2ss(Cpu& c, const Insn& in) {
  sse_check(c);
  uint64_t bits = qsrc(c, in, 1);
  __m128d x = _mm_castsi128_pd(_mm_set_epi64x(0, int64_t(bits)));
  GuestMxcsr m(c);
  __m128 r = _mm_cvtsd_ss(_mm_setzero_ps(), x);
  m.finish();
  float f = _mm_cvtss_f32(r);
  uint32_t fb;
  std::memcpy(&fb, &f, 4);
  U128& d = c.xmm[in.reg[0]];
  d.lo = (d.lo & ~0xFFFFFFFFull) | fb;
}

void op_cvtss2sd(Cpu& c, const Insn& in) {
  sse_check(c);
  uint32_t bits = dsrc(c, in, 1);
  __m128 x = _mm_castsi128_ps(_mm_set_epi32(0, 0, 0, int32_t(bits)));
  GuestMxcsr m(c);
  __m128d r = _mm_cvtss_sd(_mm_setzero_pd(), x);
  m.finish();
  double v = _mm_cvtsd_f64(r);
  std::memcpy(&c.xmm[in.reg[0]].lo, &v, 8);
}

// Packed conversions (cc: 0 cvtdq2pd, 1 cvtdq2ps, 2 cvttps2dq, 3 cvtps2pd, 4 cvtpd2ps,
// 5 cvttpd2dq, 6 cvtps2dq)
void op_cvtpacked(Cpu& c, const Insn& in) {
  sse_check(c);
  __m128i s;
  if ((in.cc == 0 || in.cc == 3) && in.kind[1] == kOpMem) s = _mm_set_epi64x(0, int64_t(qsrc(c, in, 1)));
  else s = xsrc<true>(c, in, 1);
  __m128i r;
  GuestMxcsr m(c);
  switch (in.cc) {
    case 0: r = _mm_castpd_si128(_mm_cvtepi32_pd(s)); break;
    case 1: r = _mm_castps_si128(_mm_cvtepi32_ps(s)); break;
    case 2: r = _mm_cvttps_epi32(_mm_castsi128_ps(s)); break;
    case 3: r = _mm_castpd_si128(_mm_cvtps_pd(_mm_castsi128_ps(s))); break;
    case 4: r = _mm_castps_si128(_mm_cvtpd_ps(_mm_castsi128_pd(s))); break;
    case 5: r = _mm_cvttpd_epi32(_mm_castsi128_pd(s)); break;
    default: r = _mm_cvtps_epi32(_mm_castsi128_ps(s)); break;
  }
  m.finish();
  c.xmm[in.reg[0]] = from_m(r);
}

// ---------------------------------------------------------------- MXCSR, FXSAVE, x87 control

void op_ldmxcsr(Cpu& c, const Insn& in) {
  sse_check(c);
  uint32_t v = c.rd<uint32_t>(c.ea(in));
  if (v & ~0xFFFFu) raise_fault(kGP, 0);
  c.mxcsr = v;
}
void op_stmxcsr(Cpu& c, const Insn& in) {
  sse_check(c);
  c.wr<uint32_t>(c.ea(in), c.mxcsr);
}

void fpu_check(Cpu& c) {
  if (c.cr0 & (kCr0Em | kCr0Ts)) raise_fault(kNM);
}

void op_fxsave(Cpu& c, const Insn& in) {
  fpu_check(c);
  uint64_t a = c.ea(in);
  if (a & 15) raise_fault(kGP, 0);
  FpuState f = c.get_fpu();
  // Probe the whole area for write access first so a fault leaves memory untouched.
  (void)c.wptr<uint8_t>(a);
  (void)c.wptr<uint8_t>(a + 511);
  for (int i = 0; i < 512; i += 16) {
    U128 v;
    std::memcpy(&v, f.fxsave.data() + i, 16);
    c.wr<U128>(a + i, v);
  }
}

void op_fxrstor(Cpu& c, const Insn& in) {
  fpu_check(c);
  uint64_t a = c.ea(in);
  if (a & 15) raise_fault(kGP, 0);
  FpuState f{};
  for (int i = 0; i < 512; i += 16) {
    U128 v = c.rd<U128>(a + i);
    std::memcpy(f.fxsave.data() + i, &v, 16);
  }
  uint32_t mx;
  std::memcpy(&mx, f.fxsave.data() + 24, 4);
  if (mx & ~0xFFFFu) raise_fault(kGP, 0);
  c.set_fpu(f);
}

void op_fninit(Cpu& c, const Insn&) {
  fpu_check(c);
  // st_regs is in stack order (ST(i), as FXSAVE stores it) and TOP becomes 0: the registers keep
  // their physical contents, so ST(i) becomes physical register i.
  const int top = (c.fsw >> 11) & 7;
  uint8_t physical[8][16];
  for (int i = 0; i < 8; ++i) std::memcpy(physical[(top + i) & 7], c.st_regs[i], 16);
  std::memcpy(c.st_regs, physical, sizeof physical);
  c.fcw = 0x37F;
  c.fsw = 0;
  c.ftw = 0;
}
void op_fnstcw(Cpu& c, const Insn& in) {
  fpu_check(c);
  c.wr<uint16_t>(c.ea(in), c.fcw);
}
void op_fldcw(Cpu& c, const Insn& in) {
  fpu_check(c);
  c.fcw = c.rd<uint16_t>(c.ea(in));
}
void op_fnstsw(Cpu& c, const Insn& in) {
  fpu_check(c);
  if (in.kind[0] == kOpReg) c.set_reg<uint16_t>(x86::RAX, c.fsw);
  else c.wr<uint16_t>(c.ea(in), c.fsw);
}
void op_fnclex(Cpu& c, const Insn&) {
  fpu_check(c);
  c.fsw &= 0x7F00;
}
void op_fwait(Cpu& c, const Insn&) {
  if ((c.cr0 & (kCr0Ts | (1ull << 1))) == (kCr0Ts | (1ull << 1))) raise_fault(kNM);
  // A pending unmasked x87 exception (FSW.ES, or a flag FLDCW unmasked) is delivered here.
  if ((c.fsw & 0x80) || (c.fsw & ~c.fcw & 0x3F)) raise_fault(kMF);
}
void op_emms(Cpu& c, const Insn&) {
  fpu_check(c);
  c.ftw = 0;
}

template <typename F>
Handler bin() {
  return &Bin<F>::run;
}

}  // namespace

bool select_sse(DecodeCtx& d) {
  Insn& in = d.in;
  const auto m = d.zi.mnemonic;
  // MMX (64-bit) forms are not implemented: only XMM register operands are accepted below.
  for (int i = 0; i < d.zi.operand_count_visible; ++i)
    if (d.ops[i].type == ZYDIS_OPERAND_TYPE_REGISTER &&
        ZydisRegisterGetClass(d.ops[i].reg.value) == ZYDIS_REGCLASS_MMX)
      return false;
  auto is_xmm = [&](int i) {
    return d.ops[i].type == ZYDIS_OPERAND_TYPE_REGISTER &&
           ZydisRegisterGetClass(d.ops[i].reg.value) == ZYDIS_REGCLASS_XMM;
  };
  switch (m) {
    case ZYDIS_MNEMONIC_MOVDQA: case ZYDIS_MNEMONIC_MOVAPS: case ZYDIS_MNEMONIC_MOVAPD:
    case ZYDIS_MNEMONIC_MOVNTDQ: case ZYDIS_MNEMONIC_MOVNTPS: case ZYDIS_MNEMONIC_MOVNTPD:
      in.fn = &op_mov128<true>;
      return true;
    case ZYDIS_MNEMONIC_MOVDQU: case ZYDIS_MNEMONIC_MOVUPS: case ZYDIS_MNEMONIC_MOVUPD:
      in.fn = &op_mov128<false>;
      return true;
    case ZYDIS_MNEMONIC_MOVQ:
    case ZYDIS_MNEMONIC_MOVD: {
      in.cc = m == ZYDIS_MNEMONIC_MOVQ ? 8 : 4;
      if (m == ZYDIS_MNEMONIC_MOVD && in.osz == 8) in.cc = 8;  // 66 REX.W 0F 6E/7E
      if (is_xmm(0) && (is_xmm(1) || in.kind[1] == kOpMem)) in.imm2 = 0;
      else if (is_xmm(0)) in.imm2 = 1;
      else if (in.kind[0] == kOpReg) in.imm2 = 2;
      else in.imm2 = 3;
      // GPR operand size decides between 32 and 64 bits.
      if (in.imm2 == 1) in.cc = uint8_t(d.ops[1].size / 8);
      if (in.imm2 == 2) in.cc = uint8_t(d.ops[0].size / 8);
      if (in.imm2 == 3) in.cc = uint8_t(d.ops[0].size / 8);
      if (in.imm2 == 0 && in.kind[1] == kOpMem) in.cc = uint8_t(d.ops[1].size / 8);
      in.fn = op_movq_d;
      return true;
    }
    case ZYDIS_MNEMONIC_MOVSD: in.fn = &op_movs_scalar<uint64_t>; return true;
    case ZYDIS_MNEMONIC_MOVSS: in.fn = &op_movs_scalar<uint32_t>; return true;
    case ZYDIS_MNEMONIC_MOVHPS: case ZYDIS_MNEMONIC_MOVHPD: case ZYDIS_MNEMONIC_MOVLHPS:
      in.cc = 1;
      in.fn = op_movhl;
      return true;
    case ZYDIS_MNEMONIC_MOVLPS: case ZYDIS_MNEMONIC_MOVLPD: case ZYDIS_MNEMONIC_MOVHLPS:
      in.cc = 0;
      in.fn = op_movhl;
      return true;
    case ZYDIS_MNEMONIC_MOVNTI: in.fn = op_movnti; return true;
    case ZYDIS_MNEMONIC_PMOVMSKB: in.fn = op_pmovmskb; return true;
    case ZYDIS_MNEMONIC_MOVMSKPS: in.fn = op_movmskps; return true;
    case ZYDIS_MNEMONIC_MOVMSKPD: in.fn = op_movmskpd; return true;

    case ZYDIS_MNEMONIC_PXOR: in.fn = bin<Pxor>(); return true;
    case ZYDIS_MNEMONIC_POR: in.fn = bin<Por>(); return true;
    case ZYDIS_MNEMONIC_PAND: in.fn = bin<Pand>(); return true;
    case ZYDIS_MNEMONIC_PANDN: in.fn = bin<Pandn>(); return true;
    case ZYDIS_MNEMONIC_PCMPEQB: in.fn = bin<Pcmpeqb>(); return true;
    case ZYDIS_MNEMONIC_PCMPEQW: in.fn = bin<Pcmpeqw>(); return true;
    case ZYDIS_MNEMONIC_PCMPEQD: in.fn = bin<Pcmpeqd>(); return true;
    case ZYDIS_MNEMONIC_PCMPGTB: in.fn = bin<Pcmpgtb>(); return true;
    case ZYDIS_MNEMONIC_PCMPGTW: in.fn = bin<Pcmpgtw>(); return true;
    case ZYDIS_MNEMONIC_PCMPGTD: in.fn = bin<Pcmpgtd>(); return true;
    case ZYDIS_MNEMONIC_PMINUB: in.fn = bin<Pminub>(); return true;
    case ZYDIS_MNEMONIC_PMAXUB: in.fn = bin<Pmaxub>(); return true;
    case ZYDIS_MNEMONIC_PMINSW: in.fn = bin<Pminsw>(); return true;
    case ZYDIS_MNEMONIC_PMAXSW: in.fn = bin<Pmaxsw>(); return true;
    case ZYDIS_MNEMONIC_PADDB: in.fn = bin<Paddb>(); return true;
    case ZYDIS_MNEMONIC_PADDW: in.fn = bin<Paddw>(); return true;
    case ZYDIS_MNEMONIC_PADDD: in.fn = bin<Paddd>(); return true;
    case ZYDIS_MNEMONIC_PADDQ: in.fn = bin<Paddq>(); return true;
    case ZYDIS_MNEMONIC_PSUBB: in.fn = bin<Psubb>(); return true;
    case ZYDIS_MNEMONIC_PSUBW: in.fn = bin<Psubw>(); return true;
    case ZYDIS_MNEMONIC_PSUBD: in.fn = bin<Psubd>(); return true;
    case ZYDIS_MNEMONIC_PSUBQ: in.fn = bin<Psubq>(); return true;
    case ZYDIS_MNEMONIC_PADDUSB: in.fn = bin<Paddusb>(); return true;
    case ZYDIS_MNEMONIC_PADDUSW: in.fn = bin<Paddusw>(); return true;
    case ZYDIS_MNEMONIC_PSUBUSB: in.fn = bin<Psubusb>(); return true;
    case ZYDIS_MNEMONIC_PSUBUSW: in.fn = bin<Psubusw>(); return true;
    case ZYDIS_MNEMONIC_PADDSB: in.fn = bin<Paddsb>(); return true;
    case ZYDIS_MNEMONIC_PADDSW: in.fn = bin<Paddsw>(); return true;
    case ZYDIS_MNEMONIC_PSUBSB: in.fn = bin<Psubsb>(); return true;
    case ZYDIS_MNEMONIC_PSUBSW: in.fn = bin<Psubsw>(); return true;
    case ZYDIS_MNEMONIC_PMULLW: in.fn = bin<Pmullw>(); return true;
    case ZYDIS_MNEMONIC_PMULHW: in.fn = bin<Pmulhw>(); return true;
    case ZYDIS_MNEMONIC_PMULHUW: in.fn = bin<Pmulhuw>(); return true;
    case ZYDIS_MNEMONIC_PMULUDQ: in.fn = bin<Pmuludq>(); return true;
    case ZYDIS_MNEMONIC_PMADDWD: in.fn = bin<Pmaddwd>(); return true;
    case ZYDIS_MNEMONIC_PSADBW: in.fn = bin<Psadbw>(); return true;
    case ZYDIS_MNEMONIC_PAVGB: in.fn = bin<Pavgb>(); return true;
    case ZYDIS_MNEMONIC_PAVGW: in.fn = bin<Pavgw>(); return true;
    case ZYDIS_MNEMONIC_PUNPCKLBW: in.fn = bin<Punpcklbw>(); return true;
    case ZYDIS_MNEMONIC_PUNPCKLWD: in.fn = bin<Punpcklwd>(); return true;
    case ZYDIS_MNEMONIC_PUNPCKLDQ: in.fn = bin<Punpckldq>(); return true;
    case ZYDIS_MNEMONIC_PUNPCKLQDQ: in.fn = bin<Punpcklqdq>(); return true;
    case ZYDIS_MNEMONIC_PUNPCKHBW: in.fn = bin<Punpckhbw>(); return true;
    case ZYDIS_MNEMONIC_PUNPCKHWD: in.fn = bin<Punpckhwd>(); return true;
    case ZYDIS_MNEMONIC_PUNPCKHDQ: in.fn = bin<Punpckhdq>(); return true;
    case ZYDIS_MNEMONIC_PUNPCKHQDQ: in.fn = bin<Punpckhqdq>(); return true;
    case ZYDIS_MNEMONIC_PACKUSWB: in.fn = bin<Packuswb>(); return true;
    case ZYDIS_MNEMONIC_PACKSSWB: in.fn = bin<Packsswb>(); return true;
    case ZYDIS_MNEMONIC_PACKSSDW: in.fn = bin<Packssdw>(); return true;
    case ZYDIS_MNEMONIC_XORPS: case ZYDIS_MNEMONIC_XORPD: in.fn = bin<Xorps>(); return true;
    case ZYDIS_MNEMONIC_ANDPS: case ZYDIS_MNEMONIC_ANDPD: in.fn = bin<Andps>(); return true;
    case ZYDIS_MNEMONIC_ANDNPS: case ZYDIS_MNEMONIC_ANDNPD: in.fn = bin<Andnps>(); return true;
    case ZYDIS_MNEMONIC_ORPS: case ZYDIS_MNEMONIC_ORPD: in.fn = bin<Orps>(); return true;
    case ZYDIS_MNEMONIC_ADDPS: in.fn = &Bin<Addps, true>::run; return true;
    case ZYDIS_MNEMONIC_SUBPS: in.fn = &Bin<Subps, true>::run; return true;
    case ZYDIS_MNEMONIC_MULPS: in.fn = &Bin<Mulps, true>::run; return true;
    case ZYDIS_MNEMONIC_DIVPS: in.fn = &Bin<Divps, true>::run; return true;
    case ZYDIS_MNEMONIC_MINPS: in.fn = &Bin<Minps, true>::run; return true;
    case ZYDIS_MNEMONIC_MAXPS: in.fn = &Bin<Maxps, true>::run; return true;
    case ZYDIS_MNEMONIC_UNPCKLPS: in.fn = bin<Unpcklps>(); return true;
    case ZYDIS_MNEMONIC_UNPCKHPS: in.fn = bin<Unpckhps>(); return true;
    case ZYDIS_MNEMONIC_SQRTPD: in.fn = &Bin<Sqrtpd, true>::run; return true;
    case ZYDIS_MNEMONIC_SQRTPS: in.fn = &Bin<Sqrtps, true>::run; return true;
    case ZYDIS_MNEMONIC_ADDPD: in.fn = &Bin<Addpd, true>::run; return true;
    case ZYDIS_MNEMONIC_SUBPD: in.fn = &Bin<Subpd, true>::run; return true;
    case ZYDIS_MNEMONIC_MULPD: in.fn = &Bin<Mulpd, true>::run; return true;
    case ZYDIS_MNEMONIC_DIVPD: in.fn = &Bin<Divpd, true>::run; return true;
    case ZYDIS_MNEMONIC_MINPD: in.fn = &Bin<Minpd, true>::run; return true;
    case ZYDIS_MNEMONIC_MAXPD: in.fn = &Bin<Maxpd, true>::run; return true;
    case ZYDIS_MNEMONIC_UNPCKLPD: in.fn = bin<Unpcklpd>(); return true;
    case ZYDIS_MNEMONIC_UNPCKHPD: in.fn = bin<Unpckhpd>(); return true;

    case ZYDIS_MNEMONIC_ADDSD: in.fn = &ScalarSd<Addsd>::run; return true;
    case ZYDIS_MNEMONIC_SUBSD: in.fn = &ScalarSd<Subsd>::run; return true;
    case ZYDIS_MNEMONIC_MULSD: in.fn = &ScalarSd<Mulsd>::run; return true;
    case ZYDIS_MNEMONIC_DIVSD: in.fn = &ScalarSd<Divsd>::run; return true;
    case ZYDIS_MNEMONIC_MINSD: in.fn = &ScalarSd<Minsd>::run; return true;
    case ZYDIS_MNEMONIC_MAXSD: in.fn = &ScalarSd<Maxsd>::run; return true;
    case ZYDIS_MNEMONIC_SQRTSD: in.fn = &ScalarSd<Sqrtsd>::run; return true;
    case ZYDIS_MNEMONIC_ADDSS: in.fn = &ScalarSs<Addss>::run; return true;
    case ZYDIS_MNEMONIC_SUBSS: in.fn = &ScalarSs<Subss>::run; return true;
    case ZYDIS_MNEMONIC_MULSS: in.fn = &ScalarSs<Mulss>::run; return true;
    case ZYDIS_MNEMONIC_DIVSS: in.fn = &ScalarSs<Divss>::run; return true;
    case ZYDIS_MNEMONIC_MINSS: in.fn = &ScalarSs<Minss>::run; return true;
    case ZYDIS_MNEMONIC_MAXSS: in.fn = &ScalarSs<Maxss>::run; return true;
    case ZYDIS_MNEMONIC_SQRTSS: in.fn = &ScalarSs<Sqrtss>::run; return true;

    case ZYDIS_MNEMONIC_PSRLW: in.cc = 0; in.fn = op_pshift; return true;
    case ZYDIS_MNEMONIC_PSRAW: in.cc = 1; in.fn = op_pshift; return true;
    case ZYDIS_MNEMONIC_PSLLW: in.cc = 2; in.fn = op_pshift; return true;
    case ZYDIS_MNEMONIC_PSRLD: in.cc = 3; in.fn = op_pshift; return true;
    case ZYDIS_MNEMONIC_PSRAD: in.cc = 4; in.fn = op_pshift; return true;
    case ZYDIS_MNEMONIC_PSLLD: in.cc = 5; in.fn = op_pshift; return true;
    case ZYDIS_MNEMONIC_PSRLQ: in.cc = 6; in.fn = op_pshift; return true;
    case ZYDIS_MNEMONIC_PSLLQ: in.cc = 7; in.fn = op_pshift; return true;
    case ZYDIS_MNEMONIC_PSRLDQ: in.cc = 8; in.fn = op_pshift; return true;
    case ZYDIS_MNEMONIC_PSLLDQ: in.cc = 9; in.fn = op_pshift; return true;
    case ZYDIS_MNEMONIC_PSHUFD: in.cc = 0; in.fn = op_pshuf; return true;
    case ZYDIS_MNEMONIC_PSHUFLW: in.cc = 1; in.fn = op_pshuf; return true;
    case ZYDIS_MNEMONIC_PSHUFHW: in.cc = 2; in.fn = op_pshuf; return true;
    case ZYDIS_MNEMONIC_SHUFPS: in.fn = op_shufps; return true;
    case ZYDIS_MNEMONIC_SHUFPD: in.fn = op_shufpd; return true;
    case ZYDIS_MNEMONIC_PEXTRW: in.fn = op_pextrw; return is_xmm(1);
    case ZYDIS_MNEMONIC_PINSRW: in.fn = op_pinsrw; return true;

    case ZYDIS_MNEMONIC_UCOMISD: in.cc = 0; in.fn = &op_ucomis<true>; return true;
    case ZYDIS_MNEMONIC_COMISD: in.cc = 1; in.fn = &op_ucomis<true>; return true;
    case ZYDIS_MNEMONIC_UCOMISS: in.cc = 0; in.fn = &op_ucomis<false>; return true;
    case ZYDIS_MNEMONIC_COMISS: in.cc = 1; in.fn = &op_ucomis<false>; return true;
    case ZYDIS_MNEMONIC_CMPSD:
      if (d.zi.opcode_map == ZYDIS_OPCODE_MAP_DEFAULT) return false;
      in.cc = 0; in.fn = op_cmpfp; return true;
    case ZYDIS_MNEMONIC_CMPSS: in.cc = 1; in.fn = op_cmpfp; return true;
    case ZYDIS_MNEMONIC_CMPPD: in.cc = 2; in.fn = op_cmpfp; return true;
    case ZYDIS_MNEMONIC_CMPPS: in.cc = 3; in.fn = op_cmpfp; return true;
    case ZYDIS_MNEMONIC_CVTSI2SD: in.cc = 0; in.fn = op_cvtsi2f; return true;
    case ZYDIS_MNEMONIC_CVTSI2SS: in.cc = 1; in.fn = op_cvtsi2f; return true;
    case ZYDIS_MNEMONIC_CVTSD2SI: in.cc = 0; in.fn = op_cvtf2si; return true;
    case ZYDIS_MNEMONIC_CVTSS2SI: in.cc = 1; in.fn = op_cvtf2si; return true;
    case ZYDIS_MNEMONIC_CVTTSD2SI: in.cc = 2; in.fn = op_cvtf2si; return true;
    case ZYDIS_MNEMONIC_CVTTSS2SI: in.cc = 3; in.fn = op_cvtf2si; return true;
    case ZYDIS_MNEMONIC_CVTSD2SS: in.fn = op_cvtsd2ss; return true;
    case ZYDIS_MNEMONIC_CVTSS2SD: in.fn = op_cvtss2sd; return true;
    case ZYDIS_MNEMONIC_CVTDQ2PD: in.cc = 0; in.fn = op_cvtpacked; return true;
    case ZYDIS_MNEMONIC_CVTDQ2PS: in.cc = 1; in.fn = op_cvtpacked; return true;
    case ZYDIS_MNEMONIC_CVTTPS2DQ: in.cc = 2; in.fn = op_cvtpacked; return true;
    case ZYDIS_MNEMONIC_CVTPS2PD: in.cc = 3; in.fn = op_cvtpacked; return true;
    case ZYDIS_MNEMONIC_CVTPD2PS: in.cc = 4; in.fn = op_cvtpacked; return true;
    case ZYDIS_MNEMONIC_CVTTPD2DQ: in.cc = 5; in.fn = op_cvtpacked; return true;
    case ZYDIS_MNEMONIC_CVTPS2DQ: in.cc = 6; in.fn = op_cvtpacked; return true;

    case ZYDIS_MNEMONIC_LDMXCSR: in.fn = op_ldmxcsr; return true;
    case ZYDIS_MNEMONIC_STMXCSR: in.fn = op_stmxcsr; return true;
    case ZYDIS_MNEMONIC_FXSAVE: case ZYDIS_MNEMONIC_FXSAVE64: in.fn = op_fxsave; return true;
    case ZYDIS_MNEMONIC_FXRSTOR: case ZYDIS_MNEMONIC_FXRSTOR64: in.fn = op_fxrstor; return true;
    case ZYDIS_MNEMONIC_FNINIT: in.fn = op_fninit; return true;
    case ZYDIS_MNEMONIC_FNSTCW: in.fn = op_fnstcw; return true;
    case ZYDIS_MNEMONIC_FLDCW: in.fn = op_fldcw; return true;
    case ZYDIS_MNEMONIC_FNSTSW: in.fn = op_fnstsw; return true;
    case ZYDIS_MNEMONIC_FNCLEX: in.fn = op_fnclex; return true;
    case ZYDIS_MNEMONIC_FWAIT: in.fn = op_fwait; return true;
    case ZYDIS_MNEMONIC_EMMS: in.fn = op_emms; return true;
    default:
      return false;
  }
}

}  // namespace keel::emu
