// Block translation: guest x86-64 -> host x86-64. Guest and host share the instruction set, so
// most translated instructions are the guest's own operation re-encoded (xbyak) on host registers
// that cache guest registers, with memory operands turned into an inline soft-TLB lookup. What is
// not translated calls the instruction's interpreter handler (one semantics, two tiers).
//
// Invariants at every block entry: every guest register is in CpuHot::r, the guest flags are in
// the lazy-flag fields (lf_op/lf_res or rflags_), r15 holds the block's own linear address
// (r[kRegRip] is written only when leaving for the run loop or calling a handler).
// docs/architecture.md ("emu translator") has the whole design.
#include "engine/emu/jit/translator.h"

#include <Zydis/Zydis.h>
#include <xbyak/xbyak.h>

#include <deque>
#include <functional>
#include <limits>
#include <vector>

namespace keel::emu::jit {
namespace {

using Xbyak::Address;
using Xbyak::CodeGenerator;
using Xbyak::Label;
using Xbyak::Reg;
using Xbyak::Reg16;
using Xbyak::Reg32;
using Xbyak::Reg64;
using Xbyak::Reg8;
using Xbyak::RegExp;
using namespace Xbyak::util;

// How an instruction is translated.
enum class Op : uint8_t {
  kHelper,  // call the interpreter handler
  kMov, kMovx, kLea, kAlu, kTest, kUnary, kShift, kImul2, kImul3, kMul1, kCmov, kSetcc,
  kPush, kPop, kXchg, kCmpxchg, kXadd, kBt, kBswap, kCbw, kCwd, kNop, kMfence, kBsf,
  kJmp, kJcc, kCall, kRet, kJmpInd, kCallInd,
  // SSE moves and integer/logic operations, on the guest's XMM registers in CpuHot::xmm (no
  // MXCSR dependence: floating-point arithmetic keeps calling its handler).
  kSseMov, kSseBin, kSseMovq, kSsePmovmskb, kSseMovhl, kSseMovScalar,
};

struct Plan {
  Op op = Op::kHelper;
  uint8_t rd = 0;      // guest flags the native code reads
  uint8_t wr = 0;      // guest flags the native code writes (may be partial: the rest pass through)
  bool mem = false;    // accesses guest memory: may fault, so every flag is observable before it
};

int64_t sext(uint64_t v, int size) {
  switch (size) {
    case 1: return int8_t(v);
    case 2: return int16_t(v);
    case 4: return int32_t(v);
    default: return int64_t(v);
  }
}
bool fits_i32(int64_t v) { return v >= std::numeric_limits<int32_t>::min() && v <= std::numeric_limits<int32_t>::max(); }

bool is_xmm(const Insn& in, int i) { return in.kind[i] == kOpReg && (in.xmm_ops & (1u << i)); }

// SSE instructions with at least one XMM operand and no MMX/x87 ones (classify below).
Plan classify_sse(const Insn& in, bool memop) {
  Plan p;
  const auto m = static_cast<ZydisMnemonic>(in.mnem);
  const bool x0 = is_xmm(in, 0), x1 = is_xmm(in, 1);
  const bool m0 = in.kind[0] == kOpMem, m1 = in.kind[1] == kOpMem;
  auto set = [&](Op op) {
    p.op = op;
    p.mem = memop;
    return p;
  };
  switch (m) {
    case ZYDIS_MNEMONIC_MOVAPS: case ZYDIS_MNEMONIC_MOVAPD: case ZYDIS_MNEMONIC_MOVDQA:
    case ZYDIS_MNEMONIC_MOVUPS: case ZYDIS_MNEMONIC_MOVUPD: case ZYDIS_MNEMONIC_MOVDQU:
    case ZYDIS_MNEMONIC_MOVNTDQ: case ZYDIS_MNEMONIC_MOVNTPS: case ZYDIS_MNEMONIC_MOVNTPD:
      if ((x0 && (x1 || m1)) || (m0 && x1)) return set(Op::kSseMov);
      return p;
    case ZYDIS_MNEMONIC_MOVD: case ZYDIS_MNEMONIC_MOVQ:
      // The interpreter's decoder classified the form (in.imm2) and the width (in.cc).
      if (in.cc == 4 || in.cc == 8) return set(Op::kSseMovq);
      return p;
    case ZYDIS_MNEMONIC_PMOVMSKB:
      if (in.kind[0] == kOpReg && !x0 && x1) return set(Op::kSsePmovmskb);
      return p;
    case ZYDIS_MNEMONIC_MOVLPD: case ZYDIS_MNEMONIC_MOVHPD: case ZYDIS_MNEMONIC_MOVLPS:
    case ZYDIS_MNEMONIC_MOVHPS:
      if ((x0 && m1) || (m0 && x1)) return set(Op::kSseMovhl);
      return p;
    case ZYDIS_MNEMONIC_MOVSD: case ZYDIS_MNEMONIC_MOVSS:
      if ((x0 && (x1 || m1)) || (m0 && x1)) return set(Op::kSseMovScalar);
      return p;
    case ZYDIS_MNEMONIC_PXOR: case ZYDIS_MNEMONIC_POR: case ZYDIS_MNEMONIC_PAND:
    case ZYDIS_MNEMONIC_PANDN: case ZYDIS_MNEMONIC_XORPS: case ZYDIS_MNEMONIC_XORPD:
    case ZYDIS_MNEMONIC_ANDPS: case ZYDIS_MNEMONIC_ANDPD: case ZYDIS_MNEMONIC_ANDNPS:
    case ZYDIS_MNEMONIC_ANDNPD: case ZYDIS_MNEMONIC_ORPS: case ZYDIS_MNEMONIC_ORPD:
    case ZYDIS_MNEMONIC_PCMPEQB: case ZYDIS_MNEMONIC_PCMPEQW: case ZYDIS_MNEMONIC_PCMPEQD:
    case ZYDIS_MNEMONIC_PCMPGTB: case ZYDIS_MNEMONIC_PCMPGTW: case ZYDIS_MNEMONIC_PCMPGTD:
    case ZYDIS_MNEMONIC_PADDB: case ZYDIS_MNEMONIC_PADDW: case ZYDIS_MNEMONIC_PADDD:
    case ZYDIS_MNEMONIC_PADDQ: case ZYDIS_MNEMONIC_PSUBB: case ZYDIS_MNEMONIC_PSUBW:
    case ZYDIS_MNEMONIC_PSUBD: case ZYDIS_MNEMONIC_PSUBQ: case ZYDIS_MNEMONIC_PMINUB:
    case ZYDIS_MNEMONIC_PMAXUB: case ZYDIS_MNEMONIC_PUNPCKLBW: case ZYDIS_MNEMONIC_PUNPCKLWD:
    case ZYDIS_MNEMONIC_PUNPCKLDQ: case ZYDIS_MNEMONIC_PUNPCKLQDQ:
    case ZYDIS_MNEMONIC_PUNPCKHBW: case ZYDIS_MNEMONIC_PUNPCKHWD:
    case ZYDIS_MNEMONIC_PUNPCKHDQ: case ZYDIS_MNEMONIC_PUNPCKHQDQ:
      if (x0 && (x1 || m1) && in.kind[2] == kOpNone) return set(Op::kSseBin);
      return p;
    case ZYDIS_MNEMONIC_PSHUFD:
      if (x0 && (x1 || m1) && in.kind[2] == kOpImm) return set(Op::kSseBin);
      return p;
    default:
      return p;
  }
}

// Decides how `in` (at byte offset `next` past the block start, for RIP-relative operands) is
// translated. Everything the emitter below handles is listed here and nowhere else.
Plan classify(const Insn& in, int64_t next) {
  Plan p;
  const auto m = static_cast<ZydisMnemonic>(in.mnem);
  const uint8_t k0 = in.kind[0], k1 = in.kind[1], k2 = in.kind[2];
  const bool gpr = (in.prefix & kPfxGpr) && !in.xmm_ops;
  const int sz = in.osz;
  const bool memop = k0 == kOpMem || k1 == kOpMem || k2 == kOpMem;
  for (int i = 0; i < 3; ++i)
    if (in.kind[i] == kOpReg && in.reg[i] >= 16) return p;  // AH..BH: not encodable with REX
  if (memop) {
    if (in.asz != 8 || (in.seg != kSegFlat && in.seg != kFS && in.seg != kGS)) return p;
    if (in.base == kRegRip && !fits_i32(int64_t(in.disp) + next)) return p;
  }
  if (in.xmm_ops && (in.prefix & kPfxGpr)) return classify_sse(in, memop);
  if (!gpr) return p;
  if ((in.prefix & kPfxLock) && k0 != kOpMem) return p;
  if (in.prefix & kPfxFar) return p;
  const bool r0 = k0 == kOpReg, m0 = k0 == kOpMem;
  auto set = [&](Op op, bool mem) {
    p.op = op;
    p.rd = in.fl_read;
    p.wr = in.fl_write;
    p.mem = mem;
    return p;
  };
  auto imm_ok = [&] { return sz < 8 || fits_i32(int64_t(in.imm)); };
  switch (m) {
    case ZYDIS_MNEMONIC_MOV:
      if ((r0 || m0) && (k1 == kOpReg || k1 == kOpImm || (r0 && k1 == kOpMem)))
        if (!(m0 && k1 == kOpImm && !imm_ok())) return set(Op::kMov, memop);
      return p;
    case ZYDIS_MNEMONIC_MOVZX:
    case ZYDIS_MNEMONIC_MOVSX:
      if (r0 && sz >= 2 && (in.opsz2 == 1 || in.opsz2 == 2) && in.opsz2 < sz)
        return set(Op::kMovx, memop);
      return p;
    case ZYDIS_MNEMONIC_MOVSXD:
      if (r0 && sz == 8 && in.opsz2 == 4) return set(Op::kMovx, memop);
      return p;
    case ZYDIS_MNEMONIC_LEA:
      if (r0 && k1 == kOpMem && sz >= 2) return set(Op::kLea, false);
      return p;
    case ZYDIS_MNEMONIC_ADD: case ZYDIS_MNEMONIC_OR: case ZYDIS_MNEMONIC_ADC:
    case ZYDIS_MNEMONIC_SBB: case ZYDIS_MNEMONIC_AND: case ZYDIS_MNEMONIC_SUB:
    case ZYDIS_MNEMONIC_XOR: case ZYDIS_MNEMONIC_CMP:
      if ((r0 && (k1 == kOpReg || k1 == kOpImm || k1 == kOpMem)) ||
          (m0 && (k1 == kOpReg || k1 == kOpImm)))
        if (k1 != kOpImm || imm_ok()) return set(Op::kAlu, memop);
      return p;
    case ZYDIS_MNEMONIC_TEST:
      if ((r0 || m0) && (k1 == kOpReg || (k1 == kOpImm && imm_ok()))) return set(Op::kTest, memop);
      return p;
    case ZYDIS_MNEMONIC_INC: case ZYDIS_MNEMONIC_DEC: case ZYDIS_MNEMONIC_NEG:
    case ZYDIS_MNEMONIC_NOT:
      if (r0 || m0) return set(Op::kUnary, memop);
      return p;
    case ZYDIS_MNEMONIC_SHL: case ZYDIS_MNEMONIC_SHR: case ZYDIS_MNEMONIC_SAR:
    case ZYDIS_MNEMONIC_ROL: case ZYDIS_MNEMONIC_ROR: {
      if (!(r0 || m0)) return p;
      const bool rot = m == ZYDIS_MNEMONIC_ROL || m == ZYDIS_MNEMONIC_ROR;
      if (k1 == kOpImm) {
        unsigned cnt = unsigned(in.imm) & (sz == 8 ? 63 : 31);
        if (cnt == 0) return p;  // no flags change, a memory access all the same: interpreter
        set(Op::kShift, memop);
        p.rd = 0;
        p.wr = rot ? (kFlCF | kFlOF) : kFlAll;
        return p;
      }
      if (k1 == kOpReg && r0) {  // by CL: a zero count leaves every flag as it was
        set(Op::kShift, false);
        p.rd = kFlAll;
        p.wr = 0;
        return p;
      }
      return p;
    }
    case ZYDIS_MNEMONIC_IMUL:
      if (sz < 2) return p;
      if (r0 && (k1 == kOpReg || k1 == kOpMem) && k2 == kOpNone) return set(Op::kImul2, memop);
      if (r0 && (k1 == kOpReg || k1 == kOpMem) && k2 == kOpImm) return set(Op::kImul3, memop);
      if ((r0 || m0) && k1 == kOpNone && sz >= 4) return set(Op::kMul1, memop);
      return p;
    case ZYDIS_MNEMONIC_MUL:
      if ((r0 || m0) && k1 == kOpNone && sz >= 4) return set(Op::kMul1, memop);
      return p;
    case ZYDIS_MNEMONIC_CMOVO: case ZYDIS_MNEMONIC_CMOVNO: case ZYDIS_MNEMONIC_CMOVB:
    case ZYDIS_MNEMONIC_CMOVNB: case ZYDIS_MNEMONIC_CMOVZ: case ZYDIS_MNEMONIC_CMOVNZ:
    case ZYDIS_MNEMONIC_CMOVBE: case ZYDIS_MNEMONIC_CMOVNBE: case ZYDIS_MNEMONIC_CMOVS:
    case ZYDIS_MNEMONIC_CMOVNS: case ZYDIS_MNEMONIC_CMOVP: case ZYDIS_MNEMONIC_CMOVNP:
    case ZYDIS_MNEMONIC_CMOVL: case ZYDIS_MNEMONIC_CMOVNL: case ZYDIS_MNEMONIC_CMOVLE:
    case ZYDIS_MNEMONIC_CMOVNLE:
      if (r0 && sz >= 2 && (k1 == kOpReg || k1 == kOpMem)) return set(Op::kCmov, memop);
      return p;
    case ZYDIS_MNEMONIC_SETO: case ZYDIS_MNEMONIC_SETNO: case ZYDIS_MNEMONIC_SETB:
    case ZYDIS_MNEMONIC_SETNB: case ZYDIS_MNEMONIC_SETZ: case ZYDIS_MNEMONIC_SETNZ:
    case ZYDIS_MNEMONIC_SETBE: case ZYDIS_MNEMONIC_SETNBE: case ZYDIS_MNEMONIC_SETS:
    case ZYDIS_MNEMONIC_SETNS: case ZYDIS_MNEMONIC_SETP: case ZYDIS_MNEMONIC_SETNP:
    case ZYDIS_MNEMONIC_SETL: case ZYDIS_MNEMONIC_SETNL: case ZYDIS_MNEMONIC_SETLE:
    case ZYDIS_MNEMONIC_SETNLE:
      if (r0 || m0) return set(Op::kSetcc, memop);
      return p;
    case ZYDIS_MNEMONIC_PUSH:
      if (sz == 8 && (r0 || (k0 == kOpImm && fits_i32(int64_t(in.imm))))) return set(Op::kPush, true);
      return p;
    case ZYDIS_MNEMONIC_POP:
      if (sz == 8 && r0 && in.reg[0] != x86::RSP) return set(Op::kPop, true);
      return p;
    case ZYDIS_MNEMONIC_XCHG:
      if ((r0 && k1 == kOpReg) || (m0 && k1 == kOpReg) || (r0 && k1 == kOpMem))
        return set(Op::kXchg, memop);
      return p;
    case ZYDIS_MNEMONIC_CMPXCHG:
      if ((m0 || (r0 && in.reg[0] != x86::RAX)) && k1 == kOpReg) return set(Op::kCmpxchg, memop);
      return p;
    case ZYDIS_MNEMONIC_XADD:
      if ((m0 || (r0 && in.reg[0] != in.reg[1])) && k1 == kOpReg) return set(Op::kXadd, memop);
      return p;
    case ZYDIS_MNEMONIC_BT: case ZYDIS_MNEMONIC_BTS: case ZYDIS_MNEMONIC_BTR:
    case ZYDIS_MNEMONIC_BTC:
      if (sz >= 2 && ((r0 && (k1 == kOpReg || k1 == kOpImm)) || (m0 && k1 == kOpImm)))
        return set(Op::kBt, memop);
      return p;
    case ZYDIS_MNEMONIC_BSWAP:
      if (r0 && sz >= 4) return set(Op::kBswap, false);
      return p;
    case ZYDIS_MNEMONIC_CBW: case ZYDIS_MNEMONIC_CWDE: case ZYDIS_MNEMONIC_CDQE:
      return set(Op::kCbw, false);
    case ZYDIS_MNEMONIC_CWD: case ZYDIS_MNEMONIC_CDQ: case ZYDIS_MNEMONIC_CQO:
      return set(Op::kCwd, false);
    case ZYDIS_MNEMONIC_NOP: case ZYDIS_MNEMONIC_ENDBR64:
    case ZYDIS_MNEMONIC_ENDBR32: case ZYDIS_MNEMONIC_PREFETCH: case ZYDIS_MNEMONIC_PREFETCHNTA:
    case ZYDIS_MNEMONIC_PREFETCHT0: case ZYDIS_MNEMONIC_PREFETCHT1:
    case ZYDIS_MNEMONIC_PREFETCHT2: case ZYDIS_MNEMONIC_PREFETCHW: case ZYDIS_MNEMONIC_LFENCE:
    case ZYDIS_MNEMONIC_SFENCE:
      return set(Op::kNop, false);
    case ZYDIS_MNEMONIC_MFENCE:
      return set(Op::kMfence, false);
    case ZYDIS_MNEMONIC_BSF: case ZYDIS_MNEMONIC_BSR:
      if (r0 && sz >= 2 && (k1 == kOpReg || k1 == kOpMem)) return set(Op::kBsf, memop);
      return p;
    case ZYDIS_MNEMONIC_JMP:
      if (sz != 8) return p;
      if (k0 == kOpImm) return set(Op::kJmp, false);
      if (r0 || m0) return set(Op::kJmpInd, memop);
      return p;
    case ZYDIS_MNEMONIC_CALL:
      if (sz != 8) return p;
      if (k0 == kOpImm) return set(Op::kCall, true);
      if (r0 || m0) return set(Op::kCallInd, true);
      return p;
    case ZYDIS_MNEMONIC_RET:
      if (sz == 8) return set(Op::kRet, true);
      return p;
    case ZYDIS_MNEMONIC_JO: case ZYDIS_MNEMONIC_JNO: case ZYDIS_MNEMONIC_JB:
    case ZYDIS_MNEMONIC_JNB: case ZYDIS_MNEMONIC_JZ: case ZYDIS_MNEMONIC_JNZ:
    case ZYDIS_MNEMONIC_JBE: case ZYDIS_MNEMONIC_JNBE: case ZYDIS_MNEMONIC_JS:
    case ZYDIS_MNEMONIC_JNS: case ZYDIS_MNEMONIC_JP: case ZYDIS_MNEMONIC_JNP:
    case ZYDIS_MNEMONIC_JL: case ZYDIS_MNEMONIC_JNL: case ZYDIS_MNEMONIC_JLE:
    case ZYDIS_MNEMONIC_JNLE:
      if (sz == 8) return set(Op::kJcc, false);
      return p;
    default:
      return p;
  }
}

class BlockEmitter : public CodeGenerator {
 public:
  BlockEmitter(const Block& b, bool user, bool count, const Stubs& stubs, uint8_t* buf,
               size_t avail)
      : CodeGenerator(avail, buf), b_(b), user_(user), count_(count), stubs_(stubs) {}

  Translation run();

 private:
  // Which guest registers live in which host registers at this point of the block.
  struct Cache {
    int8_t host_of[16];   // guest -> host register, or -1
    int8_t guest_of[16];  // host -> guest register, or -1
    uint16_t dirty = 0;   // guest registers whose host copy is newer than CpuHot::r
    Cache() {
      for (auto& h : host_of) h = -1;
      for (auto& g : guest_of) g = -1;
    }
  };
  // Where the guest's arithmetic flags are.
  enum class Fl : uint8_t {
    kMem,    // CpuHot lazy flags (block entry, after a helper)
    kHost,   // host RFLAGS (right after a translated flag producer)
    kSpill,  // CpuHot::jit_flags_spill, packed (host flags were needed for something else)
    kDead,   // nobody can observe them before the next producer overwrites them all
  };

  // ---- registers
  int alloc(int g, bool load);
  int use(int g) {
    pinned_ |= uint16_t(1u << g);
    return alloc(g, true);
  }
  // A destination: loaded unless the instruction overwrites all 64 bits (32/64-bit writes).
  int target(int g, int size) {
    pinned_ |= uint16_t(1u << g);
    return alloc(g, size < 4);
  }
  void dirty(int g) { cache_.dirty |= uint16_t(1u << g); }
  void writeback(const Cache& c) {
    for (int g = 0; g < 16; ++g)
      if (c.dirty & (1u << g)) mov(qword[rbp + reg_offset(g)], Reg64(c.host_of[g]));
  }
  void reload(const Cache& c) {
    for (int g = 0; g < 16; ++g)
      if (c.host_of[g] >= 0) mov(Reg64(c.host_of[g]), qword[rbp + reg_offset(g)]);
  }
  static Reg sized(int h, int size) {
    switch (size) {
      case 8: return Reg64(h);
      case 4: return Reg32(h);
      case 2: return Reg16(h);
      default: return Reg8(h, h >= 4 && h < 8);
    }
  }
  Address mem(int size) {
    switch (size) {
      case 8: return qword[rcx];
      case 4: return dword[rcx];
      case 2: return word[rcx];
      default: return byte[rcx];
    }
  }
  uint32_t imm32(const Insn& in) const { return uint32_t(sext(in.imm, in.osz < 8 ? in.osz : 4)); }

  // ---- flags
  void spill_flags();
  void materialize(Fl f);  // into the lazy-flag fields, host RFLAGS untouched
  void ensure_host_flags();
  void produced(int i);    // after a native flag producer
  bool needs_host_flags(int i) const {
    const Plan& p = plans_[i];
    return p.rd || (p.wr && (live_after_[i] & ~p.wr & kFlAll));
  }

  // ---- code pieces
  Label& label() { return labels_.emplace_back(); }
  void cold(std::function<void()> f) { cold_.push_back(std::move(f)); }
  void set_rip(int64_t off);
  void call_handler(int i);
  void call_preserving(const void* fn, const Cache& c);
  Label& status_exit(int i);
  RegExp ea_expr(const Insn& in, int i, int64_t* disp, bool* any);
  void ea_rcx(const Insn& in, int i);
  void tlb(int size, bool write, Label& slow);
  // One memory access: `addr` leaves the linear address in rcx, the TLB hit path turns it into
  // the host address, then `op` does the whole instruction on [rcx]. A miss (or MMIO, a page
  // crossing, a page that holds code) runs the instruction in the interpreter instead.
  void memop(int i, bool write, int size, const std::function<void()>& addr,
             const std::function<void()>& op, bool reads_flags, bool writes_flags,
             bool terminator = false);
  void memop_ea(int i, bool write, int size, const std::function<void()>& op, bool reads_flags,
                bool writes_flags, bool terminator = false) {
    memop(i, write, size, [this, i] { ea_rcx(b_.insns[i], i); }, op, reads_flags, writes_flags,
          terminator);
  }
  void leave_prep();
  void goto_offset(int64_t off);
  void exit_lookup() { jmp(stubs_.lookup[user_], T_NEAR); }
  // Guest instructions retired, when the CPU counts them (KEEL_EMU_STATS).
  void count(unsigned n) {
    if (count_) add(qword[rbp + kOffIcount], n);
  }

  // ---- SSE
  Address xmm_slot(int x, int offset = 0) { return xword[rbp + (kOffXmm + 16 * x + offset)]; }
  // Once per block, before its first SSE instruction: CR0.EM/TS and CR4.OSFXSR allow SSE (else
  // the handler raises #UD or #NM). Instructions that change them end the block.
  void sse_guard(int i);
  void sse_bin(ZydisMnemonic m, const Xbyak::Xmm& a, const Xbyak::Operand& b, uint8_t imm);
  void emit_sse(int i);
  bool sse_checked_ = false;
  Label* slow_ = nullptr;  // the current memop's slow path (an op may branch to it)

  // ---- instructions
  void emit(int i);
  void emit_helper(int i);
  void alu(ZydisMnemonic m, const Xbyak::Operand& a, const Xbyak::Operand& b);
  void alu(ZydisMnemonic m, const Xbyak::Operand& a, uint32_t imm);
  void unary(ZydisMnemonic m, const Xbyak::Operand& a);
  void shift(ZydisMnemonic m, const Xbyak::Operand& a, int imm);
  void shift_cl(ZydisMnemonic m, const Xbyak::Operand& a);
  void cmov(int cc, const Reg& r, const Xbyak::Operand& op);
  void setcc(int cc, const Xbyak::Operand& op);
  void jcc(int cc, Label& l);
  void bitop(ZydisMnemonic m, const Xbyak::Operand& a, const Xbyak::Operand* reg, uint8_t imm);

  const Block& b_;
  const bool user_;
  const bool count_;
  const Stubs& stubs_;
  unsigned n_ = 0;
  std::vector<int64_t> off_;  // byte offset of instruction i from the block start; off_[n]: end
  std::vector<Plan> plans_;
  std::vector<uint8_t> live_after_;
  Cache cache_;
  uint32_t stamp_[16] = {};
  uint32_t clock_ = 0;
  uint16_t pinned_ = 0;
  Fl fl_ = Fl::kMem;
  std::deque<Label> labels_;
  std::vector<std::function<void()>> cold_;
  std::vector<Label*> status_exits_;
};

int BlockEmitter::alloc(int g, bool load) {
  stamp_[g] = ++clock_;
  if (cache_.host_of[g] >= 0) return cache_.host_of[g];
  int h = -1;
  for (int p : kCachePool)
    if (cache_.guest_of[p] < 0) {
      h = p;
      break;
    }
  if (h < 0) {
    // Evict the least recently used guest register this instruction does not use.
    uint32_t best = ~0u;
    for (int p : kCachePool) {
      int vg = cache_.guest_of[p];
      if (pinned_ & (1u << vg)) continue;
      if (stamp_[vg] < best) {
        best = stamp_[vg];
        h = p;
      }
    }
    int vg = cache_.guest_of[h];
    if (cache_.dirty & (1u << vg)) mov(qword[rbp + reg_offset(vg)], Reg64(h));
    cache_.dirty &= uint16_t(~(1u << vg));
    cache_.host_of[vg] = -1;
  }
  cache_.host_of[g] = int8_t(h);
  cache_.guest_of[h] = int8_t(g);
  if (load) mov(Reg64(h), qword[rbp + reg_offset(g)]);
  return h;
}

// ---------------------------------------------------------------- flags

void BlockEmitter::spill_flags() {
  if (fl_ != Fl::kHost) return;
  lahf();
  seto(al);
  mov(word[rbp + kOffSpill], ax);
  fl_ = Fl::kSpill;
}

void BlockEmitter::materialize(Fl f) {
  if (f == Fl::kHost) {
    lahf();
    seto(al);
  } else if (f == Fl::kSpill) {
    mov(ax, word[rbp + kOffSpill]);
  } else {
    return;
  }
  mov(word[rbp + kOffLfRes], ax);
  mov(byte[rbp + kOffLfOp], uint8_t(FlagOp::kHost));
}

void BlockEmitter::ensure_host_flags() {
  switch (fl_) {
    case Fl::kHost:
    case Fl::kDead:
      break;
    case Fl::kSpill:
      mov(ax, word[rbp + kOffSpill]);
      add(al, 0x7f);  // OF from bit 0
      sahf();
      break;
    case Fl::kMem: {
      Label& pack = label();
      Label& back = label();
      cmp(byte[rbp + kOffLfOp], uint8_t(FlagOp::kHost));
      jne(pack, T_NEAR);
      movzx(eax, word[rbp + kOffLfRes]);
      L(back);
      add(al, 0x7f);
      sahf();
      Cache c = cache_;
      cold([this, c, &pack, &back] {
        L(pack);
        call_preserving(stubs_.pack_flags, c);
        jmp(back, T_NEAR);
      });
      break;
    }
  }
  fl_ = Fl::kHost;
}

void BlockEmitter::produced(int i) { fl_ = live_after_[i] ? Fl::kHost : Fl::kDead; }

// ---------------------------------------------------------------- pieces

void BlockEmitter::set_rip(int64_t off) {
  if (fits_i32(off)) {
    lea(rax, ptr[r15 + int32_t(off)]);
  } else {
    mov(rax, uint64_t(off));
    add(rax, r15);
  }
  mov(qword[rbp + kOffRip], rax);
}

void BlockEmitter::call_handler(int i) {
  mov(rdi, rbp);
  mov(rsi, reinterpret_cast<uint64_t>(&b_.insns[i]));
  mov(rax, reinterpret_cast<uint64_t>(stubs_.call));
  call(rax);
  test(eax, eax);
  jnz(status_exit(i), T_NEAR);
}

// Calls fn(CpuHot*) from the middle of an instruction: cached caller-saved registers and rcx (a
// host address computed for the instruction) survive it.
void BlockEmitter::call_preserving(const void* fn, const Cache& c) {
  std::vector<int> saved = {kRcx};
  for (int h : kCachePool)
    if (!callee_saved(h) && c.guest_of[h] >= 0) saved.push_back(h);
  for (int h : saved) push(Reg64(h));
  if (saved.size() % 2) sub(rsp, 8);
  mov(rdi, rbp);
  mov(rax, reinterpret_cast<uint64_t>(fn));
  call(rax);
  if (saved.size() % 2) add(rsp, 8);
  for (auto it = saved.rbegin(); it != saved.rend(); ++it) pop(Reg64(*it));
}

// eax holds a JitExit status from jit_call; a fault retired `i` instructions, anything else i+1.
Label& BlockEmitter::status_exit(int i) {
  if (!status_exits_[i]) {
    Label& l = label();
    status_exits_[i] = &l;
    cold([this, i, &l] {
      L(l);
      Label fault;
      mov(edx, uint32_t(i));
      cmp(eax, uint32_t(kJitFault));
      je(fault);
      inc(edx);
      L(fault);
      jmp(stubs_.status_exit, T_NEAR);
    });
  }
  return *status_exits_[i];
}

RegExp BlockEmitter::ea_expr(const Insn& in, int i, int64_t* disp, bool* any) {
  RegExp e;
  *disp = in.disp;
  *any = false;
  if (in.base == kRegRip) {
    e = RegExp(r15);
    *disp += off_[i + 1];
    *any = true;
  } else if (in.base != kRegZero) {
    e = RegExp(Reg64(cache_.host_of[in.base]));
    *any = true;
  }
  if (in.index != kRegZero) {
    RegExp ix(Reg64(cache_.host_of[in.index]), 1 << in.scale);
    e = *any ? e + ix : ix;
    *any = true;
  }
  return e;
}

void BlockEmitter::ea_rcx(const Insn& in, int i) {
  int64_t disp;
  bool any;
  RegExp e = ea_expr(in, i, &disp, &any);
  if (any) lea(rcx, ptr[e + disp]);
  else mov(rcx, uint64_t(disp));
  if (in.seg == kFS || in.seg == kGS) add(rcx, qword[rbp + kOffSegBase + 8 * in.seg]);
}

void BlockEmitter::tlb(int size, bool write, Label& slow) {
  const int32_t base = tlb_offset(user_);
  const int32_t tag = write ? kTlbWtag : kTlbRtag;
  mov(rdx, rcx);
  shr(rdx, 5);
  and_(edx, (kTlbSize - 1) << 7);  // set * 2 * sizeof(TlbEntry)
  // The tag of the access's last byte: a page-crossing access cannot match.
  if (size == 1) mov(rax, rcx);
  else lea(rax, ptr[rcx + (size - 1)]);
  and_(rax, uint32_t(-4096));
  cmp(rax, qword[rbp + rdx + (base + tag)]);
  Label& way1 = label();
  Label& hit = label();
  jne(way1, T_NEAR);
  L(hit);
  add(rcx, qword[rbp + rdx + (base + kTlbAddend)]);
  cold([this, base, tag, &way1, &hit, &slow] {
    L(way1);  // the set's older way
    cmp(rax, qword[rbp + rdx + (base + int32_t(sizeof(TlbEntry)) + tag)]);
    jne(slow, T_NEAR);
    add(edx, int32_t(sizeof(TlbEntry)));
    jmp(hit, T_NEAR);
  });
}

void BlockEmitter::memop(int i, bool write, int size, const std::function<void()>& addr,
                         const std::function<void()>& op, bool reads_flags, bool writes_flags,
                         bool terminator) {
  spill_flags();  // the lookup's compare clobbers host flags
  const Cache pre = cache_;
  const Fl pre_fl = fl_;
  Label& slow = label();
  Label& rejoin = label();
  slow_ = &slow;
  addr();
  tlb(size, write, slow);
  if (reads_flags) ensure_host_flags();
  op();
  L(rejoin);
  const Fl post = (reads_flags || writes_flags) ? Fl::kHost : pre_fl;
  fl_ = post;
  cold([this, i, pre, pre_fl, post, terminator, &slow, &rejoin] {
    L(slow);
    materialize(pre_fl);
    writeback(pre);
    set_rip(off_[i + 1]);
    call_handler(i);
    if (terminator) {
      count(n_);
      exit_lookup();
      return;
    }
    if (post == Fl::kHost) {
      mov(rdi, rbp);
      mov(rax, reinterpret_cast<uint64_t>(stubs_.pack_flags));
      call(rax);
      add(al, 0x7f);
      sahf();
    }
    reload(pre);
    jmp(rejoin, T_NEAR);
  });
}

// Everything back in CpuHot before leaving the block.
void BlockEmitter::leave_prep() {
  materialize(fl_);
  fl_ = Fl::kMem;
  writeback(cache_);
  cache_.dirty = 0;
}

// RIP = block start + off, then on to the next block: a linkable jump when it is on this page
// (translations are keyed by guest-physical page, so a same-page target is the same code under
// any mapping that reached this block), the jump-cache lookup otherwise.
void BlockEmitter::goto_offset(int64_t off) {
  int64_t in_page = int64_t(b_.start_gpa & 0xFFF) + off;
  if (in_page < 0 || in_page >= 4096) {
    set_rip(off);
    exit_lookup();
    return;
  }
  // A block is entered with its own address in r15.
  lea(r15, ptr[r15 + int32_t(off)]);
  const uint8_t* slot = getCurr();
  Label& stub = label();
  jmp(stub, T_NEAR);  // E9 rel32: Jit::link rewrites it
  cold([this, slot, &stub] {
    L(stub);
    mov(qword[rbp + kOffRip], r15);
    mov(rax, reinterpret_cast<uint64_t>(slot));
    mov(qword[rbp + kOffSlot], rax);
    mov(byte[rbp + kOffExit], uint8_t(kJitChain));
    jmp(stubs_.epilogue, T_NEAR);
  });
}

// ---------------------------------------------------------------- operation tables

void BlockEmitter::alu(ZydisMnemonic m, const Xbyak::Operand& a, const Xbyak::Operand& b) {
  switch (m) {
    case ZYDIS_MNEMONIC_ADD: add(a, b); break;
    case ZYDIS_MNEMONIC_OR: or_(a, b); break;
    case ZYDIS_MNEMONIC_ADC: adc(a, b); break;
    case ZYDIS_MNEMONIC_SBB: sbb(a, b); break;
    case ZYDIS_MNEMONIC_AND: and_(a, b); break;
    case ZYDIS_MNEMONIC_SUB: sub(a, b); break;
    case ZYDIS_MNEMONIC_XOR: xor_(a, b); break;
    case ZYDIS_MNEMONIC_CMP: cmp(a, b); break;
    case ZYDIS_MNEMONIC_TEST: test(a, static_cast<const Reg&>(b)); break;
    default: throw Xbyak::Error(Xbyak::ERR_BAD_COMBINATION);
  }
}

void BlockEmitter::alu(ZydisMnemonic m, const Xbyak::Operand& a, uint32_t imm) {
  switch (m) {
    case ZYDIS_MNEMONIC_ADD: add(a, imm); break;
    case ZYDIS_MNEMONIC_OR: or_(a, imm); break;
    case ZYDIS_MNEMONIC_ADC: adc(a, imm); break;
    case ZYDIS_MNEMONIC_SBB: sbb(a, imm); break;
    case ZYDIS_MNEMONIC_AND: and_(a, imm); break;
    case ZYDIS_MNEMONIC_SUB: sub(a, imm); break;
    case ZYDIS_MNEMONIC_XOR: xor_(a, imm); break;
    case ZYDIS_MNEMONIC_CMP: cmp(a, imm); break;
    case ZYDIS_MNEMONIC_TEST: test(a, imm); break;
    default: throw Xbyak::Error(Xbyak::ERR_BAD_COMBINATION);
  }
}

void BlockEmitter::unary(ZydisMnemonic m, const Xbyak::Operand& a) {
  switch (m) {
    case ZYDIS_MNEMONIC_INC: inc(a); break;
    case ZYDIS_MNEMONIC_DEC: dec(a); break;
    case ZYDIS_MNEMONIC_NEG: neg(a); break;
    default: not_(a); break;
  }
}

void BlockEmitter::shift(ZydisMnemonic m, const Xbyak::Operand& a, int imm) {
  switch (m) {
    case ZYDIS_MNEMONIC_SHL: shl(a, imm); break;
    case ZYDIS_MNEMONIC_SHR: shr(a, imm); break;
    case ZYDIS_MNEMONIC_SAR: sar(a, imm); break;
    case ZYDIS_MNEMONIC_ROL: rol(a, imm); break;
    default: ror(a, imm); break;
  }
}

void BlockEmitter::shift_cl(ZydisMnemonic m, const Xbyak::Operand& a) {
  switch (m) {
    case ZYDIS_MNEMONIC_SHL: shl(a, cl); break;
    case ZYDIS_MNEMONIC_SHR: shr(a, cl); break;
    case ZYDIS_MNEMONIC_SAR: sar(a, cl); break;
    case ZYDIS_MNEMONIC_ROL: rol(a, cl); break;
    default: ror(a, cl); break;
  }
}

void BlockEmitter::cmov(int cc, const Reg& r, const Xbyak::Operand& op) {
  switch (cc) {
    case 0: cmovo(r, op); break;
    case 1: cmovno(r, op); break;
    case 2: cmovb(r, op); break;
    case 3: cmovnb(r, op); break;
    case 4: cmovz(r, op); break;
    case 5: cmovnz(r, op); break;
    case 6: cmovbe(r, op); break;
    case 7: cmovnbe(r, op); break;
    case 8: cmovs(r, op); break;
    case 9: cmovns(r, op); break;
    case 10: cmovp(r, op); break;
    case 11: cmovnp(r, op); break;
    case 12: cmovl(r, op); break;
    case 13: cmovnl(r, op); break;
    case 14: cmovle(r, op); break;
    default: cmovnle(r, op); break;
  }
}

void BlockEmitter::setcc(int cc, const Xbyak::Operand& op) {
  switch (cc) {
    case 0: seto(op); break;
    case 1: setno(op); break;
    case 2: setb(op); break;
    case 3: setnb(op); break;
    case 4: setz(op); break;
    case 5: setnz(op); break;
    case 6: setbe(op); break;
    case 7: setnbe(op); break;
    case 8: sets(op); break;
    case 9: setns(op); break;
    case 10: setp(op); break;
    case 11: setnp(op); break;
    case 12: setl(op); break;
    case 13: setnl(op); break;
    case 14: setle(op); break;
    default: setnle(op); break;
  }
}

void BlockEmitter::jcc(int cc, Label& l) {
  switch (cc) {
    case 0: jo(l, T_NEAR); break;
    case 1: jno(l, T_NEAR); break;
    case 2: jb(l, T_NEAR); break;
    case 3: jnb(l, T_NEAR); break;
    case 4: jz(l, T_NEAR); break;
    case 5: jnz(l, T_NEAR); break;
    case 6: jbe(l, T_NEAR); break;
    case 7: jnbe(l, T_NEAR); break;
    case 8: js(l, T_NEAR); break;
    case 9: jns(l, T_NEAR); break;
    case 10: jp(l, T_NEAR); break;
    case 11: jnp(l, T_NEAR); break;
    case 12: jl(l, T_NEAR); break;
    case 13: jnl(l, T_NEAR); break;
    case 14: jle(l, T_NEAR); break;
    default: jnle(l, T_NEAR); break;
  }
}

void BlockEmitter::bitop(ZydisMnemonic m, const Xbyak::Operand& a, const Xbyak::Operand* reg,
                         uint8_t imm) {
  switch (m) {
    case ZYDIS_MNEMONIC_BT: reg ? bt(a, static_cast<const Reg&>(*reg)) : bt(a, imm); break;
    case ZYDIS_MNEMONIC_BTS: reg ? bts(a, static_cast<const Reg&>(*reg)) : bts(a, imm); break;
    case ZYDIS_MNEMONIC_BTR: reg ? btr(a, static_cast<const Reg&>(*reg)) : btr(a, imm); break;
    default: reg ? btc(a, static_cast<const Reg&>(*reg)) : btc(a, imm); break;
  }
}

// ---------------------------------------------------------------- instructions

void BlockEmitter::emit_helper(int i) {
  materialize(fl_);
  fl_ = Fl::kMem;
  writeback(cache_);
  set_rip(off_[i + 1]);
  call_handler(i);
  cache_ = Cache{};  // the handler may have changed any guest register
  if (unsigned(i) + 1 == n_) {
    count(n_);
    exit_lookup();  // RIP is wherever the handler left it
  }
}

void BlockEmitter::emit(int i) {
  const Insn& in = b_.insns[i];
  const Plan& p = plans_[i];
  const auto m = static_cast<ZydisMnemonic>(in.mnem);
  const int sz = in.osz;
  const uint8_t k0 = in.kind[0], k1 = in.kind[1];
  const bool lock = in.prefix & kPfxLock;
  pinned_ = 0;
  // Operands a memory access needs are allocated before it (the slow path restores exactly
  // the registers allocated at that point).
  if (p.mem) {
    if (in.base < 16) use(in.base);
    if (in.index < 16) use(in.index);
  }
  switch (p.op) {
    case Op::kHelper:
      emit_helper(i);
      return;
    case Op::kSseMov: case Op::kSseBin: case Op::kSseMovq: case Op::kSsePmovmskb:
    case Op::kSseMovhl: case Op::kSseMovScalar:
      emit_sse(i);
      return;

    case Op::kMov:
      if (k0 == kOpReg && k1 == kOpReg) {
        int s = use(in.reg[1]);
        int d = target(in.reg[0], sz);
        mov(sized(d, sz), sized(s, sz));
        dirty(in.reg[0]);
      } else if (k0 == kOpReg && k1 == kOpImm) {
        int d = target(in.reg[0], sz);
        uint64_t v = sz == 8 ? in.imm : sz == 4 ? uint32_t(in.imm) : sz == 2 ? uint16_t(in.imm) : uint8_t(in.imm);
        mov(sized(d, sz), v);
        dirty(in.reg[0]);
      } else if (k0 == kOpReg) {
        int d = target(in.reg[0], sz);
        memop_ea(i, false, sz, [&] { mov(sized(d, sz), mem(sz)); }, false, false);
        dirty(in.reg[0]);
      } else if (k1 == kOpReg) {
        int s = use(in.reg[1]);
        memop_ea(i, true, sz, [&] { mov(mem(sz), sized(s, sz)); }, false, false);
      } else {
        uint64_t v = uint64_t(sext(in.imm, sz < 8 ? sz : 4));
        if (sz < 8) v &= (1ull << (8 * sz)) - 1;
        memop_ea(i, true, sz, [&] { mov(mem(sz), v); }, false, false);
      }
      return;

    case Op::kMovx: {
      const int ss = in.opsz2;
      auto ext = [&](int d, const Xbyak::Operand& src) {
        if (m == ZYDIS_MNEMONIC_MOVZX) movzx(sized(d, sz), src);
        else if (m == ZYDIS_MNEMONIC_MOVSX) movsx(sized(d, sz), src);
        else movsxd(Reg64(d), src);
      };
      if (k1 == kOpReg) {
        int s = use(in.reg[1]);
        int d = target(in.reg[0], sz);
        ext(d, sized(s, ss));
      } else {
        int d = target(in.reg[0], sz);
        memop_ea(i, false, ss, [&] { ext(d, mem(ss)); }, false, false);
      }
      dirty(in.reg[0]);
      return;
    }

    case Op::kLea: {
      if (in.base < 16) use(in.base);
      if (in.index < 16) use(in.index);
      int d = target(in.reg[0], sz);
      int64_t disp;
      bool any;
      RegExp e = ea_expr(in, i, &disp, &any);
      if (!any) {
        uint64_t v = uint64_t(disp);
        mov(sized(d, sz), sz == 8 ? v : sz == 4 ? uint32_t(v) : uint16_t(v));
      } else {
        lea(sized(d, sz), ptr[e + disp]);
      }
      dirty(in.reg[0]);
      return;
    }

    case Op::kAlu:
    case Op::kTest: {
      const bool writes = m != ZYDIS_MNEMONIC_CMP && m != ZYDIS_MNEMONIC_TEST;
      const bool need = needs_host_flags(i);
      if (k0 == kOpReg) {
        int d = use(in.reg[0]);
        if (k1 == kOpMem) {
          memop_ea(i, false, sz, [&] { alu(m, sized(d, sz), mem(sz)); }, need, true);
        } else {
          int s = k1 == kOpReg ? use(in.reg[1]) : -1;
          if (need) ensure_host_flags();
          if (s >= 0) alu(m, sized(d, sz), sized(s, sz));
          else alu(m, sized(d, sz), imm32(in));
        }
        if (writes) dirty(in.reg[0]);
      } else {
        int s = k1 == kOpReg ? use(in.reg[1]) : -1;
        memop_ea(i, writes, sz, [&] {
          if (lock) this->lock();
          if (s >= 0) alu(m, mem(sz), sized(s, sz));
          else alu(m, mem(sz), imm32(in));
        }, need, true);
      }
      produced(i);
      return;
    }

    case Op::kUnary: {
      const bool need = needs_host_flags(i);
      const bool flags = m != ZYDIS_MNEMONIC_NOT;
      if (k0 == kOpReg) {
        int d = use(in.reg[0]);
        if (need) ensure_host_flags();
        unary(m, sized(d, sz));
        dirty(in.reg[0]);
      } else {
        memop_ea(i, true, sz, [&] {
          if (lock) this->lock();
          unary(m, mem(sz));
        }, need, flags);
      }
      if (flags) produced(i);
      return;
    }

    case Op::kShift: {
      const bool need = needs_host_flags(i);
      if (k1 == kOpImm) {
        int cnt = int(in.imm & (sz == 8 ? 63 : 31));
        if (k0 == kOpReg) {
          int d = use(in.reg[0]);
          if (need) ensure_host_flags();
          shift(m, sized(d, sz), cnt);
          dirty(in.reg[0]);
        } else {
          memop_ea(i, true, sz, [&] { shift(m, mem(sz), cnt); }, need, true);
        }
      } else {
        int c = use(x86::RCX);
        int d = use(in.reg[0]);
        if (need) ensure_host_flags();  // before rcx is loaded: its slow path calls out
        mov(ecx, Reg32(c));
        shift_cl(m, sized(d, sz));
        dirty(in.reg[0]);
      }
      produced(i);
      return;
    }

    case Op::kImul2: {
      int d = use(in.reg[0]);
      if (k1 == kOpReg) {
        int s = use(in.reg[1]);
        imul(sized(d, sz), sized(s, sz));
      } else {
        memop_ea(i, false, sz, [&] { imul(sized(d, sz), mem(sz)); }, false, true);
      }
      dirty(in.reg[0]);
      produced(i);
      return;
    }

    case Op::kImul3: {
      const int imm = int(sext(in.imm, sz < 8 ? sz : 4));
      if (k1 == kOpReg) {
        int s = use(in.reg[1]);
        int d = target(in.reg[0], sz);
        imul(sized(d, sz), sized(s, sz), imm);
      } else {
        int d = target(in.reg[0], sz);
        memop_ea(i, false, sz, [&] { imul(sized(d, sz), mem(sz), imm); }, false, true);
      }
      dirty(in.reg[0]);
      produced(i);
      return;
    }

    case Op::kMul1: {
      // RDX:RAX = RAX * src, through the host's rax/rdx.
      const bool sign = m == ZYDIS_MNEMONIC_IMUL;
      int s = k0 == kOpReg ? use(in.reg[0]) : -1;
      int a = use(x86::RAX);
      int d = target(x86::RDX, sz);
      auto body = [&](const Xbyak::Operand& src) {
        mov(rax, Reg64(a));
        if (sign) imul(src);
        else mul(src);
        mov(Reg64(a), rax);
        mov(Reg64(d), rdx);
      };
      if (s >= 0) body(sized(s, sz));
      else memop_ea(i, false, sz, [&] { body(mem(sz)); }, false, true);
      dirty(x86::RAX);
      dirty(x86::RDX);
      produced(i);
      return;
    }

    case Op::kCmov: {
      int d = use(in.reg[0]);
      if (k1 == kOpReg) {
        int s = use(in.reg[1]);
        ensure_host_flags();
        cmov(in.cc, sized(d, sz), sized(s, sz));
      } else {
        memop_ea(i, false, sz, [&] { cmov(in.cc, sized(d, sz), mem(sz)); }, true, false);
      }
      dirty(in.reg[0]);
      return;
    }

    case Op::kSetcc:
      if (k0 == kOpReg) {
        int d = use(in.reg[0]);
        ensure_host_flags();
        setcc(in.cc, sized(d, 1));
        dirty(in.reg[0]);
      } else {
        memop_ea(i, true, 1, [&] { setcc(in.cc, mem(1)); }, true, false);
      }
      return;

    case Op::kPush: {
      int s = k0 == kOpReg ? use(in.reg[0]) : -1;
      int sp = use(x86::RSP);
      const uint64_t v = uint64_t(int64_t(int32_t(in.imm)));
      memop(i, true, 8, [&] { lea(rcx, ptr[Reg64(sp) - 8]); }, [&] {
        if (s >= 0) mov(qword[rcx], Reg64(s));
        else mov(qword[rcx], v);
        lea(Reg64(sp), ptr[Reg64(sp) - 8]);
      }, false, false);
      dirty(x86::RSP);
      return;
    }

    case Op::kPop: {
      int sp = use(x86::RSP);
      int d = target(in.reg[0], 8);
      memop(i, false, 8, [&] { mov(rcx, Reg64(sp)); }, [&] {
        mov(Reg64(d), qword[rcx]);
        lea(Reg64(sp), ptr[Reg64(sp) + 8]);
      }, false, false);
      dirty(in.reg[0]);
      dirty(x86::RSP);
      return;
    }

    case Op::kXchg:
      if (k0 == kOpReg && k1 == kOpReg) {
        int a = use(in.reg[0]);
        int b = use(in.reg[1]);
        if (a == b) {
          if (sz == 4) mov(Reg32(a), Reg32(a));  // xchg eax, eax zero-extends
        } else {
          xchg(sized(a, sz), sized(b, sz));
        }
        dirty(in.reg[0]);
        dirty(in.reg[1]);
      } else {
        int r = k0 == kOpReg ? in.reg[0] : in.reg[1];
        int s = use(r);
        memop_ea(i, true, sz, [&] { xchg(mem(sz), sized(s, sz)); }, false, false);
        dirty(r);
      }
      return;

    case Op::kCmpxchg: {
      int s = use(in.reg[1]);
      int a = use(x86::RAX);
      if (k0 == kOpReg) {
        int d = use(in.reg[0]);
        mov(rax, Reg64(a));
        cmpxchg(sized(d, sz), sized(s, sz));
        mov(Reg64(a), rax);
        dirty(in.reg[0]);
      } else {
        memop_ea(i, true, sz, [&] {
          mov(rax, Reg64(a));
          if (lock) this->lock();
          cmpxchg(mem(sz), sized(s, sz));
          mov(Reg64(a), rax);
        }, false, true);
      }
      dirty(x86::RAX);
      produced(i);
      return;
    }

    case Op::kXadd: {
      int s = use(in.reg[1]);
      if (k0 == kOpReg) {
        int d = use(in.reg[0]);
        xadd(sized(d, sz), sized(s, sz));
        dirty(in.reg[0]);
      } else {
        memop_ea(i, true, sz, [&] {
          if (lock) this->lock();
          xadd(mem(sz), sized(s, sz));
        }, false, true);
      }
      dirty(in.reg[1]);
      produced(i);
      return;
    }

    case Op::kBt: {
      const bool writes = m != ZYDIS_MNEMONIC_BT;
      const uint8_t imm = uint8_t(in.imm);
      if (k0 == kOpReg) {
        int d = use(in.reg[0]);
        if (k1 == kOpReg) {
          int s = use(in.reg[1]);
          Reg rs = sized(s, sz);
          bitop(m, sized(d, sz), &rs, 0);
        } else {
          bitop(m, sized(d, sz), nullptr, imm);
        }
        if (writes) dirty(in.reg[0]);
      } else {
        memop_ea(i, writes, sz, [&] {
          if (lock) this->lock();
          bitop(m, mem(sz), nullptr, imm);
        }, false, true);
      }
      produced(i);
      return;
    }

    case Op::kBswap: {
      int d = use(in.reg[0]);
      if (sz == 8) bswap(Reg64(d));
      else bswap(Reg32(d));
      dirty(in.reg[0]);
      return;
    }

    case Op::kCbw: {
      int a = use(x86::RAX);
      if (sz == 8) movsxd(Reg64(a), Reg32(a));
      else if (sz == 4) movsx(Reg32(a), Reg16(a));
      else movsx(Reg16(a), sized(a, 1));
      dirty(x86::RAX);
      return;
    }

    case Op::kCwd: {
      int a = use(x86::RAX);
      int d = target(x86::RDX, sz);
      if (sz == 8) {
        mov(rax, Reg64(a));
        cqo();
        mov(Reg64(d), rdx);
      } else if (sz == 4) {
        mov(eax, Reg32(a));
        cdq();
        mov(Reg32(d), edx);
      } else {
        mov(ax, Reg16(a));
        cwd();
        mov(Reg16(d), dx);
      }
      dirty(x86::RDX);
      return;
    }

    case Op::kNop:
      return;
    case Op::kMfence:
      mfence();
      return;

    case Op::kBsf: {
      int d = use(in.reg[0]);  // an all-zero source leaves the destination as it was
      auto body = [&](const Xbyak::Operand& src) {
        if (m == ZYDIS_MNEMONIC_BSF) bsf(sized(d, sz), src);
        else bsr(sized(d, sz), src);
      };
      if (k1 == kOpReg) body(sized(use(in.reg[1]), sz));
      else memop_ea(i, false, sz, [&] { body(mem(sz)); }, false, true);
      dirty(in.reg[0]);
      produced(i);
      return;
    }

    case Op::kJmp:
      leave_prep();
      count(n_);
      goto_offset(off_[i + 1] + int64_t(in.imm));
      return;

    case Op::kJcc: {
      ensure_host_flags();
      // Store the flags and registers without touching host RFLAGS, then branch on them.
      materialize(Fl::kHost);
      fl_ = Fl::kMem;
      writeback(cache_);
      cache_.dirty = 0;
      Label& taken = label();
      jcc(in.cc, taken);
      count(n_);
      goto_offset(off_[i + 1]);
      L(taken);
      count(n_);
      goto_offset(off_[i + 1] + int64_t(in.imm));
      return;
    }

    case Op::kCall: {
      int sp = use(x86::RSP);
      memop(i, true, 8, [&] { lea(rcx, ptr[Reg64(sp) - 8]); }, [&] {
        lea(rax, ptr[r15 + int32_t(off_[i + 1])]);
        mov(qword[rcx], rax);
        lea(Reg64(sp), ptr[Reg64(sp) - 8]);
      }, false, false, true);
      dirty(x86::RSP);
      leave_prep();
      count(n_);
      goto_offset(off_[i + 1] + int64_t(in.imm));
      return;
    }

    case Op::kRet: {
      int sp = use(x86::RSP);
      const int32_t pop = 8 + int32_t(uint16_t(k0 == kOpImm ? in.imm : 0));
      memop(i, false, 8, [&] { mov(rcx, Reg64(sp)); }, [&] {
        mov(rax, qword[rcx]);
        mov(qword[rbp + kOffRip], rax);
        lea(Reg64(sp), ptr[Reg64(sp) + pop]);
      }, false, false, true);
      dirty(x86::RSP);
      leave_prep();
      count(n_);
      exit_lookup();
      return;
    }

    case Op::kJmpInd:
      if (k0 == kOpReg) {
        mov(qword[rbp + kOffRip], Reg64(use(in.reg[0])));
      } else {
        memop_ea(i, false, 8, [&] {
          mov(rax, qword[rcx]);
          mov(qword[rbp + kOffRip], rax);
        }, false, false, true);
      }
      leave_prep();
      count(n_);
      exit_lookup();
      return;

    case Op::kCallInd: {
      int t = k0 == kOpReg ? use(in.reg[0]) : -1;
      int sp = use(x86::RSP);
      if (t < 0) {
        memop_ea(i, false, 8, [&] {
          mov(rax, qword[rcx]);
          mov(qword[rbp + kOffTmp], rax);
        }, false, false, true);
      }
      memop(i, true, 8, [&] { lea(rcx, ptr[Reg64(sp) - 8]); }, [&] {
        if (t >= 0) {
          mov(qword[rbp + kOffRip], Reg64(t));
        } else {
          mov(rax, qword[rbp + kOffTmp]);
          mov(qword[rbp + kOffRip], rax);
        }
        lea(rax, ptr[r15 + int32_t(off_[i + 1])]);
        mov(qword[rcx], rax);
        lea(Reg64(sp), ptr[Reg64(sp) - 8]);
      }, false, false, true);
      dirty(x86::RSP);
      leave_prep();
      count(n_);
      exit_lookup();
      return;
    }
  }
}

// ---------------------------------------------------------------- SSE

void BlockEmitter::sse_guard(int i) {
  if (sse_checked_) return;
  sse_checked_ = true;
  spill_flags();
  const Cache pre = cache_;
  const Fl pre_fl = fl_;
  Label& fail = label();
  Label& rejoin = label();
  test(byte[rbp + kOffCr0], uint8_t(0x0C));      // EM | TS
  jnz(fail, T_NEAR);
  test(byte[rbp + kOffCr4 + 1], uint8_t(0x02));  // OSFXSR (bit 9)
  jz(fail, T_NEAR);
  L(rejoin);
  cold([this, i, pre, pre_fl, &fail, &rejoin] {
    // The handler raises the fault; were it to return, the instruction has run: continue.
    L(fail);
    materialize(pre_fl);
    writeback(pre);
    set_rip(off_[i + 1]);
    call_handler(i);
    count(unsigned(i) + 1);
    exit_lookup();
  });
  (void)rejoin;
}

void BlockEmitter::sse_bin(ZydisMnemonic m, const Xbyak::Xmm& a, const Xbyak::Operand& b,
                           uint8_t imm) {
  switch (m) {
    case ZYDIS_MNEMONIC_PXOR: pxor(a, b); break;
    case ZYDIS_MNEMONIC_POR: por(a, b); break;
    case ZYDIS_MNEMONIC_PAND: pand(a, b); break;
    case ZYDIS_MNEMONIC_PANDN: pandn(a, b); break;
    case ZYDIS_MNEMONIC_XORPS: xorps(a, b); break;
    case ZYDIS_MNEMONIC_XORPD: xorpd(a, b); break;
    case ZYDIS_MNEMONIC_ANDPS: andps(a, b); break;
    case ZYDIS_MNEMONIC_ANDPD: andpd(a, b); break;
    case ZYDIS_MNEMONIC_ANDNPS: andnps(a, b); break;
    case ZYDIS_MNEMONIC_ANDNPD: andnpd(a, b); break;
    case ZYDIS_MNEMONIC_ORPS: orps(a, b); break;
    case ZYDIS_MNEMONIC_ORPD: orpd(a, b); break;
    case ZYDIS_MNEMONIC_PCMPEQB: pcmpeqb(a, b); break;
    case ZYDIS_MNEMONIC_PCMPEQW: pcmpeqw(a, b); break;
    case ZYDIS_MNEMONIC_PCMPEQD: pcmpeqd(a, b); break;
    case ZYDIS_MNEMONIC_PCMPGTB: pcmpgtb(a, b); break;
    case ZYDIS_MNEMONIC_PCMPGTW: pcmpgtw(a, b); break;
    case ZYDIS_MNEMONIC_PCMPGTD: pcmpgtd(a, b); break;
    case ZYDIS_MNEMONIC_PADDB: paddb(a, b); break;
    case ZYDIS_MNEMONIC_PADDW: paddw(a, b); break;
    case ZYDIS_MNEMONIC_PADDD: paddd(a, b); break;
    case ZYDIS_MNEMONIC_PADDQ: paddq(a, b); break;
    case ZYDIS_MNEMONIC_PSUBB: psubb(a, b); break;
    case ZYDIS_MNEMONIC_PSUBW: psubw(a, b); break;
    case ZYDIS_MNEMONIC_PSUBD: psubd(a, b); break;
    case ZYDIS_MNEMONIC_PSUBQ: psubq(a, b); break;
    case ZYDIS_MNEMONIC_PMINUB: pminub(a, b); break;
    case ZYDIS_MNEMONIC_PMAXUB: pmaxub(a, b); break;
    case ZYDIS_MNEMONIC_PUNPCKLBW: punpcklbw(a, b); break;
    case ZYDIS_MNEMONIC_PUNPCKLWD: punpcklwd(a, b); break;
    case ZYDIS_MNEMONIC_PUNPCKLDQ: punpckldq(a, b); break;
    case ZYDIS_MNEMONIC_PUNPCKLQDQ: punpcklqdq(a, b); break;
    case ZYDIS_MNEMONIC_PUNPCKHBW: punpckhbw(a, b); break;
    case ZYDIS_MNEMONIC_PUNPCKHWD: punpckhwd(a, b); break;
    case ZYDIS_MNEMONIC_PUNPCKHDQ: punpckhdq(a, b); break;
    case ZYDIS_MNEMONIC_PUNPCKHQDQ: punpckhqdq(a, b); break;
    case ZYDIS_MNEMONIC_PSHUFD: pshufd(a, b, imm); break;
    default: throw Xbyak::Error(Xbyak::ERR_BAD_COMBINATION);
  }
}

void BlockEmitter::emit_sse(int i) {
  const Insn& in = b_.insns[i];
  const auto m = static_cast<ZydisMnemonic>(in.mnem);
  const uint8_t k0 = in.kind[0], k1 = in.kind[1];
  const int d = in.reg[0], s = in.reg[1];
  sse_guard(i);
  // Legacy SSE faults #GP on a 128-bit memory operand that is not 16-byte aligned (but for the
  // U forms); the host address has the guest address's alignment (pages map whole).
  auto aligned = [&] {
    test(cl, 15);
    jnz(*slow_, T_NEAR);
  };
  switch (plans_[i].op) {
    case Op::kSseMov: {
      const bool need_align = m != ZYDIS_MNEMONIC_MOVUPS && m != ZYDIS_MNEMONIC_MOVUPD &&
                              m != ZYDIS_MNEMONIC_MOVDQU;
      if (k0 == kOpReg && k1 == kOpReg) {
        movdqa(xmm0, xmm_slot(s));
        movdqa(xmm_slot(d), xmm0);
      } else if (k0 == kOpReg) {
        memop_ea(i, false, 16, [&] {
          if (need_align) aligned();
          movdqu(xmm0, xword[rcx]);
          movdqa(xmm_slot(d), xmm0);
        }, false, false);
      } else {
        memop_ea(i, true, 16, [&] {
          if (need_align) aligned();
          movdqa(xmm0, xmm_slot(s));
          movdqu(xword[rcx], xmm0);
        }, false, false);
      }
      return;
    }
    case Op::kSseBin: {
      const uint8_t imm = uint8_t(in.imm);
      movdqa(xmm0, xmm_slot(d));
      if (k1 == kOpReg) {
        sse_bin(m, xmm0, xmm_slot(s), imm);
        movdqa(xmm_slot(d), xmm0);
      } else {
        memop_ea(i, false, 16, [&] {
          aligned();
          movdqu(xmm1, xword[rcx]);
          sse_bin(m, xmm0, xmm1, imm);
          movdqa(xmm_slot(d), xmm0);
        }, false, false);
      }
      return;
    }
    case Op::kSsePmovmskb: {
      int g = target(in.reg[0], 4);
      movdqa(xmm0, xmm_slot(s));
      pmovmskb(Reg32(g), xmm0);
      dirty(in.reg[0]);
      return;
    }
    case Op::kSseMovq: {
      // in.imm2 (the interpreter decoder's form): 0 xmm <- xmm/mem, 1 xmm <- GPR, 2 GPR <- xmm,
      // 3 mem <- xmm; in.cc: 4 or 8 bytes. Loads into an XMM register zero the rest of it.
      const int w = in.cc;
      switch (in.imm2) {
        case 0:
          if (k1 == kOpReg) {
            movq(xmm0, xmm_slot(s));
            movdqa(xmm_slot(d), xmm0);
          } else {
            memop_ea(i, false, w, [&] {
              if (w == 8) movq(xmm0, qword[rcx]);
              else movd(xmm0, dword[rcx]);
              movdqa(xmm_slot(d), xmm0);
            }, false, false);
          }
          return;
        case 1: {
          int g = use(in.reg[1]);
          if (w == 8) movq(xmm0, Reg64(g));
          else movd(xmm0, Reg32(g));
          movdqa(xmm_slot(d), xmm0);
          return;
        }
        case 2: {
          int g = target(in.reg[0], w);
          if (w == 8) mov(Reg64(g), qword[rbp + (kOffXmm + 16 * s)]);
          else mov(Reg32(g), dword[rbp + (kOffXmm + 16 * s)]);
          dirty(in.reg[0]);
          return;
        }
        default:
          memop_ea(i, true, w, [&] {
            if (w == 8) {
              mov(rax, qword[rbp + (kOffXmm + 16 * s)]);
              mov(qword[rcx], rax);
            } else {
              mov(eax, dword[rbp + (kOffXmm + 16 * s)]);
              mov(dword[rcx], eax);
            }
          }, false, false);
          return;
      }
    }
    case Op::kSseMovhl: {
      const int half = (m == ZYDIS_MNEMONIC_MOVHPD || m == ZYDIS_MNEMONIC_MOVHPS) ? 8 : 0;
      if (k0 == kOpReg) {
        memop_ea(i, false, 8, [&] {
          mov(rax, qword[rcx]);
          mov(qword[rbp + (kOffXmm + 16 * d + half)], rax);
        }, false, false);
      } else {
        memop_ea(i, true, 8, [&] {
          mov(rax, qword[rbp + (kOffXmm + 16 * s + half)]);
          mov(qword[rcx], rax);
        }, false, false);
      }
      return;
    }
    case Op::kSseMovScalar: {
      const int w = m == ZYDIS_MNEMONIC_MOVSD ? 8 : 4;
      const Reg64 r64 = rax;
      if (k0 == kOpReg && k1 == kOpReg) {  // merges the low element
        if (w == 8) {
          mov(r64, qword[rbp + (kOffXmm + 16 * s)]);
          mov(qword[rbp + (kOffXmm + 16 * d)], r64);
        } else {
          mov(eax, dword[rbp + (kOffXmm + 16 * s)]);
          mov(dword[rbp + (kOffXmm + 16 * d)], eax);
        }
      } else if (k0 == kOpReg) {  // a load zeroes the rest
        memop_ea(i, false, w, [&] {
          if (w == 8) movq(xmm0, qword[rcx]);
          else movd(xmm0, dword[rcx]);
          movdqa(xmm_slot(d), xmm0);
        }, false, false);
      } else {
        memop_ea(i, true, w, [&] {
          if (w == 8) {
            mov(rax, qword[rbp + (kOffXmm + 16 * s)]);
            mov(qword[rcx], rax);
          } else {
            mov(eax, dword[rbp + (kOffXmm + 16 * s)]);
            mov(dword[rcx], eax);
          }
        }, false, false);
      }
      return;
    }
    default:
      throw Xbyak::Error(Xbyak::ERR_BAD_COMBINATION);
  }
}

Translation BlockEmitter::run() {
  n_ = unsigned(b_.insns.size());
  off_.resize(n_ + 1);
  off_[0] = 0;
  for (unsigned i = 0; i < n_; ++i) off_[i + 1] = off_[i] + b_.insns[i].len;
  plans_.resize(n_);
  for (unsigned i = 0; i < n_; ++i) plans_[i] = classify(b_.insns[i], off_[i + 1]);
  // Flag liveness, backwards: block exits and every possible fault observe all flags (precise
  // exceptions push RFLAGS), a helper reads them all; a native writer kills what it writes.
  live_after_.assign(n_, 0);
  uint8_t live = kFlAll;
  for (int i = int(n_) - 1; i >= 0; --i) {
    live_after_[i] = live;
    const Plan& p = plans_[i];
    if (p.op == Op::kHelper || p.mem) live = kFlAll;
    else live = uint8_t((live & ~p.wr) | p.rd);
  }
  status_exits_.assign(n_, nullptr);

  Translation t;
  t.entry = const_cast<uint8_t*>(getCurr());
  // Checked entry: a kick or queued invalidation, or (with IF set) a possibly pending interrupt,
  // leaves before the first instruction with RIP at the block.
  Label body;
  cmp(word[rbp + kOffRequests], 0);
  jne(stubs_.check_exit);
  test(byte[rbp + kOffRflags + 1], uint8_t(x86::kFlagIF >> 8));
  jz(body, T_NEAR);
  mov(rax, qword[rbp + kOffAttention]);
  cmp(dword[rax], 0);
  jne(stubs_.check_exit);
  L(body);
  if (b_.gpa2 != ~0ull) {
    // The first instruction crosses into the next page, whose mapping is the entry's to check
    // (the run loop, which enters at the body, has just checked it).
    const int32_t avail = int32_t(4096 - (b_.start_gpa & 0xFFF));
    lea(rax, ptr[r15 + avail]);
    mov(rcx, rax);
    shr(rcx, 6);
    and_(ecx, (kTlbSize - 1) << 6);
    cmp(rax, qword[rbp + rcx + (itlb_offset(user_) + kTlbXtag)]);
    jne(stubs_.check_exit);
    mov(rax, b_.gpa2);
    cmp(rax, qword[rbp + rcx + (itlb_offset(user_) + kTlbGpa)]);
    jne(stubs_.check_exit);
  }
  t.body = const_cast<uint8_t*>(getCurr());

  for (unsigned i = 0; i < n_; ++i) {
    emit(int(i));
    if (plans_[i].op == Op::kHelper) ++t.helpers;
    else ++t.native;
  }
  // A block that ends without a branch (size limit, page end, or a state-changing instruction
  // the handler ran) continues at the next instruction.
  const Op last = plans_[n_ - 1].op;
  if (last != Op::kHelper && last != Op::kJmp && last != Op::kJcc && last != Op::kCall &&
      last != Op::kRet && last != Op::kJmpInd && last != Op::kCallInd) {
    leave_prep();
    count(n_);
    goto_offset(off_[n_]);
  }
  for (size_t k = 0; k < cold_.size(); ++k) cold_[k]();
  t.size = getSize();
  return t;
}

}  // namespace

Translation translate_block(const Block& block, bool user, bool count, const Stubs& stubs,
                            uint8_t* buf, size_t avail) {
  BlockEmitter e(block, user, count, stubs, buf, avail);
  return e.run();
}

}  // namespace keel::emu::jit
