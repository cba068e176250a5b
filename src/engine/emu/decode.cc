#include "engine/emu/decode.h"

#include "engine/emu/cpu.h"

namespace keel::emu {

namespace {

// GPR index for a Zydis general-purpose register of any width (AH..BH -> kHigh8 + n).
int gpr_index(ZydisRegister reg) {
  switch (ZydisRegisterGetClass(reg)) {
    case ZYDIS_REGCLASS_GPR8: {
      int id = ZydisRegisterGetId(reg);
      if (id < 4) return id;
      if (id < 8) return kHigh8 + id - 4;
      return id - 4;
    }
    case ZYDIS_REGCLASS_GPR16:
    case ZYDIS_REGCLASS_GPR32:
    case ZYDIS_REGCLASS_GPR64:
      return ZydisRegisterGetId(reg);
    default:
      return -1;
  }
}

uint8_t seg_index(ZydisRegister reg) {
  switch (reg) {
    case ZYDIS_REGISTER_ES: return kES;
    case ZYDIS_REGISTER_CS: return kCS;
    case ZYDIS_REGISTER_SS: return kSS;
    case ZYDIS_REGISTER_DS: return kDS;
    case ZYDIS_REGISTER_FS: return kFS;
    case ZYDIS_REGISTER_GS: return kGS;
    default: return kDS;
  }
}

// Register operand -> slot number in its class (GPR index, XMM n, segment n, CRn, DRn, STn).
int reg_slot(ZydisRegister reg) {
  switch (ZydisRegisterGetClass(reg)) {
    case ZYDIS_REGCLASS_GPR8:
    case ZYDIS_REGCLASS_GPR16:
    case ZYDIS_REGCLASS_GPR32:
    case ZYDIS_REGCLASS_GPR64:
      return gpr_index(reg);
    case ZYDIS_REGCLASS_SEGMENT:
      return seg_index(reg);
    case ZYDIS_REGCLASS_XMM:
    case ZYDIS_REGCLASS_MMX:
    case ZYDIS_REGCLASS_X87:
    case ZYDIS_REGCLASS_CONTROL:
    case ZYDIS_REGCLASS_DEBUG:
      return ZydisRegisterGetId(reg);
    default:
      return -1;
  }
}

bool is_terminator(ZydisMnemonic m) {
  switch (m) {
    case ZYDIS_MNEMONIC_JMP: case ZYDIS_MNEMONIC_CALL: case ZYDIS_MNEMONIC_RET:
    case ZYDIS_MNEMONIC_JB: case ZYDIS_MNEMONIC_JBE: case ZYDIS_MNEMONIC_JCXZ:
    case ZYDIS_MNEMONIC_JECXZ: case ZYDIS_MNEMONIC_JL: case ZYDIS_MNEMONIC_JLE:
    case ZYDIS_MNEMONIC_JNB: case ZYDIS_MNEMONIC_JNBE: case ZYDIS_MNEMONIC_JNL:
    case ZYDIS_MNEMONIC_JNLE: case ZYDIS_MNEMONIC_JNO: case ZYDIS_MNEMONIC_JNP:
    case ZYDIS_MNEMONIC_JNS: case ZYDIS_MNEMONIC_JNZ: case ZYDIS_MNEMONIC_JO:
    case ZYDIS_MNEMONIC_JP: case ZYDIS_MNEMONIC_JRCXZ: case ZYDIS_MNEMONIC_JS:
    case ZYDIS_MNEMONIC_JZ: case ZYDIS_MNEMONIC_LOOP: case ZYDIS_MNEMONIC_LOOPE:
    case ZYDIS_MNEMONIC_LOOPNE: case ZYDIS_MNEMONIC_IRET: case ZYDIS_MNEMONIC_IRETD:
    case ZYDIS_MNEMONIC_IRETQ: case ZYDIS_MNEMONIC_SYSCALL: case ZYDIS_MNEMONIC_SYSRET:
    case ZYDIS_MNEMONIC_SYSENTER: case ZYDIS_MNEMONIC_SYSEXIT: case ZYDIS_MNEMONIC_INT:
    case ZYDIS_MNEMONIC_INT1: case ZYDIS_MNEMONIC_INT3: case ZYDIS_MNEMONIC_INTO:
    case ZYDIS_MNEMONIC_UD0: case ZYDIS_MNEMONIC_UD1: case ZYDIS_MNEMONIC_UD2:
    case ZYDIS_MNEMONIC_HLT:
    case ZYDIS_MNEMONIC_WRMSR: case ZYDIS_MNEMONIC_STI: case ZYDIS_MNEMONIC_POPF:
    case ZYDIS_MNEMONIC_POPFD: case ZYDIS_MNEMONIC_POPFQ: case ZYDIS_MNEMONIC_LMSW:
    case ZYDIS_MNEMONIC_CLTS: case ZYDIS_MNEMONIC_INVLPG: case ZYDIS_MNEMONIC_LGDT:
    case ZYDIS_MNEMONIC_LIDT: case ZYDIS_MNEMONIC_LTR: case ZYDIS_MNEMONIC_LLDT:
    case ZYDIS_MNEMONIC_RSM: case ZYDIS_MNEMONIC_XSETBV: case ZYDIS_MNEMONIC_INVPCID:
    case ZYDIS_MNEMONIC_CPUID:  // serializing; ends the block so kicks are seen in CPUID loops
      return true;
    default:
      return false;
  }
}

// Zydis's RFLAGS bit mask -> the compact kFl* mask.
uint8_t compact_flags(ZydisAccessedFlagsMask m) {
  uint8_t f = 0;
  if (m & ZYDIS_CPUFLAG_CF) f |= kFlCF;
  if (m & ZYDIS_CPUFLAG_PF) f |= kFlPF;
  if (m & ZYDIS_CPUFLAG_AF) f |= kFlAF;
  if (m & ZYDIS_CPUFLAG_ZF) f |= kFlZF;
  if (m & ZYDIS_CPUFLAG_SF) f |= kFlSF;
  if (m & ZYDIS_CPUFLAG_OF) f |= kFlOF;
  return f;
}

}  // namespace

Decoder::Decoder() {
  static const ZydisMachineMode modes[3] = {ZYDIS_MACHINE_MODE_LONG_64,
                                            ZYDIS_MACHINE_MODE_LONG_COMPAT_32,
                                            ZYDIS_MACHINE_MODE_LONG_COMPAT_16};
  static const ZydisStackWidth widths[3] = {ZYDIS_STACK_WIDTH_64, ZYDIS_STACK_WIDTH_32,
                                            ZYDIS_STACK_WIDTH_16};
  for (int i = 0; i < 3; ++i) {
    ZydisDecoderInit(&dec_[i], modes[i], widths[i]);
    // We do not advertise BMI1/LZCNT: `rep bsf`/`rep bsr` must execute as BSF/BSR. Nor CET:
    // endbr64/rdssp are NOPs.
    ZydisDecoderEnableMode(&dec_[i], ZYDIS_DECODER_MODE_TZCNT, ZYAN_FALSE);
    ZydisDecoderEnableMode(&dec_[i], ZYDIS_DECODER_MODE_LZCNT, ZYAN_FALSE);
    ZydisDecoderEnableMode(&dec_[i], ZYDIS_DECODER_MODE_CET, ZYAN_FALSE);
  }
}

bool Decoder::decode(uint8_t mode, const uint8_t* bytes, unsigned avail, Insn& in,
                     bool* ends_block, bool* need_more) {
  ZydisDecodedInstruction zi;
  ZydisDecodedOperand ops[ZYDIS_MAX_OPERAND_COUNT];
  *need_more = false;
  in = Insn{};
  ZyanStatus st = ZydisDecoderDecodeFull(&dec_[mode], bytes, avail, &zi, ops);
  if (st == ZYDIS_STATUS_NO_MORE_DATA) {
    *need_more = avail < ZYDIS_MAX_INSTRUCTION_LENGTH;
    if (*need_more) return false;
  }
  if (!ZYAN_SUCCESS(st)) {
    // Undecodable bytes: #UD with a one-byte length (RIP stays at the instruction).
    in.fn = op_ud;
    in.len = 1;
    *ends_block = true;
    return true;
  }

  in.len = zi.length;
  if (const ZydisAccessedFlags* fl = zi.cpu_flags) {
    in.fl_read = compact_flags(fl->tested);
    in.fl_write = compact_flags(fl->modified | fl->set_0 | fl->set_1 | fl->undefined);
  }
  in.mnem = static_cast<uint16_t>(zi.mnemonic);
  in.osz = static_cast<uint8_t>(zi.operand_width / 8);
  in.asz = static_cast<uint8_t>(zi.address_width / 8);
  if (zi.attributes & ZYDIS_ATTRIB_HAS_LOCK) in.prefix |= kPfxLock;
  if (zi.attributes & ZYDIS_ATTRIB_HAS_REPNE) in.prefix |= kPfxRepne;
  if (zi.attributes & (ZYDIS_ATTRIB_HAS_REP | ZYDIS_ATTRIB_HAS_REPE)) in.prefix |= kPfxRep;
  // The segment override matters for string instructions' source too.
  uint8_t seg = kDS;
  if (zi.attributes & ZYDIS_ATTRIB_HAS_SEGMENT_FS) seg = kFS;
  else if (zi.attributes & ZYDIS_ATTRIB_HAS_SEGMENT_GS) seg = kGS;
  else if (zi.attributes & ZYDIS_ATTRIB_HAS_SEGMENT_ES) seg = kES;
  else if (zi.attributes & ZYDIS_ATTRIB_HAS_SEGMENT_CS) seg = kCS;
  else if (zi.attributes & ZYDIS_ATTRIB_HAS_SEGMENT_SS) seg = kSS;
  in.seg = seg;

  bool bad = false;
  int slot = 0;
  bool imm_seen = false;
  for (int i = 0; i < zi.operand_count_visible && slot < 3; ++i) {
    const ZydisDecodedOperand& op = ops[i];
    switch (op.type) {
      case ZYDIS_OPERAND_TYPE_REGISTER: {
        int s = reg_slot(op.reg.value);
        if (s < 0) {
          // Implicit/flags registers are handled by the handler itself.
          continue;
        }
        in.kind[slot] = kOpReg;
        in.reg[slot] = static_cast<uint8_t>(s);
        if (ZydisRegisterGetClass(op.reg.value) == ZYDIS_REGCLASS_XMM)
          in.xmm_ops |= uint8_t(1u << slot);
        if (slot == 1) in.opsz2 = static_cast<uint8_t>(op.size / 8);
        ++slot;
        break;
      }
      case ZYDIS_OPERAND_TYPE_MEMORY: {
        in.kind[slot] = kOpMem;
        if (slot == 1) in.opsz2 = static_cast<uint8_t>(op.size / 8);
        const auto& m = op.mem;
        if (m.base == ZYDIS_REGISTER_RIP || m.base == ZYDIS_REGISTER_EIP) {
          in.base = kRegRip;
        } else if (m.base != ZYDIS_REGISTER_NONE) {
          int b = gpr_index(m.base);
          if (b < 0) bad = true;
          in.base = static_cast<uint8_t>(b);
        }
        if (m.index != ZYDIS_REGISTER_NONE) {
          int x = gpr_index(m.index);
          if (x < 0) bad = true;  // VSIB and the like
          in.index = static_cast<uint8_t>(x);
          in.scale = static_cast<uint8_t>(m.scale == 8 ? 3 : m.scale == 4 ? 2 : m.scale == 2 ? 1 : 0);
        }
        in.disp = static_cast<int32_t>(m.disp.value);
        if (m.type != ZYDIS_MEMOP_TYPE_AGEN) in.seg = seg_index(m.segment);
        ++slot;
        break;
      }
      case ZYDIS_OPERAND_TYPE_IMMEDIATE:
        if (imm_seen) {
          in.imm2 = static_cast<uint16_t>(op.imm.value.u);
          continue;
        }
        imm_seen = true;
        in.kind[slot] = kOpImm;
        in.imm = op.imm.value.u;
        ++slot;
        break;
      case ZYDIS_OPERAND_TYPE_POINTER:
        in.kind[slot] = kOpImm;
        in.imm = op.ptr.offset;
        in.imm2 = op.ptr.segment;
        ++slot;
        break;
      default:
        break;
    }
  }
  // 64-bit mode ignores the ES/CS/SS/DS bases.
  if (mode == 0 && in.seg != kFS && in.seg != kGS) in.seg = kSegFlat;

  // Accesses through SS (explicit RSP/RBP-based operands, PUSH/POP/CALL/RET...) raise #SS rather
  // than #GP on a non-canonical address.
  for (int i = 0; i < zi.operand_count; ++i)
    if (ops[i].type == ZYDIS_OPERAND_TYPE_MEMORY && ops[i].mem.type == ZYDIS_MEMOP_TYPE_MEM &&
        ops[i].mem.segment == ZYDIS_REGISTER_SS)
      in.prefix |= kPfxStack;

  bool has_memory = false;
  for (int i = 0; i < zi.operand_count; ++i)
    if (ops[i].type == ZYDIS_OPERAND_TYPE_MEMORY && ops[i].mem.type == ZYDIS_MEMOP_TYPE_MEM)
      has_memory = true;
  if ((in.prefix & kPfxLock) || zi.mnemonic == ZYDIS_MNEMONIC_MFENCE ||
      (zi.mnemonic == ZYDIS_MNEMONIC_XCHG && has_memory))
    in.prefix |= kPfxFence;

  bool gpr_only = true;
  for (int i = 0; i < zi.operand_count_visible; ++i) {
    if (ops[i].type != ZYDIS_OPERAND_TYPE_REGISTER) continue;
    auto cls = ZydisRegisterGetClass(ops[i].reg.value);
    if (cls != ZYDIS_REGCLASS_GPR8 && cls != ZYDIS_REGCLASS_GPR16 &&
        cls != ZYDIS_REGCLASS_GPR32 && cls != ZYDIS_REGCLASS_GPR64 && cls != ZYDIS_REGCLASS_XMM)
      gpr_only = false;
  }
  if (gpr_only) in.prefix |= kPfxGpr;
  if (zi.meta.branch_type == ZYDIS_BRANCH_TYPE_FAR) in.prefix |= kPfxFar;

  bool ends = is_terminator(zi.mnemonic);
  DecodeCtx d{zi, ops, in, mode, ends};
  if (bad || !(select_int(d) || select_ctl(d) || select_sys(d) || select_sse(d) ||
                select_x87(d))) {
    in.fn = op_ud;
    d.ends_block = true;
  }
  *ends_block = d.ends_block;
  return true;
}

void op_ud(Cpu&, const Insn&) { raise_fault(kUD); }

}  // namespace keel::emu
