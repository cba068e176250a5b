#include "difftest/generator.h"

#include <Zydis/Zydis.h>

#include <bit>
#include <cstring>
#include <initializer_list>
#include <stdexcept>

#include "difftest/rng.h"

namespace keel::difftest {

namespace {

using namespace layout;

constexpr int kRsp = 4;
constexpr uint16_t bit(int gpr) { return static_cast<uint16_t>(1u << gpr); }

const ZydisRegister kGpr8[16] = {
    ZYDIS_REGISTER_AL,   ZYDIS_REGISTER_CL,   ZYDIS_REGISTER_DL,   ZYDIS_REGISTER_BL,
    ZYDIS_REGISTER_SPL,  ZYDIS_REGISTER_BPL,  ZYDIS_REGISTER_SIL,  ZYDIS_REGISTER_DIL,
    ZYDIS_REGISTER_R8B,  ZYDIS_REGISTER_R9B,  ZYDIS_REGISTER_R10B, ZYDIS_REGISTER_R11B,
    ZYDIS_REGISTER_R12B, ZYDIS_REGISTER_R13B, ZYDIS_REGISTER_R14B, ZYDIS_REGISTER_R15B};
const ZydisRegister kGprHigh8[4] = {ZYDIS_REGISTER_AH, ZYDIS_REGISTER_CH, ZYDIS_REGISTER_DH,
                                    ZYDIS_REGISTER_BH};
const ZydisRegister kGpr16[16] = {
    ZYDIS_REGISTER_AX,   ZYDIS_REGISTER_CX,   ZYDIS_REGISTER_DX,   ZYDIS_REGISTER_BX,
    ZYDIS_REGISTER_SP,   ZYDIS_REGISTER_BP,   ZYDIS_REGISTER_SI,   ZYDIS_REGISTER_DI,
    ZYDIS_REGISTER_R8W,  ZYDIS_REGISTER_R9W,  ZYDIS_REGISTER_R10W, ZYDIS_REGISTER_R11W,
    ZYDIS_REGISTER_R12W, ZYDIS_REGISTER_R13W, ZYDIS_REGISTER_R14W, ZYDIS_REGISTER_R15W};
const ZydisRegister kGpr32[16] = {
    ZYDIS_REGISTER_EAX,  ZYDIS_REGISTER_ECX,  ZYDIS_REGISTER_EDX,  ZYDIS_REGISTER_EBX,
    ZYDIS_REGISTER_ESP,  ZYDIS_REGISTER_EBP,  ZYDIS_REGISTER_ESI,  ZYDIS_REGISTER_EDI,
    ZYDIS_REGISTER_R8D,  ZYDIS_REGISTER_R9D,  ZYDIS_REGISTER_R10D, ZYDIS_REGISTER_R11D,
    ZYDIS_REGISTER_R12D, ZYDIS_REGISTER_R13D, ZYDIS_REGISTER_R14D, ZYDIS_REGISTER_R15D};
const ZydisRegister kGpr64[16] = {
    ZYDIS_REGISTER_RAX, ZYDIS_REGISTER_RCX, ZYDIS_REGISTER_RDX, ZYDIS_REGISTER_RBX,
    ZYDIS_REGISTER_RSP, ZYDIS_REGISTER_RBP, ZYDIS_REGISTER_RSI, ZYDIS_REGISTER_RDI,
    ZYDIS_REGISTER_R8,  ZYDIS_REGISTER_R9,  ZYDIS_REGISTER_R10, ZYDIS_REGISTER_R11,
    ZYDIS_REGISTER_R12, ZYDIS_REGISTER_R13, ZYDIS_REGISTER_R14, ZYDIS_REGISTER_R15};

ZydisRegister gpr(int width, int index) {
  switch (width) {
    case 8: return kGpr8[index];
    case 16: return kGpr16[index];
    case 32: return kGpr32[index];
    default: return kGpr64[index];
  }
}
ZydisRegister xmm(int index) {
  return static_cast<ZydisRegister>(ZYDIS_REGISTER_XMM0 + index);
}

ZydisEncoderOperand R(ZydisRegister r) {
  ZydisEncoderOperand o;
  std::memset(&o, 0, sizeof o);
  o.type = ZYDIS_OPERAND_TYPE_REGISTER;
  o.reg.value = r;
  return o;
}
ZydisEncoderOperand I(int64_t v);
ZydisEncoderOperand I8(uint8_t v) { return I(static_cast<int8_t>(v)); }
ZydisEncoderOperand I(int64_t v) {
  ZydisEncoderOperand o;
  std::memset(&o, 0, sizeof o);
  o.type = ZYDIS_OPERAND_TYPE_IMMEDIATE;
  o.imm.s = v;
  return o;
}

// Condition codes in encoding order, with the flags each one reads.
const ZydisMnemonic kCmov[16] = {
    ZYDIS_MNEMONIC_CMOVO,  ZYDIS_MNEMONIC_CMOVNO, ZYDIS_MNEMONIC_CMOVB,  ZYDIS_MNEMONIC_CMOVNB,
    ZYDIS_MNEMONIC_CMOVZ,  ZYDIS_MNEMONIC_CMOVNZ, ZYDIS_MNEMONIC_CMOVBE, ZYDIS_MNEMONIC_CMOVNBE,
    ZYDIS_MNEMONIC_CMOVS,  ZYDIS_MNEMONIC_CMOVNS, ZYDIS_MNEMONIC_CMOVP,  ZYDIS_MNEMONIC_CMOVNP,
    ZYDIS_MNEMONIC_CMOVL,  ZYDIS_MNEMONIC_CMOVNL, ZYDIS_MNEMONIC_CMOVLE, ZYDIS_MNEMONIC_CMOVNLE};
const ZydisMnemonic kSetcc[16] = {
    ZYDIS_MNEMONIC_SETO,  ZYDIS_MNEMONIC_SETNO, ZYDIS_MNEMONIC_SETB,  ZYDIS_MNEMONIC_SETNB,
    ZYDIS_MNEMONIC_SETZ,  ZYDIS_MNEMONIC_SETNZ, ZYDIS_MNEMONIC_SETBE, ZYDIS_MNEMONIC_SETNBE,
    ZYDIS_MNEMONIC_SETS,  ZYDIS_MNEMONIC_SETNS, ZYDIS_MNEMONIC_SETP,  ZYDIS_MNEMONIC_SETNP,
    ZYDIS_MNEMONIC_SETL,  ZYDIS_MNEMONIC_SETNL, ZYDIS_MNEMONIC_SETLE, ZYDIS_MNEMONIC_SETNLE};
constexpr uint32_t kCondReads[16] = {kOF, kOF, kCF, kCF, kZF, kZF, kCF | kZF, kCF | kZF,
                                     kSF, kSF, kPF, kPF, kSF | kOF, kSF | kOF,
                                     kZF | kSF | kOF, kZF | kSF | kOF};

uint64_t truncate(uint64_t v, int width) {
  return width == 64 ? v : v & ((1ull << width) - 1);
}
int64_t sign_extend(uint64_t v, int width) {
  if (width == 64) return static_cast<int64_t>(v);
  uint64_t m = 1ull << (width - 1);
  v = truncate(v, width);
  return static_cast<int64_t>((v ^ m) - m);
}

// A memory operand plus the prefixes (segment override) it needs.
struct Mem {
  ZydisEncoderOperand op;
  ZydisInstructionAttributes prefixes = 0;
};

enum class Region { kData, kDataOrStack, kReadable };

class Generator {
 public:
  Generator(uint64_t seed, const GenOptions& options) : rng_(seed), options_(options) {
    program_.seed = seed;
  }

  Program run() {
    init_state();
    const bool loop = options_.loop_iterations > 0;
    uint64_t loop_top = 0;
    if (loop) {
      must(ins(InsnClass::kSetup, 0, 0, ZYDIS_MNEMONIC_MOV,
               {abs_mem(kScratch, 8), I(options_.loop_iterations)}));
      loop_top = pc_;
      set_gpr(kRsp, kInitialRsp);
    }
    size_t smc_at = options_.self_modifying ? rng_.below(options_.items) : ~size_t(0);
    size_t guard = 0;
    while (items_ < options_.items && guard++ < options_.items * 50) {
      if (items_ == smc_at) {
        self_modifying_item();
        smc_at = ~size_t(0);
      }
      InsnClass c = pick_class();
      size_t before = program_.instrs.size();
      bool ok = generate_item(c);
      if (ok && program_.instrs.size() > before) items_++;
    }
    if (loop) {
      must(ins(InsnClass::kSetup, kArithFlags, 0, ZYDIS_MNEMONIC_SUB, {abs_mem(kScratch, 8), I(1)}));
      must(ins(InsnClass::kSetup, 0, 0, ZYDIS_MNEMONIC_JNZ, {I(int64_t(loop_top))}));
    }
    if (enabled(InsnClass::kFault) && rng_.chance(options_.fault_percent)) {
      for (int tries = 0; tries < 20 && !fault_item(); tries++) {
      }
    }
    // The end: `out kPortDone, al; jmp $`. An engine may notice the kick only at a block end;
    // spinning on the jump makes it stop in the same state KVM stops in.
    emit({0xE6, static_cast<uint8_t>(kPortDone)}, InsnClass::kSetup, 0, 0);
    emit({0xEB, 0xFE}, InsnClass::kSetup, 0, 0);
    return std::move(program_);
  }

 private:
  // ---- state and emission -----------------------------------------------------------------

  bool enabled(InsnClass c) const {
    return (options_.classes | class_bit(InsnClass::kSetup)) & class_bit(c);
  }

  InsnClass pick_class() {
    struct W {
      InsnClass c;
      int weight;
    };
    static const W kWeights[] = {
        {InsnClass::kAlu, 20},     {InsnClass::kShift, 11},    {InsnClass::kDoubleShift, 4},
        {InsnClass::kMulDiv, 10},
        {InsnClass::kBitTest, 6},  {InsnClass::kBitScan, 4},   {InsnClass::kString, 8},
        {InsnClass::kCondMove, 8}, {InsnClass::kExtend, 6},    {InsnClass::kExchange, 6},
        {InsnClass::kMisc, 8},     {InsnClass::kStack, 6},     {InsnClass::kSse, 10},
        {InsnClass::kSseFp, 8}};
    int total = 0;
    for (const auto& w : kWeights)
      if (enabled(w.c)) total += w.weight;
    if (total == 0) return InsnClass::kSetup;
    int r = static_cast<int>(rng_.below(total));
    for (const auto& w : kWeights) {
      if (!enabled(w.c)) continue;
      if (r < w.weight) return w.c;
      r -= w.weight;
    }
    return InsnClass::kSetup;
  }

  // Records an instruction: `def` are the arithmetic flags it writes with defined values, `undef`
  // those the SDM leaves undefined; all others keep their state.
  void emit(const std::vector<uint8_t>& bytes, InsnClass cls, uint32_t def, uint32_t undef) {
    if (pc_ + bytes.size() + 16 > kCode + kCodeSize) throw std::length_error("program too long");
    Instr in;
    in.bytes = bytes;
    in.address = pc_;
    in.cls = cls;
    in.undef_before = undef_;
    undef_ = (undef_ & ~def) | undef;
    in.undef_after = undef_;
    pc_ += bytes.size();
    program_.instrs.push_back(std::move(in));
  }

  bool encode(ZydisMnemonic m, std::initializer_list<ZydisEncoderOperand> ops,
              ZydisInstructionAttributes prefixes, std::vector<uint8_t>& out) {
    ZydisEncoderRequest req;
    std::memset(&req, 0, sizeof req);
    req.machine_mode = ZYDIS_MACHINE_MODE_LONG_64;
    req.mnemonic = m;
    req.prefixes = prefixes;
    req.operand_count = static_cast<ZyanU8>(ops.size());
    int i = 0;
    for (const auto& o : ops) req.operands[i++] = o;
    uint8_t buf[ZYDIS_MAX_INSTRUCTION_LENGTH];
    ZyanUSize len = sizeof buf;
    last_mnemonic_ = m;
    if (!ZYAN_SUCCESS(ZydisEncoderEncodeInstructionAbsolute(&req, buf, &len, pc_))) return false;
    out.assign(buf, buf + len);
    return true;
  }

  // Encodes and emits; false (nothing emitted) if Zydis refuses the operand combination.
  bool ins(InsnClass cls, uint32_t def, uint32_t undef, ZydisMnemonic m,
           std::initializer_list<ZydisEncoderOperand> ops, ZydisInstructionAttributes prefixes = 0) {
    std::vector<uint8_t> bytes;
    if (!encode(m, ops, prefixes, bytes)) return false;
    emit(bytes, cls, def, undef);
    return true;
  }

  void must(bool ok) {
    if (!ok)
      throw std::logic_error(std::string("difftest generator: a setup instruction failed to encode: ") +
                             ZydisMnemonicGetString(last_mnemonic_));
  }

  // ---- random values ------------------------------------------------------------------------

  uint64_t interesting() {
    static const uint64_t kValues[] = {0,          1,           2,          ~0ull,
                                       ~1ull,      0x7f,        0x80,       0xff,
                                       0x100,      0x7fff,      0x8000,     0xffff,
                                       0x10000,    0x7fffffff,  0x80000000, 0xffffffff,
                                       0x100000000ull, 0x7fffffffffffffffull,
                                       0x8000000000000000ull, 0xffffffff80000000ull};
    switch (rng_.below(6)) {
      case 0: case 1: return rng_.pick(kValues);
      case 2: return rng_.below(65);
      case 3: return static_cast<uint64_t>(sign_extend(rng_.next(), rng_.pick({8, 16, 32})));
      default: return rng_.next();
    }
  }
  // An immediate that the width's instruction forms can hold (imm8, imm16, sign-extended imm32).
  int64_t imm_for(int width) { return sign_extend(interesting(), width == 64 ? 32 : width); }

  int pick_width() {
    static const int kWidths[] = {8, 16, 32, 32, 64, 64};
    return rng_.pick(kWidths);
  }
  int pick_width_no8() {
    static const int kWidths[] = {16, 32, 32, 64, 64};
    return rng_.pick(kWidths);
  }

  // A GPR index other than RSP and those in `avoid`.
  int pick_gpr(uint16_t avoid = 0) {
    avoid |= bit(kRsp);
    for (;;) {
      int r = static_cast<int>(rng_.below(16));
      if (!(avoid & bit(r))) return r;
    }
  }
  // A register operand of `width`; 8-bit operands are sometimes AH/CH/DH/BH.
  ZydisRegister reg(int width, int index, bool allow_high = true) {
    if (width == 8 && allow_high && index < 4 && rng_.chance(25)) return kGprHigh8[index];
    return gpr(width, index);
  }

  // ---- setup --------------------------------------------------------------------------------

  static ZydisEncoderOperand abs_mem(uint64_t addr, int size) {
    ZydisEncoderOperand o;
    std::memset(&o, 0, sizeof o);
    o.type = ZYDIS_OPERAND_TYPE_MEMORY;
    o.mem.size = static_cast<ZyanU16>(size);
    o.mem.base = ZYDIS_REGISTER_NONE;
    o.mem.index = ZYDIS_REGISTER_NONE;
    o.mem.displacement = static_cast<ZyanI64>(addr);
    return o;
  }

  // `add t32, imm32` preceded by an ADD that changes its immediate in memory: through the code
  // page itself, or through the alias mapping followed by a jump (SDM 11.6: store, jump, execute).
  void self_modifying_item() {
    const bool alias = rng_.chance(50);
    const int x = pick_gpr();
    const int t = pick_gpr(bit(x));
    const int64_t imm = int64_t(0x10000000u | (rng_.next() & 0x0fffffffu));
    std::vector<uint8_t> target, load, write;
    must(encode(ZYDIS_MNEMONIC_ADD, {R(gpr(32, t)), I(imm)}, 0, target));
    must(encode(ZYDIS_MNEMONIC_MOV, {R(gpr(32, x)), I(0x7fffffff)}, 0, load));
    ZydisEncoderOperand dst;
    std::memset(&dst, 0, sizeof dst);
    dst.type = ZYDIS_OPERAND_TYPE_MEMORY;
    dst.mem.size = 4;
    dst.mem.base = gpr(64, x);
    dst.mem.index = ZYDIS_REGISTER_NONE;
    must(encode(ZYDIS_MNEMONIC_ADD, {dst, I(0x01010101)}, 0, write));
    const uint64_t target_at = pc_ + load.size() + write.size() + (alias ? 2 : 0);
    const uint64_t imm_at = target_at + target.size() - 4;
    set_gpr(x, alias ? imm_at - kCode + kCodeAlias : imm_at);
    must(ins(InsnClass::kSetup, kArithFlags, 0, ZYDIS_MNEMONIC_ADD, {dst, I(0x01010101)}));
    if (alias) emit({0xEB, 0x00}, InsnClass::kSetup, 0, 0);  // jmp to the next instruction
    if (pc_ != target_at) throw std::logic_error("difftest generator: self-modifying layout");
    emit(target, InsnClass::kAlu, kArithFlags, 0);
  }

  void set_gpr(int index, uint64_t value) {
    if (value <= 0xffffffffull)
      must(ins(InsnClass::kSetup, 0, 0, ZYDIS_MNEMONIC_MOV,
               {R(gpr(32, index)), I(sign_extend(value, 32))}));
    else
      must(ins(InsnClass::kSetup, 0, 0, ZYDIS_MNEMONIC_MOV,
               {R(gpr(64, index)), I(static_cast<int64_t>(value))}));
  }
  // Defines all arithmetic flags (CMP of two random registers).
  void define_flags() {
    must(ins(InsnClass::kSetup, kArithFlags, 0, ZYDIS_MNEMONIC_CMP,
             {R(gpr(64, pick_gpr())), R(gpr(64, pick_gpr()))}));
  }
  void need_flags(uint32_t reads) {
    if (undef_ & reads) define_flags();
  }

  // A target address for a `size`-byte access, aligned to `align`.
  uint64_t pick_target(int size, int align, Region region) {
    uint64_t base = kData, span = kDataSize;
    if (region == Region::kDataOrStack && rng_.chance(15)) {
      base = kStack, span = kStackSize;
    } else if (region == Region::kReadable && rng_.chance(15)) {
      base = kReadOnly, span = 0x1000;
    }
    uint64_t addr;
    if (base == kData && rng_.chance(12))
      addr = kData + 0x1000 - rng_.below(size);  // crosses the boundary of the two data pages
    else
      addr = base + rng_.below(span - size + 1);
    addr &= ~static_cast<uint64_t>(align - 1);
    return addr;
  }

  // A memory operand that addresses exactly `target`. Emits the instructions that load its base
  // and index registers, chosen outside `avoid`.
  Mem mem(int size, uint64_t target, uint16_t avoid = 0, bool allow_rsp_base = true) {
    Mem m;
    std::memset(&m.op, 0, sizeof m.op);
    m.op.type = ZYDIS_OPERAND_TYPE_MEMORY;
    m.op.mem.size = static_cast<ZyanU16>(size);
    m.op.mem.base = ZYDIS_REGISTER_NONE;
    m.op.mem.index = ZYDIS_REGISTER_NONE;
    bool in_stack = target >= kStack && target < kStack + kStackSize;
    // A segment override moves the effective address by FS/GS base.
    uint64_t seg_base = 0;
    if (rng_.chance(10)) {
      bool fs = rng_.chance(50);
      seg_base = fs ? kFsBase : kGsBase;
      m.prefixes = fs ? ZYDIS_ATTRIB_HAS_SEGMENT_FS : ZYDIS_ATTRIB_HAS_SEGMENT_GS;
    }
    uint64_t ea = target - seg_base;
    int form = static_cast<int>(rng_.below(10));
    if (in_stack && allow_rsp_base && rng_.chance(50)) form = 9;
    switch (form) {
      case 0: case 1: case 2:  // RIP-relative (the encoder takes the absolute target)
        if (seg_base) return mem_abs(m, ea);
        m.op.mem.base = ZYDIS_REGISTER_RIP;
        m.op.mem.displacement = static_cast<int64_t>(target);
        return m;
      case 3:  // [disp32]
        return mem_abs(m, ea);
      case 4: case 5: {  // [base + disp]
        int b = pick_gpr(avoid);
        int64_t disp = rng_.chance(30) ? 0 : rng_.chance(50) ? rng_.range(-128, 127)
                                                            : rng_.range(-0x8000, 0x8000);
        if (!seg_base && rng_.chance(25)) {
          // 32-bit address size: only the low 32 bits of the base count.
          uint64_t low = static_cast<uint32_t>(ea - disp);
          set_gpr(b, (rng_.next() << 32) | low);
          m.op.mem.base = gpr(32, b);
        } else {
          set_gpr(b, ea - disp);
          m.op.mem.base = gpr(64, b);
        }
        m.op.mem.displacement = disp;
        return m;
      }
      case 6: case 7: case 8: {  // [base + index*scale + disp], [index*scale + disp32]
        static const int kScales[] = {1, 2, 4, 8};
        int scale = rng_.pick(kScales);
        int x = pick_gpr(avoid);
        int64_t iv = rng_.range(-512, 512);
        int64_t disp = rng_.chance(30) ? 0 : rng_.range(-0x1000, 0x1000);
        set_gpr(x, static_cast<uint64_t>(iv));
        m.op.mem.index = gpr(64, x);
        m.op.mem.scale = static_cast<ZyanU8>(scale);
        if (form == 8) {
          m.op.mem.displacement = static_cast<int64_t>(ea - iv * scale);
          return m;
        }
        int b = pick_gpr(avoid | bit(x));
        set_gpr(b, ea - iv * scale - disp);
        m.op.mem.base = gpr(64, b);
        m.op.mem.displacement = disp;
        return m;
      }
      default: {  // [rsp + disp]
        if (!in_stack || !allow_rsp_base || seg_base) return mem_abs(m, ea);
        m.op.mem.base = ZYDIS_REGISTER_RSP;
        m.op.mem.displacement = static_cast<int64_t>(target - rsp_);
        return m;
      }
    }
  }
  Mem mem_abs(Mem m, uint64_t ea) {
    m.op.mem.base = ZYDIS_REGISTER_NONE;
    m.op.mem.displacement = static_cast<int64_t>(ea);
    return m;
  }

  // ---- classes ------------------------------------------------------------------------------

  bool generate_item(InsnClass c) {
    switch (c) {
      case InsnClass::kAlu: return alu();
      case InsnClass::kShift: return shift();
      case InsnClass::kDoubleShift: return double_shift();
      case InsnClass::kMulDiv: return rng_.chance(55) ? multiply() : divide(false);
      case InsnClass::kBitTest: return bit_test();
      case InsnClass::kBitScan: return bit_scan();
      case InsnClass::kString: return string_op();
      case InsnClass::kCondMove: return cond_move();
      case InsnClass::kExtend: return extend();
      case InsnClass::kExchange: return exchange();
      case InsnClass::kMisc: return misc();
      case InsnClass::kStack: return stack_op();
      case InsnClass::kSse: return sse(false);
      case InsnClass::kSseFp: return sse(true);
      default: return false;
    }
  }

  // Destination (or source) operand: a register or a memory operand of `width`.
  struct RM {
    ZydisEncoderOperand op;
    ZydisInstructionAttributes prefixes = 0;
    bool is_mem = false;
    int index = -1;  // GPR index for register operands
  };
  RM rm(int width, Region region, uint16_t avoid = 0, int mem_percent = 35, int align = 1) {
    RM r;
    if (rng_.chance(mem_percent)) {
      Mem m = mem(width / 8, pick_target(width / 8, align, region), avoid);
      r.op = m.op;
      r.prefixes = m.prefixes;
      r.is_mem = true;
    } else {
      r.index = pick_gpr(avoid);
      r.op = R(reg(width, r.index));
    }
    return r;
  }

  bool alu() {
    struct Op {
      ZydisMnemonic m;
      uint32_t def, undef, reads;
      int kind;  // 0 two operands, 1 one operand, 2 test (no reg,mem form)
    };
    static const Op kOps[] = {
        {ZYDIS_MNEMONIC_ADD, kArithFlags, 0, 0, 0},
        {ZYDIS_MNEMONIC_ADC, kArithFlags, 0, kCF, 0},
        {ZYDIS_MNEMONIC_SUB, kArithFlags, 0, 0, 0},
        {ZYDIS_MNEMONIC_SBB, kArithFlags, 0, kCF, 0},
        {ZYDIS_MNEMONIC_AND, kArithFlags & ~kAF, kAF, 0, 0},
        {ZYDIS_MNEMONIC_OR, kArithFlags & ~kAF, kAF, 0, 0},
        {ZYDIS_MNEMONIC_XOR, kArithFlags & ~kAF, kAF, 0, 0},
        {ZYDIS_MNEMONIC_CMP, kArithFlags, 0, 0, 0},
        {ZYDIS_MNEMONIC_TEST, kArithFlags & ~kAF, kAF, 0, 2},
        {ZYDIS_MNEMONIC_INC, kArithFlags & ~kCF, 0, 0, 1},
        {ZYDIS_MNEMONIC_DEC, kArithFlags & ~kCF, 0, 0, 1},
        {ZYDIS_MNEMONIC_NEG, kArithFlags, 0, 0, 1},
        {ZYDIS_MNEMONIC_NOT, 0, 0, 0, 1},
    };
    const Op& op = rng_.pick(kOps);
    need_flags(op.reads);
    int w = pick_width();
    bool writes = op.m != ZYDIS_MNEMONIC_CMP && op.m != ZYDIS_MNEMONIC_TEST;
    Region region = writes ? Region::kDataOrStack : Region::kReadable;
    if (op.kind == 1) {
      RM d = rm(w, region);
      ZydisInstructionAttributes lock = d.is_mem && rng_.chance(25) ? ZYDIS_ATTRIB_HAS_LOCK : 0;
      return ins(InsnClass::kAlu, op.def, op.undef, op.m, {d.op}, d.prefixes | lock);
    }
    switch (rng_.below(op.kind == 2 ? 4 : 5)) {
      case 0: {  // r/m, r
        RM d = rm(w, region);
        ZydisInstructionAttributes lock =
            d.is_mem && writes && rng_.chance(25) ? ZYDIS_ATTRIB_HAS_LOCK : 0;
        return ins(InsnClass::kAlu, op.def, op.undef, op.m, {d.op, R(reg(w, pick_gpr()))},
                   d.prefixes | lock);
      }
      case 1: {  // r/m, imm
        RM d = rm(w, region);
        ZydisInstructionAttributes lock =
            d.is_mem && writes && rng_.chance(25) ? ZYDIS_ATTRIB_HAS_LOCK : 0;
        return ins(InsnClass::kAlu, op.def, op.undef, op.m, {d.op, I(imm_for(w))},
                   d.prefixes | lock);
      }
      case 2:  // accumulator, imm (short forms)
        return ins(InsnClass::kAlu, op.def, op.undef, op.m, {R(gpr(w, 0)), I(imm_for(w))});
      case 3:  // r, r
        return ins(InsnClass::kAlu, op.def, op.undef, op.m,
                   {R(reg(w, pick_gpr())), R(reg(w, pick_gpr()))});
      default: {  // r, m
        Mem m = mem(w / 8, pick_target(w / 8, 1, Region::kReadable));
        return ins(InsnClass::kAlu, op.def, op.undef, op.m, {R(reg(w, pick_gpr())), m.op},
                   m.prefixes);
      }
    }
  }

  uint8_t pick_count(int width) {
    const uint8_t kCounts[] = {0, 1, 1, 2, 3, static_cast<uint8_t>(width - 1),
                               static_cast<uint8_t>(width), static_cast<uint8_t>(width + 1),
                               7, 8, 9, 15, 16, 17, 31, 32, 33, 63, 64, 65, 255};
    if (rng_.chance(25)) return static_cast<uint8_t>(rng_.below(256));
    return kCounts[rng_.below(sizeof kCounts)];
  }

  bool shift() {
    static const ZydisMnemonic kOps[] = {ZYDIS_MNEMONIC_SHL, ZYDIS_MNEMONIC_SHR,
                                         ZYDIS_MNEMONIC_SAR, ZYDIS_MNEMONIC_ROL,
                                         ZYDIS_MNEMONIC_ROR, ZYDIS_MNEMONIC_RCL,
                                         ZYDIS_MNEMONIC_RCR};
    ZydisMnemonic m = rng_.pick(kOps);
    int w = pick_width();
    bool rotate = m == ZYDIS_MNEMONIC_ROL || m == ZYDIS_MNEMONIC_ROR;
    bool through_carry = m == ZYDIS_MNEMONIC_RCL || m == ZYDIS_MNEMONIC_RCR;
    int form = static_cast<int>(rng_.below(3));  // 0: by 1, 1: imm8, 2: CL
    uint8_t count = form == 0 ? 1 : pick_count(w);
    unsigned masked = count & (w == 64 ? 63 : 31);
    uint32_t def = 0, undef = 0;
    if (masked != 0) {
      if (rotate || through_carry) {
        def = kCF;
      } else {
        def = kCF | kPF | kZF | kSF;
        undef = kAF;
        // CF is undefined for SHL/SHR by at least the operand size (only 8/16-bit can get there).
        if (m != ZYDIS_MNEMONIC_SAR && masked >= static_cast<unsigned>(w)) {
          def &= ~kCF;
          undef |= kCF;
        }
      }
      if (masked == 1) def |= kOF;
      else undef |= kOF;
    }
    if (through_carry) need_flags(kCF);
    uint16_t avoid = form == 2 ? bit(1) : 0;
    RM d = rm(w, Region::kDataOrStack, avoid);
    if (form == 2) {
      must(ins(InsnClass::kSetup, 0, 0, ZYDIS_MNEMONIC_MOV, {R(ZYDIS_REGISTER_CL), I8(count)}));
      return ins(InsnClass::kShift, def, undef, m, {d.op, R(ZYDIS_REGISTER_CL)}, d.prefixes);
    }
    return ins(InsnClass::kShift, def, undef, m, {d.op, I8(count)}, d.prefixes);
  }

  bool double_shift() {
    ZydisMnemonic m = rng_.chance(50) ? ZYDIS_MNEMONIC_SHLD : ZYDIS_MNEMONIC_SHRD;
    int w = pick_width_no8();
    uint8_t count = pick_count(w);
    unsigned masked = count & (w == 64 ? 63 : 31);
    // A count above the operand size (16-bit only) leaves result and flags undefined.
    if (w == 16 && masked > 16) {
      count = static_cast<uint8_t>(count & 0xef);
      masked = count & 31;
    }
    uint32_t def = 0, undef = 0;
    if (masked != 0) {
      def = kCF | kPF | kZF | kSF;
      undef = kAF;
      if (masked == 1) def |= kOF;
      else undef |= kOF;
    }
    bool cl = rng_.chance(50);
    uint16_t avoid = cl ? bit(1) : 0;
    RM d = rm(w, Region::kDataOrStack, avoid);
    ZydisEncoderOperand src = R(gpr(w, pick_gpr(avoid)));
    if (cl) {
      must(ins(InsnClass::kSetup, 0, 0, ZYDIS_MNEMONIC_MOV, {R(ZYDIS_REGISTER_CL), I8(count)}));
      return ins(InsnClass::kDoubleShift, def, undef, m, {d.op, src, R(ZYDIS_REGISTER_CL)},
                 d.prefixes);
    }
    return ins(InsnClass::kDoubleShift, def, undef, m, {d.op, src, I8(count)}, d.prefixes);
  }

  bool multiply() {
    constexpr uint32_t kDef = kCF | kOF, kUndef = kSF | kZF | kAF | kPF;
    switch (rng_.below(4)) {
      case 0: case 1: {  // mul/imul r/m: rDX:rAX = rAX * r/m
        int w = pick_width();
        RM s = rm(w, Region::kReadable);
        ZydisMnemonic m = rng_.chance(50) ? ZYDIS_MNEMONIC_MUL : ZYDIS_MNEMONIC_IMUL;
        return ins(InsnClass::kMulDiv, kDef, kUndef, m, {s.op}, s.prefixes);
      }
      case 2: {  // imul r, r/m
        int w = pick_width_no8();
        RM s = rm(w, Region::kReadable);
        return ins(InsnClass::kMulDiv, kDef, kUndef, ZYDIS_MNEMONIC_IMUL,
                   {R(gpr(w, pick_gpr())), s.op}, s.prefixes);
      }
      default: {  // imul r, r/m, imm
        int w = pick_width_no8();
        RM s = rm(w, Region::kReadable);
        int64_t imm = rng_.chance(50) ? sign_extend(interesting(), 8) : imm_for(w);
        return ins(InsnClass::kMulDiv, kDef, kUndef, ZYDIS_MNEMONIC_IMUL,
                   {R(gpr(w, pick_gpr())), s.op, I(imm)}, s.prefixes);
      }
    }
  }

  // DIV/IDIV. Without `fault`, the dividend's high half is set up so the quotient fits; with it,
  // the divisor is zero or the quotient overflows (#DE).
  bool divide(bool fault) {
    int w = pick_width();
    bool is_signed = rng_.chance(50);
    ZydisMnemonic m = is_signed ? ZYDIS_MNEMONIC_IDIV : ZYDIS_MNEMONIC_DIV;
    // Divisor: never in rAX/rDX (they hold the dividend).
    uint16_t avoid = bit(0) | bit(2);
    RM s;
    if (rng_.chance(40)) {
      Mem mm = mem(w / 8, pick_target(w / 8, 1, Region::kData), avoid);
      s.op = mm.op;
      s.prefixes = mm.prefixes;
      s.is_mem = true;
    } else {
      s.index = pick_gpr(avoid);
      // AH..BH cannot be the divisor of an 8-bit divide by AX here (AH is AX's high half).
      s.op = R(gpr(w, s.index));
    }
    int kind = fault ? static_cast<int>(rng_.below(3)) : -1;  // 0 zero, 1 overflow, 2 min/-1
    if (kind == 2 && !is_signed) kind = 1;
    uint64_t divisor;
    if (kind == 0) {
      divisor = 0;
    } else if (kind == 2 || (is_signed && kind < 0 && rng_.chance(10))) {
      divisor = truncate(~0ull, w);  // -1
    } else {
      do divisor = truncate(interesting(), w);
      while (divisor == 0);
    }
    if (s.is_mem) {
      int tmp = pick_gpr(avoid | mem_regs(s.op));
      set_gpr(tmp, divisor);
      must(ins(InsnClass::kSetup, 0, 0, ZYDIS_MNEMONIC_MOV, {s.op, R(gpr(w, tmp))}, s.prefixes));
    } else {
      set_gpr(s.index, divisor);
    }
    // The dividend's high half is AH for 8-bit divides, else rDX; the low half stays random.
    auto set_high = [&](uint64_t high) {
      if (w == 8)
        must(ins(InsnClass::kSetup, 0, 0, ZYDIS_MNEMONIC_MOV, {R(ZYDIS_REGISTER_AH), I8(high)}));
      else
        set_gpr(2, high);
    };
    if (kind == 1 && !is_signed) {  // high half >= divisor
      uint64_t high = truncate(divisor + rng_.below(4), w);
      set_high(high < divisor ? truncate(~0ull, w) : high);
    } else if (kind == 1) {  // 2^(2w-2) / anything of at most w-1 bits does not fit
      if (w == 8) {
        set_gpr(0, 0x4000);
      } else {
        set_gpr(0, 0);
        set_gpr(2, 1ull << (w - 2));
      }
    } else if (kind == 2) {  // most negative / -1
      set_gpr(0, 1ull << (w - 1));
      sign_extend_accumulator(w);
    } else if (is_signed) {
      // Dividing by -1 overflows for the most negative dividend only: keep it out here.
      if (divisor == truncate(~0ull, w)) set_gpr(0, interesting() & ~(1ull << (w - 1)));
      sign_extend_accumulator(w);
    } else if (kind < 0) {  // a high half below the divisor, often zero
      set_high(rng_.chance(50) ? 0 : rng_.below(divisor));
    }
    InsnClass cls = fault ? InsnClass::kFault : InsnClass::kMulDiv;
    return ins(cls, 0, kArithFlags, m, {s.op}, s.prefixes);
  }
  void sign_extend_accumulator(int w) {
    static const ZydisMnemonic kOps[] = {ZYDIS_MNEMONIC_CBW, ZYDIS_MNEMONIC_CWD,
                                         ZYDIS_MNEMONIC_CDQ, ZYDIS_MNEMONIC_CQO};
    must(ins(InsnClass::kSetup, 0, 0, kOps[std::countr_zero(static_cast<unsigned>(w)) - 3], {}));
  }
  static uint16_t mem_regs(const ZydisEncoderOperand& op) {
    uint16_t r = 0;
    for (ZydisRegister x : {op.mem.base, op.mem.index}) {
      for (int i = 0; i < 16; i++)
        if (x == kGpr64[i] || x == kGpr32[i]) r |= bit(i);
    }
    return r;
  }

  bool bit_test() {
    static const ZydisMnemonic kOps[] = {ZYDIS_MNEMONIC_BT, ZYDIS_MNEMONIC_BTS,
                                         ZYDIS_MNEMONIC_BTR, ZYDIS_MNEMONIC_BTC};
    ZydisMnemonic m = rng_.pick(kOps);
    // CF is the bit; OF SF AF PF are undefined; the SDM says ZF is unaffected, AMD's manual
    // leaves it undefined: treat it as undefined.
    constexpr uint32_t kDef = kCF, kUndef = kOF | kSF | kAF | kPF | kZF;
    int w = pick_width_no8();
    bool writes = m != ZYDIS_MNEMONIC_BT;
    switch (rng_.below(4)) {
      case 0:  // r, r (offset modulo width)
        return ins(InsnClass::kBitTest, kDef, kUndef, m,
                   {R(gpr(w, pick_gpr())), R(gpr(w, pick_gpr()))});
      case 1: {  // r/m, imm8 (offset modulo width, even for memory)
        RM d = rm(w, writes ? Region::kDataOrStack : Region::kReadable, 0, 50);
        ZydisInstructionAttributes lock =
            d.is_mem && writes && rng_.chance(25) ? ZYDIS_ATTRIB_HAS_LOCK : 0;
        return ins(InsnClass::kBitTest, kDef, kUndef, m,
                   {d.op, I(sign_extend(rng_.below(256), 8))}, d.prefixes | lock);
      }
      default: {  // m, r: a signed bit offset that can reach far outside the operand
        uint64_t base = kData + 0x800 + rng_.below(0x1000 - 8);
        int x = pick_gpr();
        Mem d = mem(w / 8, base, bit(x));
        int64_t offset = rng_.chance(30) ? rng_.range(-64, 64) : rng_.range(-15000, 15000);
        if (w == 16) offset = static_cast<int16_t>(offset);
        set_gpr(x, static_cast<uint64_t>(offset));
        ZydisInstructionAttributes lock = writes && rng_.chance(25) ? ZYDIS_ATTRIB_HAS_LOCK : 0;
        return ins(InsnClass::kBitTest, kDef, kUndef, m, {d.op, R(gpr(w, x))},
                   d.prefixes | lock);
      }
    }
  }

  bool bit_scan() {
    ZydisMnemonic m = rng_.chance(50) ? ZYDIS_MNEMONIC_BSF : ZYDIS_MNEMONIC_BSR;
    int w = pick_width_no8();
    bool zero = rng_.chance(30);
    RM s = rm(w, zero ? Region::kDataOrStack : Region::kReadable, 0, 40);
    if (zero) {  // zero source: ZF=1, destination unchanged
      if (s.is_mem)
        must(ins(InsnClass::kSetup, 0, 0, ZYDIS_MNEMONIC_MOV, {s.op, I(0)}, s.prefixes));
      else
        set_gpr(s.index, 0);
    }
    return ins(InsnClass::kBitScan, kZF, kCF | kOF | kSF | kAF | kPF, m,
               {R(gpr(w, pick_gpr())), s.op}, s.prefixes);
  }

  bool string_op() {
    struct Op {
      ZydisMnemonic m[4];  // b w d q
      bool compares;       // cmps/scas: repe/repne, defines flags
      bool src, dst;       // uses rSI / rDI
    };
    static const Op kOps[] = {
        {{ZYDIS_MNEMONIC_MOVSB, ZYDIS_MNEMONIC_MOVSW, ZYDIS_MNEMONIC_MOVSD, ZYDIS_MNEMONIC_MOVSQ},
         false, true, true},
        {{ZYDIS_MNEMONIC_STOSB, ZYDIS_MNEMONIC_STOSW, ZYDIS_MNEMONIC_STOSD, ZYDIS_MNEMONIC_STOSQ},
         false, false, true},
        {{ZYDIS_MNEMONIC_LODSB, ZYDIS_MNEMONIC_LODSW, ZYDIS_MNEMONIC_LODSD, ZYDIS_MNEMONIC_LODSQ},
         false, true, false},
        {{ZYDIS_MNEMONIC_CMPSB, ZYDIS_MNEMONIC_CMPSW, ZYDIS_MNEMONIC_CMPSD, ZYDIS_MNEMONIC_CMPSQ},
         true, true, true},
        {{ZYDIS_MNEMONIC_SCASB, ZYDIS_MNEMONIC_SCASW, ZYDIS_MNEMONIC_SCASD, ZYDIS_MNEMONIC_SCASQ},
         true, false, true},
    };
    const Op& op = rng_.pick(kOps);
    int size_index = static_cast<int>(rng_.below(4));
    int size = 1 << size_index;
    int prefix = static_cast<int>(rng_.below(op.compares ? 3 : 2));  // none, rep(e), repne
    uint64_t count = rng_.chance(10) ? 0 : rng_.chance(70) ? rng_.range(1, 16) : rng_.range(17, 80);
    bool down = rng_.chance(35);
    bool addr32 = rng_.chance(15);
    uint64_t n = prefix ? count : 1;
    uint64_t span = n ? n * size : size;
    auto start = [&](bool can_read_only) {
      uint64_t lo = kData, hi = kData + kDataSize;
      if (can_read_only && rng_.chance(15)) lo = kReadOnly, hi = kReadOnly + 0x1000;
      uint64_t first = lo + rng_.below(hi - lo - span + 1);
      if (rng_.chance(60)) first &= ~static_cast<uint64_t>(size - 1);
      return down ? first + span - size : first;
    };
    must(ins(InsnClass::kSetup, 0, 0, down ? ZYDIS_MNEMONIC_STD : ZYDIS_MNEMONIC_CLD, {}));
    // With a 32-bit address size the upper halves of rSI/rDI/rCX are ignored: fill them.
    uint64_t junk = addr32 ? rng_.next() << 32 : 0;
    if (op.src) set_gpr(6, junk | start(true));
    if (op.dst) set_gpr(7, junk | start(false));
    if (prefix) set_gpr(1, (addr32 ? rng_.next() << 32 : 0) | count);
    ZydisInstructionAttributes p = prefix == 0   ? 0
                                   : prefix == 1 ? (op.compares ? ZYDIS_ATTRIB_HAS_REPE
                                                                : ZYDIS_ATTRIB_HAS_REP)
                                                 : ZYDIS_ATTRIB_HAS_REPNE;
    std::vector<uint8_t> bytes;
    if (!encode(op.m[size_index], {}, p, bytes)) return false;
    if (addr32) bytes.insert(bytes.begin(), 0x67);
    // A repeat count of zero leaves the flags alone.
    uint32_t def = op.compares && n ? kArithFlags : 0;
    emit(bytes, InsnClass::kString, def, 0);
    return true;
  }

  bool cond_move() {
    int cc = static_cast<int>(rng_.below(16));
    need_flags(kCondReads[cc]);
    if (rng_.chance(50)) {
      int w = pick_width_no8();
      RM s = rm(w, Region::kReadable);
      return ins(InsnClass::kCondMove, 0, 0, kCmov[cc], {R(gpr(w, pick_gpr())), s.op},
                 s.prefixes);
    }
    RM d = rm(8, Region::kDataOrStack);
    return ins(InsnClass::kCondMove, 0, 0, kSetcc[cc], {d.op}, d.prefixes);
  }

  bool extend() {
    switch (rng_.below(4)) {
      case 0: case 1: {
        ZydisMnemonic m = rng_.chance(50) ? ZYDIS_MNEMONIC_MOVZX : ZYDIS_MNEMONIC_MOVSX;
        int sw = rng_.chance(50) ? 8 : 16;
        int dw = sw == 8 ? rng_.pick({16, 32, 64}) : rng_.pick({32, 64});
        RM s = rm(sw, Region::kReadable);
        return ins(InsnClass::kExtend, 0, 0, m, {R(reg(dw, pick_gpr(), false)), s.op},
                   s.prefixes);
      }
      case 2: {
        RM s = rm(32, Region::kReadable);
        return ins(InsnClass::kExtend, 0, 0, ZYDIS_MNEMONIC_MOVSXD, {R(gpr(64, pick_gpr())), s.op},
                   s.prefixes);
      }
      default: {
        static const ZydisMnemonic kOps[] = {ZYDIS_MNEMONIC_CBW, ZYDIS_MNEMONIC_CWDE,
                                             ZYDIS_MNEMONIC_CDQE, ZYDIS_MNEMONIC_CWD,
                                             ZYDIS_MNEMONIC_CDQ, ZYDIS_MNEMONIC_CQO};
        return ins(InsnClass::kExtend, 0, 0, rng_.pick(kOps), {});
      }
    }
  }

  bool exchange() {
    int w = pick_width();
    switch (rng_.below(4)) {
      case 0: {  // xchg r/m, r (memory forms are implicitly locked)
        RM d = rm(w, Region::kDataOrStack);
        return ins(InsnClass::kExchange, 0, 0, ZYDIS_MNEMONIC_XCHG, {d.op, R(reg(w, pick_gpr()))},
                   d.prefixes);
      }
      case 1: {  // the one-byte 90+r forms; 90 itself is NOP even for 32-bit (no zero-extension)
        if (w == 8) w = 32;
        int r = pick_gpr();
        std::vector<uint8_t> bytes;
        if (w == 16) bytes.push_back(0x66);
        uint8_t rex = (w == 64 ? 0x48 : 0) | (r >= 8 ? 0x41 : 0);
        if (rex) bytes.push_back(rex);
        bytes.push_back(static_cast<uint8_t>(0x90 + (r & 7)));
        emit(bytes, InsnClass::kExchange, 0, 0);
        return true;
      }
      case 2: {  // xadd r/m, r
        RM d = rm(w, Region::kDataOrStack);
        ZydisInstructionAttributes lock = d.is_mem && rng_.chance(40) ? ZYDIS_ATTRIB_HAS_LOCK : 0;
        return ins(InsnClass::kExchange, kArithFlags, 0, ZYDIS_MNEMONIC_XADD,
                   {d.op, R(reg(w, pick_gpr()))}, d.prefixes | lock);
      }
      default: {  // cmpxchg r/m, r; half the time the accumulator is made equal to r/m
        RM d = rm(w, Region::kDataOrStack, bit(0));
        if (rng_.chance(50))
          must(ins(InsnClass::kSetup, 0, 0, ZYDIS_MNEMONIC_MOV, {R(gpr(w, 0)), d.op},
                   d.prefixes));
        ZydisInstructionAttributes lock = d.is_mem && rng_.chance(40) ? ZYDIS_ATTRIB_HAS_LOCK : 0;
        return ins(InsnClass::kExchange, kArithFlags, 0, ZYDIS_MNEMONIC_CMPXCHG,
                   {d.op, R(reg(w, pick_gpr()))}, d.prefixes | lock);
      }
    }
  }

  bool misc() {
    switch (rng_.below(9)) {
      case 0: {
        int w = rng_.chance(50) ? 32 : 64;
        return ins(InsnClass::kMisc, 0, 0, ZYDIS_MNEMONIC_BSWAP, {R(gpr(w, pick_gpr()))});
      }
      case 1: case 2: {  // lea with every addressing form, on random register values
        int w = pick_width_no8();
        ZydisEncoderOperand m;
        std::memset(&m, 0, sizeof m);
        m.type = ZYDIS_OPERAND_TYPE_MEMORY;
        m.mem.size = static_cast<ZyanU16>(w / 8);
        int aw = rng_.chance(20) ? 32 : 64;
        if (rng_.chance(85)) m.mem.base = gpr(aw, static_cast<int>(rng_.below(16)));
        if (rng_.chance(50)) {
          m.mem.index = gpr(aw, pick_gpr());
          m.mem.scale = static_cast<ZyanU8>(1 << rng_.below(4));
        }
        m.mem.displacement = rng_.chance(30) ? 0 : sign_extend(interesting(), rng_.pick({8, 32}));
        if (m.mem.base == ZYDIS_REGISTER_NONE && m.mem.index == ZYDIS_REGISTER_NONE)
          m.mem.base = gpr(aw, pick_gpr());
        return ins(InsnClass::kMisc, 0, 0, ZYDIS_MNEMONIC_LEA, {R(gpr(w, pick_gpr())), m});
      }
      case 3:
        need_flags(kSF | kZF | kAF | kPF | kCF);
        return ins(InsnClass::kMisc, 0, 0, ZYDIS_MNEMONIC_LAHF, {});
      case 4:
        return ins(InsnClass::kMisc, kSF | kZF | kAF | kPF | kCF, 0, ZYDIS_MNEMONIC_SAHF, {});
      case 5: {
        static const ZydisMnemonic kOps[] = {ZYDIS_MNEMONIC_CLC, ZYDIS_MNEMONIC_STC,
                                             ZYDIS_MNEMONIC_CMC};
        ZydisMnemonic m = rng_.pick(kOps);
        if (m == ZYDIS_MNEMONIC_CMC) need_flags(kCF);
        return ins(InsnClass::kMisc, kCF, 0, m, {});
      }
      case 6: {  // mov r, imm (including movabs)
        int w = pick_width();
        int64_t v = w == 64 && rng_.chance(50) ? static_cast<int64_t>(interesting()) : imm_for(w);
        return ins(InsnClass::kMisc, 0, 0, ZYDIS_MNEMONIC_MOV, {R(reg(w, pick_gpr())), I(v)});
      }
      default: {  // mov between register and memory
        int w = pick_width();
        if (rng_.chance(50)) {
          RM s = rm(w, Region::kReadable, 0, 60);
          return ins(InsnClass::kMisc, 0, 0, ZYDIS_MNEMONIC_MOV, {R(reg(w, pick_gpr())), s.op},
                     s.prefixes);
        }
        RM d = rm(w, Region::kDataOrStack, 0, 80);
        if (rng_.chance(30))
          return ins(InsnClass::kMisc, 0, 0, ZYDIS_MNEMONIC_MOV, {d.op, I(imm_for(w))},
                     d.prefixes);
        return ins(InsnClass::kMisc, 0, 0, ZYDIS_MNEMONIC_MOV, {d.op, R(reg(w, pick_gpr()))},
                   d.prefixes);
      }
    }
  }

  bool stack_op() {
    // Keep RSP inside the stack page, with room for the accesses below.
    bool can_push = rsp_ >= kStack + 0x100, can_pop = rsp_ + 0x100 <= kStack + kStackSize;
    bool push = can_push && (!can_pop || rng_.chance(55));
    switch (rng_.below(5)) {
      case 0: case 1: {  // push/pop r64 or r16
        int w = rng_.chance(80) ? 64 : 16;
        int r = pick_gpr();
        if (push) {
          // push rsp pushes the value before the decrement
          ZydisRegister src = rng_.chance(5) ? gpr(w, kRsp) : gpr(w, r);
          if (!ins(InsnClass::kStack, 0, 0, ZYDIS_MNEMONIC_PUSH, {R(src)})) return false;
          rsp_ -= w / 8;
        } else {
          if (!ins(InsnClass::kStack, 0, 0, ZYDIS_MNEMONIC_POP, {R(gpr(w, r))})) return false;
          rsp_ += w / 8;
        }
        return true;
      }
      case 2: {  // push imm / push m64 / pop m64
        if (push && rng_.chance(50)) {
          if (!ins(InsnClass::kStack, 0, 0, ZYDIS_MNEMONIC_PUSH, {I(imm_for(32))})) return false;
          rsp_ -= 8;
          return true;
        }
        // The address of pop's memory operand is computed after RSP moves: no RSP base there.
        Mem m = mem(8, pick_target(8, 1, push ? Region::kReadable : Region::kData), 0, push);
        if (!ins(InsnClass::kStack, 0, 0, push ? ZYDIS_MNEMONIC_PUSH : ZYDIS_MNEMONIC_POP, {m.op},
                 m.prefixes))
          return false;
        rsp_ += push ? -8 : 8;
        return true;
      }
      case 3: {  // pushfq: reads every flag
        if (!push) return false;
        need_flags(kArithFlags);
        if (!ins(InsnClass::kStack, 0, 0, ZYDIS_MNEMONIC_PUSHFQ, {})) return false;
        rsp_ -= 8;
        return true;
      }
      default: {  // push imm; popfq: arithmetic flags, DF and ID from a known value
        if (!can_push) return false;
        uint64_t value = (rng_.next() & (kArithFlags | (1u << 10) | (1u << 21))) | 0x202;
        must(ins(InsnClass::kSetup, 0, 0, ZYDIS_MNEMONIC_PUSH, {I(static_cast<int64_t>(value))}));
        return ins(InsnClass::kStack, kArithFlags, 0, ZYDIS_MNEMONIC_POPFQ, {});
      }
    }
  }

  // SSE2: `fp` selects floating-point arithmetic, compares and conversions (which round by
  // MXCSR.RC and raise MXCSR exception flags); otherwise moves, integer, logic and shuffles.
  bool sse(bool fp) {
    enum Kind { kPacked, kPackedU, kScalar64, kScalar32, kShiftImm, kShuffle };
    struct Op {
      ZydisMnemonic m;
      Kind kind;
      bool fp = false;
    };
    static const Op kOps[] = {
        {ZYDIS_MNEMONIC_PADDB, kPacked},     {ZYDIS_MNEMONIC_PADDW, kPacked},
        {ZYDIS_MNEMONIC_PADDD, kPacked},     {ZYDIS_MNEMONIC_PADDQ, kPacked},
        {ZYDIS_MNEMONIC_PSUBB, kPacked},     {ZYDIS_MNEMONIC_PSUBW, kPacked},
        {ZYDIS_MNEMONIC_PSUBD, kPacked},     {ZYDIS_MNEMONIC_PSUBQ, kPacked},
        {ZYDIS_MNEMONIC_PADDSB, kPacked},    {ZYDIS_MNEMONIC_PADDUSW, kPacked},
        {ZYDIS_MNEMONIC_PSUBSW, kPacked},    {ZYDIS_MNEMONIC_PSUBUSB, kPacked},
        {ZYDIS_MNEMONIC_PCMPEQB, kPacked},   {ZYDIS_MNEMONIC_PCMPEQW, kPacked},
        {ZYDIS_MNEMONIC_PCMPEQD, kPacked},   {ZYDIS_MNEMONIC_PCMPGTB, kPacked},
        {ZYDIS_MNEMONIC_PCMPGTD, kPacked},   {ZYDIS_MNEMONIC_PAND, kPacked},
        {ZYDIS_MNEMONIC_PANDN, kPacked},     {ZYDIS_MNEMONIC_POR, kPacked},
        {ZYDIS_MNEMONIC_PXOR, kPacked},      {ZYDIS_MNEMONIC_PMULLW, kPacked},
        {ZYDIS_MNEMONIC_PMULHW, kPacked},    {ZYDIS_MNEMONIC_PMULUDQ, kPacked},
        {ZYDIS_MNEMONIC_PMADDWD, kPacked},   {ZYDIS_MNEMONIC_PSADBW, kPacked},
        {ZYDIS_MNEMONIC_PAVGB, kPacked},     {ZYDIS_MNEMONIC_PMINUB, kPacked},
        {ZYDIS_MNEMONIC_PMAXSW, kPacked},    {ZYDIS_MNEMONIC_PUNPCKLBW, kPacked},
        {ZYDIS_MNEMONIC_PUNPCKLWD, kPacked}, {ZYDIS_MNEMONIC_PUNPCKLDQ, kPacked},
        {ZYDIS_MNEMONIC_PUNPCKLQDQ, kPacked}, {ZYDIS_MNEMONIC_PUNPCKHBW, kPacked},
        {ZYDIS_MNEMONIC_PUNPCKHWD, kPacked}, {ZYDIS_MNEMONIC_PUNPCKHDQ, kPacked},
        {ZYDIS_MNEMONIC_PUNPCKHQDQ, kPacked}, {ZYDIS_MNEMONIC_PACKSSWB, kPacked},
        {ZYDIS_MNEMONIC_PACKUSWB, kPacked},  {ZYDIS_MNEMONIC_PACKSSDW, kPacked},
        {ZYDIS_MNEMONIC_PSLLW, kPacked},     {ZYDIS_MNEMONIC_PSLLQ, kPacked},
        {ZYDIS_MNEMONIC_PSRLD, kPacked},     {ZYDIS_MNEMONIC_PSRLQ, kPacked},
        {ZYDIS_MNEMONIC_PSRAW, kPacked},     {ZYDIS_MNEMONIC_PSRAD, kPacked},
        {ZYDIS_MNEMONIC_MOVDQA, kPacked},    {ZYDIS_MNEMONIC_MOVDQU, kPackedU},
        {ZYDIS_MNEMONIC_MOVUPS, kPackedU},   {ZYDIS_MNEMONIC_MOVAPD, kPacked},
        {ZYDIS_MNEMONIC_ADDPD, kPacked, true},     {ZYDIS_MNEMONIC_SUBPD, kPacked, true},
        {ZYDIS_MNEMONIC_MULPD, kPacked, true},     {ZYDIS_MNEMONIC_DIVPD, kPacked, true},
        {ZYDIS_MNEMONIC_MINPD, kPacked, true},     {ZYDIS_MNEMONIC_MAXPD, kPacked, true},
        {ZYDIS_MNEMONIC_SQRTPD, kPacked, true},    {ZYDIS_MNEMONIC_ANDPD, kPacked},
        {ZYDIS_MNEMONIC_XORPD, kPacked},     {ZYDIS_MNEMONIC_UNPCKLPD, kPacked},
        {ZYDIS_MNEMONIC_CVTTPD2DQ, kPacked, true}, {ZYDIS_MNEMONIC_CVTDQ2PS, kPacked, true},
        {ZYDIS_MNEMONIC_ADDSD, kScalar64, true},   {ZYDIS_MNEMONIC_SUBSD, kScalar64, true},
        {ZYDIS_MNEMONIC_MULSD, kScalar64, true},   {ZYDIS_MNEMONIC_DIVSD, kScalar64, true},
        {ZYDIS_MNEMONIC_MINSD, kScalar64, true},   {ZYDIS_MNEMONIC_MAXSD, kScalar64, true},
        {ZYDIS_MNEMONIC_SQRTSD, kScalar64, true},  {ZYDIS_MNEMONIC_CVTSD2SS, kScalar64, true},
        {ZYDIS_MNEMONIC_MOVSD, kScalar64},   {ZYDIS_MNEMONIC_CVTSS2SD, kScalar32, true},
        {ZYDIS_MNEMONIC_ADDSS, kScalar32, true},   {ZYDIS_MNEMONIC_PSLLW, kShiftImm},
        {ZYDIS_MNEMONIC_PSLLD, kShiftImm},   {ZYDIS_MNEMONIC_PSLLQ, kShiftImm},
        {ZYDIS_MNEMONIC_PSRLW, kShiftImm},   {ZYDIS_MNEMONIC_PSRLD, kShiftImm},
        {ZYDIS_MNEMONIC_PSRLQ, kShiftImm},   {ZYDIS_MNEMONIC_PSRAW, kShiftImm},
        {ZYDIS_MNEMONIC_PSRAD, kShiftImm},   {ZYDIS_MNEMONIC_PSLLDQ, kShiftImm},
        {ZYDIS_MNEMONIC_PSRLDQ, kShiftImm},  {ZYDIS_MNEMONIC_PSHUFD, kShuffle},
        {ZYDIS_MNEMONIC_PSHUFLW, kShuffle},  {ZYDIS_MNEMONIC_PSHUFHW, kShuffle},
        {ZYDIS_MNEMONIC_SHUFPD, kShuffle},
    };
    ZydisRegister dst = xmm(static_cast<int>(rng_.below(16)));
    ZydisRegister src = xmm(static_cast<int>(rng_.below(16)));
    InsnClass cls = fp ? InsnClass::kSseFp : InsnClass::kSse;
    int form = static_cast<int>(rng_.below(4));
    if (form < 2) form += fp ? 2 : 0;  // 0,1 integer moves; 2,3 fp conversions and compares
    else form = 4;
    switch (form) {
      case 0: {  // movq/movd between XMM and GPR or memory
        bool q = rng_.chance(50);
        int w = q ? 64 : 32;
        ZydisMnemonic m = q ? ZYDIS_MNEMONIC_MOVQ : ZYDIS_MNEMONIC_MOVD;
        switch (rng_.below(4)) {
          case 0: return ins(cls, 0, 0, m, {R(dst), R(gpr(w, pick_gpr()))});
          case 1: return ins(cls, 0, 0, m, {R(gpr(w, pick_gpr())), R(src)});
          case 2: {
            Mem mm = mem(w / 8, pick_target(w / 8, 1, Region::kReadable));
            return ins(cls, 0, 0, m, {R(dst), mm.op}, mm.prefixes);
          }
          default: {
            Mem mm = mem(w / 8, pick_target(w / 8, 1, Region::kDataOrStack));
            return ins(cls, 0, 0, m, {mm.op, R(src)}, mm.prefixes);
          }
        }
      }
      case 1: {  // stores and xmm-to-xmm movq
        switch (rng_.below(4)) {
          case 0: return ins(cls, 0, 0, ZYDIS_MNEMONIC_MOVQ, {R(dst), R(src)});
          case 1: {
            bool aligned = rng_.chance(50);
            Mem mm = mem(16, pick_target(16, aligned ? 16 : 1, Region::kDataOrStack));
            return ins(cls, 0, 0,
                       aligned ? ZYDIS_MNEMONIC_MOVDQA : ZYDIS_MNEMONIC_MOVDQU, {mm.op, R(src)},
                       mm.prefixes);
          }
          case 2: {
            Mem mm = mem(8, pick_target(8, 1, Region::kDataOrStack));
            return ins(cls, 0, 0, ZYDIS_MNEMONIC_MOVSD, {mm.op, R(src)}, mm.prefixes);
          }
          default:
            return ins(cls, 0, 0, ZYDIS_MNEMONIC_PMOVMSKB,
                       {R(gpr(rng_.chance(50) ? 32 : 64, pick_gpr())), R(src)});
        }
      }
      case 2: {  // conversions between GPR and double
        int w = rng_.chance(50) ? 32 : 64;
        if (rng_.chance(50)) {
          RM s = rm(w, Region::kReadable);
          return ins(cls, 0, 0, ZYDIS_MNEMONIC_CVTSI2SD, {R(dst), s.op}, s.prefixes);
        }
        ZydisMnemonic m = rng_.chance(60) ? ZYDIS_MNEMONIC_CVTTSD2SI : ZYDIS_MNEMONIC_CVTSD2SI;
        if (rng_.chance(40)) {
          Mem mm = mem(8, pick_target(8, 1, Region::kReadable));
          return ins(cls, 0, 0, m, {R(gpr(w, pick_gpr())), mm.op}, mm.prefixes);
        }
        return ins(cls, 0, 0, m, {R(gpr(w, pick_gpr())), R(src)});
      }
      case 3: {  // ucomisd/comisd: ZF PF CF from the compare, OF SF AF cleared
        ZydisMnemonic m = rng_.chance(50) ? ZYDIS_MNEMONIC_UCOMISD : ZYDIS_MNEMONIC_COMISD;
        if (rng_.chance(35)) {
          Mem mm = mem(8, pick_target(8, 1, Region::kReadable));
          return ins(cls, kArithFlags, 0, m, {R(dst), mm.op}, mm.prefixes);
        }
        return ins(cls, kArithFlags, 0, m, {R(dst), R(src)});
      }
      default: {
        const Op* pick;
        do pick = &rng_.pick(kOps);
        while (pick->fp != fp);
        const Op& op = *pick;
        bool use_mem = op.kind != kShiftImm && rng_.chance(35);
        ZydisEncoderOperand s = R(src);
        ZydisInstructionAttributes prefixes = 0;
        if (use_mem) {
          int size = op.kind == kScalar64 ? 8 : op.kind == kScalar32 ? 4 : 16;
          int align = op.kind == kPacked || op.kind == kShuffle ? 16 : 1;
          Mem mm = mem(size, pick_target(size, align, Region::kReadable));
          s = mm.op;
          prefixes = mm.prefixes;
        }
        if (op.kind == kShiftImm)
          return ins(cls, 0, 0, op.m, {R(dst), I8(pick_count(rng_.pick({16, 32, 64})))});
        if (op.kind == kShuffle)
          return ins(cls, 0, 0, op.m, {R(dst), s, I(sign_extend(rng_.below(256), 8))},
                     prefixes);
        return ins(cls, 0, 0, op.m, {R(dst), s}, prefixes);
      }
    }
  }

  // ---- the final, faulting instruction ------------------------------------------------------

  bool fault_item() {
    switch (rng_.below(7)) {
      case 0: return divide(true);  // #DE
      case 1: {  // #UD
        static const std::vector<uint8_t> kUd[] = {
            {0x0f, 0x0b},        // ud2
            {0xf0, 0x01, 0xd8},  // lock add eax, ebx (LOCK on a register operand)
            {0x06},              // push es: invalid in 64-bit mode
            {0xf0, 0x90},        // lock nop
        };
        emit(rng_.pick(kUd), InsnClass::kFault, 0, 0);
        return true;
      }
      case 2: {  // #GP(0) from privileged instructions at CPL3
        // Not INT n / INT3 through a DPL0 gate (architecturally #GP(n*8+2)): kvm_pvm delivers
        // #UD for INT n and #BP for INT3 instead, so KVM cannot be the oracle for them.
        static const std::vector<uint8_t> kGp[] = {
            {0xf4},                          // hlt
            {0x0f, 0x20, 0xc0},              // mov rax, cr0
            {0x0f, 0x30},                    // wrmsr
            {0x0f, 0x01, 0x15, 0, 0, 0, 0},  // lgdt [rip]
            {0xfa},                          // cli (IOPL 0)
        };
        emit(rng_.pick(kGp), InsnClass::kFault, 0, 0);
        return true;
      }
      case 3: {  // #GP(0): misaligned movdqa, or a non-canonical address
        if (rng_.chance(50)) {
          Mem mm = mem(16, pick_target(16, 1, Region::kData) | 1);
          return ins(InsnClass::kFault, 0, 0, ZYDIS_MNEMONIC_MOVDQA,
                     {R(xmm(static_cast<int>(rng_.below(16)))), mm.op}, mm.prefixes);
        }
        int b = pick_gpr(bit(5));
        set_gpr(b, 0x8000000000000000ull | rng_.below(1ull << 40));
        ZydisEncoderOperand m;
        std::memset(&m, 0, sizeof m);
        m.type = ZYDIS_OPERAND_TYPE_MEMORY;
        m.mem.base = gpr(64, b);
        m.mem.size = 8;
        return ins(InsnClass::kFault, 0, 0, ZYDIS_MNEMONIC_MOV, {R(gpr(64, pick_gpr())), m});
      }
      case 4: {  // #SS(0): non-canonical address through RBP
        set_gpr(5, 0x0000800000000000ull | rng_.below(1ull << 40));
        ZydisEncoderOperand m;
        std::memset(&m, 0, sizeof m);
        m.type = ZYDIS_OPERAND_TYPE_MEMORY;
        m.mem.base = ZYDIS_REGISTER_RBP;
        m.mem.size = 4;
        return ins(InsnClass::kFault, 0, 0, ZYDIS_MNEMONIC_MOV, {R(gpr(32, pick_gpr(bit(5)))), m});
      }
      case 5: {  // #PF from data accesses
        int w = pick_width();
        int size = w / 8;
        uint64_t target;
        bool write = rng_.chance(50);
        switch (rng_.below(4)) {
          case 0: target = kUnmapped + rng_.below(0x1000 - size); break;
          case 1: target = kGdt + rng_.below(0x100); break;  // supervisor page
          case 2:  // straddles the data page and the read-only page: nothing may be written
            target = size == 1 ? kReadOnly : kReadOnly - 1 - rng_.below(size - 1);
            write = true;
            break;
          default: target = kReadOnly + rng_.below(0x1000 - size); write = true; break;
        }
        Mem mm = mem(size, target, 0, false);
        if (write)
          return ins(InsnClass::kFault, 0, 0, ZYDIS_MNEMONIC_MOV, {mm.op, R(reg(w, pick_gpr()))},
                     mm.prefixes);
        return ins(InsnClass::kFault, 0, 0, ZYDIS_MNEMONIC_MOV, {R(reg(w, pick_gpr())), mm.op},
                   mm.prefixes);
      }
      default: {
        if (rng_.chance(40)) {  // #PF on instruction fetch: NX data page or absent page
          int r = pick_gpr();
          set_gpr(r, rng_.chance(50) ? kData + rng_.below(0x1000) : kUnmapped + rng_.below(0x1000));
          return ins(InsnClass::kFault, 0, 0, ZYDIS_MNEMONIC_JMP, {R(gpr(64, r))});
        }
        // A REP string store that runs into the read-only page: the iterations before the fault
        // complete and RCX/RDI show the progress.
        int size_index = static_cast<int>(rng_.below(4));
        int size = 1 << size_index;
        uint64_t count = rng_.range(2, 40);
        uint64_t before = rng_.range(1, static_cast<int64_t>(count) - 1) * size;
        must(ins(InsnClass::kSetup, 0, 0, ZYDIS_MNEMONIC_CLD, {}));
        set_gpr(7, kReadOnly - before);
        set_gpr(1, count);
        static const ZydisMnemonic kStos[] = {ZYDIS_MNEMONIC_STOSB, ZYDIS_MNEMONIC_STOSW,
                                              ZYDIS_MNEMONIC_STOSD, ZYDIS_MNEMONIC_STOSQ};
        static const ZydisMnemonic kMovs[] = {ZYDIS_MNEMONIC_MOVSB, ZYDIS_MNEMONIC_MOVSW,
                                              ZYDIS_MNEMONIC_MOVSD, ZYDIS_MNEMONIC_MOVSQ};
        bool movs = rng_.chance(50);
        if (movs) set_gpr(6, kData + rng_.below(0x800));
        return ins(InsnClass::kFault, 0, 0, movs ? kMovs[size_index] : kStos[size_index], {},
                   ZYDIS_ATTRIB_HAS_REP);
      }
    }
  }

  // ---- initial state ------------------------------------------------------------------------

  void init_state() {
    for (int i = 0; i < 16; i++) program_.gpr[i] = interesting();
    program_.gpr[kRsp] = kInitialRsp;
    // Arithmetic flags and DF random; IOPL=0 (the TSS I/O bitmap allows the stop ports). IF=1:
    // kvm_pvm runs CPL3 with the host's IF=1 whatever the guest's, so PUSHFQ shows IF=1 there.
    // No interrupt source is programmed in the sandbox.
    program_.rflags = 0x2 | (1u << 9) | (rng_.next() & (kArithFlags | (1u << 10)));
    for (auto& x : program_.xmm) {
      for (int half = 0; half < 2; half++) {
        uint64_t v = interesting_fp();
        std::memcpy(x.data() + 8 * half, &v, 8);
      }
    }
    // All exceptions masked; random rounding mode, FTZ, DAZ and sticky flags.
    program_.mxcsr = 0x1f80 | (rng_.next() & (0x3f | (3u << 13) | (1u << 15) | (1u << 6)));
    auto fill = [&](std::vector<uint8_t>& bytes, size_t n) {
      bytes.resize(n);
      for (size_t i = 0; i < n; i += 8) {
        uint64_t v = rng_.chance(20) ? interesting_fp() : interesting();
        std::memcpy(bytes.data() + i, &v, std::min<size_t>(8, n - i));
      }
    };
    fill(program_.data, kDataSize);
    fill(program_.rodata, 0x1000);
    fill(program_.stack, kStackSize);
  }

  uint64_t interesting_fp() {
    static const uint64_t kDoubles[] = {
        0x0000000000000000ull, 0x8000000000000000ull, 0x3ff0000000000000ull,  // 0 -0 1
        0xbff8000000000000ull, 0x7ff0000000000000ull, 0xfff0000000000000ull,  // -1.5 inf -inf
        0x7ff8000000000000ull, 0x7ff4000000000000ull, 0xfff8000000000001ull,  // qnan snan -qnan
        0x0000000000000001ull, 0x000fffffffffffffull, 0x7fefffffffffffffull,  // denormals, max
        0x43e0000000000000ull, 0xc3e0000000000000ull, 0x41dfffffffc00000ull,  // 2^63 -2^63 2^31-1
        0x4059000000000000ull, 0x3fe0000000000000ull, 0x4340000000000001ull,  // 100 0.5 2^53+2
        0x7f8000003f800000ull, 0x00000001ff800000ull,                         // float patterns
    };
    switch (rng_.below(4)) {
      case 0: case 1: return rng_.pick(kDoubles);
      case 2: {  // a double of moderate magnitude with random mantissa
        uint64_t exp = static_cast<uint64_t>(rng_.range(0x3f0, 0x440));
        return (rng_.next() & 0x800fffffffffffffull) | (exp << 52);
      }
      default: return rng_.next();
    }
  }

  Rng rng_;
  GenOptions options_;
  Program program_;
  uint64_t pc_ = kCode;
  uint64_t rsp_ = kInitialRsp;
  uint32_t undef_ = 0;
  size_t items_ = 0;
  ZydisMnemonic last_mnemonic_ = ZYDIS_MNEMONIC_INVALID;
};

}  // namespace

Program generate(uint64_t seed, const GenOptions& options) {
  for (uint64_t attempt = 0;; attempt++) {
    try {
      Program p = Generator(seed + (attempt << 56), options).run();
      p.seed = seed;
      return p;
    } catch (const std::length_error&) {
      // Too long for the code area: draw again from a derived stream (still deterministic).
    }
  }
}

}  // namespace keel::difftest
