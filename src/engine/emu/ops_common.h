// Shared helpers for the instruction handlers (ops_*.cc): operand access specialised at compile
// time on the operand kind, and the size dispatch used by the selectors.
#pragma once

#include <cstring>
#include <type_traits>

#include "engine/emu/cpu.h"
#include "engine/emu/decode.h"

namespace keel::emu {

template <typename T>
inline T load(const uint8_t* p) {
  T v;
  std::memcpy(&v, p, sizeof(T));
  return v;
}
template <typename T>
inline void store(uint8_t* p, T v) {
  std::memcpy(p, &v, sizeof(T));
}

// Operand i of kind K (compile-time) as a T.
template <typename T, int K>
inline T get_op(Cpu& c, const Insn& in, int i) {
  if constexpr (K == kOpReg) return c.reg<T>(in.reg[i]);
  else if constexpr (K == kOpMem) return c.rd<T>(c.ea(in));
  else return static_cast<T>(in.imm);
}
template <typename T, int K>
inline void put_op(Cpu& c, const Insn& in, int i, T v) {
  if constexpr (K == kOpReg) c.set_reg<T>(in.reg[i], v);
  else c.wr<T>(c.ea(in), v);
}

// Run-time kind (for the less frequent instructions).
template <typename T>
inline T get_any(Cpu& c, const Insn& in, int i) {
  switch (in.kind[i]) {
    case kOpReg: return c.reg<T>(in.reg[i]);
    case kOpMem: return c.rd<T>(c.ea(in));
    default: return static_cast<T>(in.imm);
  }
}
template <typename T>
inline void put_any(Cpu& c, const Insn& in, int i, T v) {
  if (in.kind[i] == kOpReg) c.set_reg<T>(in.reg[i], v);
  else c.wr<T>(c.ea(in), v);
}

// The instruction is an atomic read-modify-write for other vCPUs and devices (LOCK, XCHG
// with memory: the decoder marks both, and MFENCE, with kPfxFence).
inline bool locked(const Insn& in) { return in.prefix & kPfxFence; }

// Read-modify-write of a memory destination: one translation for both halves. With `atomic`
// (locked()), one host compare-and-swap on guest RAM, so other vCPUs' locked operations and
// loads see it whole; f may run again on a retry (its side effects must only record its last
// call, as the flags do). An access that is misaligned, straddles two pages or reaches MMIO
// has no host atomic: every other vCPU is stopped around it (VcpuGroup::run_exclusive).
template <typename T, typename F>
inline void rmw_mem(Cpu& c, uint64_t a, F&& f, bool atomic = false) {
  if (uint8_t* p = c.wptr<T>(a)) {
    if (!atomic) {
      store<T>(p, f(load<T>(p)));
      return;
    }
    if ((reinterpret_cast<uintptr_t>(p) & (sizeof(T) - 1)) == 0) {
      T* cell = reinterpret_cast<T*>(p);
      T old = __atomic_load_n(cell, __ATOMIC_RELAXED);
      while (!__atomic_compare_exchange_n(cell, &old, f(old), false, __ATOMIC_SEQ_CST,
                                          __ATOMIC_SEQ_CST)) {
      }
      return;
    }
  }
  if (atomic) {
    c.run_exclusive([&] {
      T v = c.rd<T>(a);
      c.wr<T>(a, f(v));
    });
    return;
  }
  T v = c.rd<T>(a);
  c.wr<T>(a, f(v));
}

template <typename T>
inline constexpr uint8_t kBits = sizeof(T) * 8;

using S8 = int8_t;
using U8 = uint8_t;
using U16 = uint16_t;
using U32 = uint32_t;
using U64 = uint64_t;

template <typename T>
using Signed = std::make_signed_t<T>;

// Picks tmpl<T, ...> by the operand size in bytes.
#define KEEL_BY_SIZE(size, tmpl, ...)                               \
  ([&]() -> ::keel::emu::Handler {                                  \
    switch (size) {                                                 \
      case 1: return &tmpl<uint8_t __VA_OPT__(, ) __VA_ARGS__>;     \
      case 2: return &tmpl<uint16_t __VA_OPT__(, ) __VA_ARGS__>;    \
      case 4: return &tmpl<uint32_t __VA_OPT__(, ) __VA_ARGS__>;    \
      default: return &tmpl<uint64_t __VA_OPT__(, ) __VA_ARGS__>;   \
    }                                                               \
  }())

// Segment override of an instruction (DS when none), honouring 64-bit mode flattening.
inline uint8_t override_seg(const ZydisDecodedInstruction& zi, uint8_t mode) {
  uint8_t seg = kDS;
  if (zi.attributes & ZYDIS_ATTRIB_HAS_SEGMENT_FS) seg = kFS;
  else if (zi.attributes & ZYDIS_ATTRIB_HAS_SEGMENT_GS) seg = kGS;
  else if (zi.attributes & ZYDIS_ATTRIB_HAS_SEGMENT_ES) seg = kES;
  else if (zi.attributes & ZYDIS_ATTRIB_HAS_SEGMENT_CS) seg = kCS;
  else if (zi.attributes & ZYDIS_ATTRIB_HAS_SEGMENT_SS) seg = kSS;
  if (mode == 0 && seg != kFS && seg != kGS) seg = kSegFlat;
  return seg;
}

}  // namespace keel::emu
