// x87 floating point (D8..DF opcodes), except the control instructions ops_sse.cc handles
// (FNINIT, FNSTCW, FLDCW, FNSTSW, FNCLEX, FWAIT).
//
// The host is x86-64 with the same x87 unit, so every x87 instruction is executed by the host on
// the guest's x87 state: the handler builds an FXSAVE image from the guest's FCW/FSW/FTW/ST0-7
// (with the host's own MXCSR), FXRSTORs it, calls a two-byte stub holding the same opcode and
// ModRM (a memory operand rewritten to [rdi], pointing at a host copy of the guest operand),
// FXSAVEs the result and puts the host's x87 unit back with FNINIT + FLDCW. Rounding, precision
// control, tags, TOP, condition codes, exception flags and transcendental results are then the
// hardware's own. The stubs are fixed at build time (no run-time code generation) and only
// encodings in the table below are ever executed: an encoding the host might not know (the
// undocumented register aliases, reserved forms) stays #UD.
//
// Exceptions: a waiting instruction with an unmasked exception pending (FSW.ES, or a flag whose
// mask FLDCW cleared) raises #MF before it runs, as the hardware does; the host never traps
// because no waiting host x87 instruction runs while one is pending. Faults on the memory operand
// are precise: the source is read and the destination probed for write before anything changes.
// Not done: the 16-bit (66h) FLDENV/FNSTENV/FRSTOR/FNSAVE image layout (#UD), and FIP/FDP/FOP,
// which FXSAVE and FNSTENV report as 0.
#include <cstring>

#include "engine/emu/ops_common.h"

// 8 opcodes (D8..DF) x (8 memory forms with ModRM reg = 0..7 and r/m = [rdi], then the 64
// register forms C0..FF), 4 bytes each: opcode, ModRM, ret, int3.
asm(R"(
  .pushsection .text.keel_x87_stubs,"ax",@progbits
  .balign 16
  .globl keel_x87_stubs
  .hidden keel_x87_stubs
keel_x87_stubs:
  .irp op, 0xd8, 0xd9, 0xda, 0xdb, 0xdc, 0xdd, 0xde, 0xdf
  .irp reg, 0, 1, 2, 3, 4, 5, 6, 7
  .byte \op, (\reg << 3) | 7, 0xc3, 0xcc
  .endr
  .irp hi, 0, 1, 2, 3, 4, 5, 6, 7
  .irp lo, 0, 1, 2, 3, 4, 5, 6, 7
  .byte \op, 0xc0 | (\hi << 3) | \lo, 0xc3, 0xcc
  .endr
  .endr
  .endr
  .popsection
)");
extern "C" const unsigned char keel_x87_stubs[];

namespace keel::emu {

namespace {

constexpr uint64_t kCr0Em = 1ull << 2, kCr0Ts = 1ull << 3;
constexpr uint16_t kFswEs = 0x80;
constexpr uint64_t kArithFlags = 0x8D5;  // CF PF AF ZF SF OF

// Insn::imm packs the stub index (bits 0-15), the memory operand size in bytes (16-23) and these
// flags (24-31).
enum : uint32_t {
  kRead = 1,        // the memory operand is a source
  kWrite = 2,       // the memory operand is a destination
  kEflags = 4,      // FCOMI family: the result's ZF/PF/CF go to RFLAGS
  kNoWait = 8,      // FNSTENV/FNSAVE: runs with an exception pending
  kEnvImage = 16,   // FNSTENV/FNSAVE: clear the instruction/data pointer fields the host wrote
};

// A register form (ModRM >= 0xC0) the host is sure to execute: the documented encodings only.
bool documented_register_form(uint8_t op, uint8_t modrm) {
  switch (op) {
    case 0xD8: return true;
    case 0xD9:
      return modrm <= 0xD0 || modrm == 0xE0 || modrm == 0xE1 || modrm == 0xE4 || modrm == 0xE5 ||
             (modrm >= 0xE8 && modrm <= 0xEE) || modrm >= 0xF0;
    case 0xDA: return modrm <= 0xDF || modrm == 0xE9;
    case 0xDB: return modrm <= 0xDF || (modrm >= 0xE8 && modrm <= 0xF7);
    case 0xDC: return modrm <= 0xCF || modrm >= 0xE0;
    case 0xDD: return modrm <= 0xC7 || (modrm >= 0xD0 && modrm <= 0xEF);
    case 0xDE: return modrm <= 0xCF || modrm == 0xD9 || modrm >= 0xE0;
    case 0xDF: return modrm >= 0xE8 && modrm <= 0xF7;
    default: return false;
  }
}

bool is_x87_data_insn(ZydisMnemonic m) {
  switch (m) {
    case ZYDIS_MNEMONIC_F2XM1: case ZYDIS_MNEMONIC_FABS: case ZYDIS_MNEMONIC_FADD:
    case ZYDIS_MNEMONIC_FADDP: case ZYDIS_MNEMONIC_FBLD: case ZYDIS_MNEMONIC_FBSTP:
    case ZYDIS_MNEMONIC_FCHS: case ZYDIS_MNEMONIC_FCMOVB: case ZYDIS_MNEMONIC_FCMOVBE:
    case ZYDIS_MNEMONIC_FCMOVE: case ZYDIS_MNEMONIC_FCMOVNB: case ZYDIS_MNEMONIC_FCMOVNBE:
    case ZYDIS_MNEMONIC_FCMOVNE: case ZYDIS_MNEMONIC_FCMOVNU: case ZYDIS_MNEMONIC_FCMOVU:
    case ZYDIS_MNEMONIC_FCOM: case ZYDIS_MNEMONIC_FCOMI: case ZYDIS_MNEMONIC_FCOMIP:
    case ZYDIS_MNEMONIC_FCOMP: case ZYDIS_MNEMONIC_FCOMPP: case ZYDIS_MNEMONIC_FCOS:
    case ZYDIS_MNEMONIC_FDECSTP: case ZYDIS_MNEMONIC_FDIV: case ZYDIS_MNEMONIC_FDIVP:
    case ZYDIS_MNEMONIC_FDIVR: case ZYDIS_MNEMONIC_FDIVRP: case ZYDIS_MNEMONIC_FFREE:
    case ZYDIS_MNEMONIC_FIADD: case ZYDIS_MNEMONIC_FICOM: case ZYDIS_MNEMONIC_FICOMP:
    case ZYDIS_MNEMONIC_FIDIV: case ZYDIS_MNEMONIC_FIDIVR: case ZYDIS_MNEMONIC_FILD:
    case ZYDIS_MNEMONIC_FIMUL: case ZYDIS_MNEMONIC_FINCSTP: case ZYDIS_MNEMONIC_FIST:
    case ZYDIS_MNEMONIC_FISTP: case ZYDIS_MNEMONIC_FISTTP: case ZYDIS_MNEMONIC_FISUB:
    case ZYDIS_MNEMONIC_FISUBR: case ZYDIS_MNEMONIC_FLD: case ZYDIS_MNEMONIC_FLD1:
    case ZYDIS_MNEMONIC_FLDENV: case ZYDIS_MNEMONIC_FLDL2E: case ZYDIS_MNEMONIC_FLDL2T:
    case ZYDIS_MNEMONIC_FLDLG2: case ZYDIS_MNEMONIC_FLDLN2: case ZYDIS_MNEMONIC_FLDPI:
    case ZYDIS_MNEMONIC_FLDZ: case ZYDIS_MNEMONIC_FMUL: case ZYDIS_MNEMONIC_FMULP:
    case ZYDIS_MNEMONIC_FNOP: case ZYDIS_MNEMONIC_FNSAVE: case ZYDIS_MNEMONIC_FNSTENV:
    case ZYDIS_MNEMONIC_FPATAN: case ZYDIS_MNEMONIC_FPREM: case ZYDIS_MNEMONIC_FPREM1:
    case ZYDIS_MNEMONIC_FPTAN: case ZYDIS_MNEMONIC_FRNDINT: case ZYDIS_MNEMONIC_FRSTOR:
    case ZYDIS_MNEMONIC_FSCALE: case ZYDIS_MNEMONIC_FSIN: case ZYDIS_MNEMONIC_FSINCOS:
    case ZYDIS_MNEMONIC_FSQRT: case ZYDIS_MNEMONIC_FST: case ZYDIS_MNEMONIC_FSTP:
    case ZYDIS_MNEMONIC_FSUB: case ZYDIS_MNEMONIC_FSUBP: case ZYDIS_MNEMONIC_FSUBR:
    case ZYDIS_MNEMONIC_FSUBRP: case ZYDIS_MNEMONIC_FTST: case ZYDIS_MNEMONIC_FUCOM:
    case ZYDIS_MNEMONIC_FUCOMI: case ZYDIS_MNEMONIC_FUCOMIP: case ZYDIS_MNEMONIC_FUCOMP:
    case ZYDIS_MNEMONIC_FUCOMPP: case ZYDIS_MNEMONIC_FXAM: case ZYDIS_MNEMONIC_FXCH:
    case ZYDIS_MNEMONIC_FXTRACT: case ZYDIS_MNEMONIC_FYL2X: case ZYDIS_MNEMONIC_FYL2XP1:
      return true;
    default:
      return false;
  }
}

// Guest memory <-> host buffer in pieces of at most 8 bytes (through the soft TLB, faults raised).
void read_operand(Cpu& c, uint64_t a, uint8_t* p, unsigned n) {
  while (n) {
    unsigned k = n >= 8 ? 8 : n >= 4 ? 4 : n >= 2 ? 2 : 1;
    switch (k) {
      case 8: store<uint64_t>(p, c.rd<uint64_t>(a)); break;
      case 4: store<uint32_t>(p, c.rd<uint32_t>(a)); break;
      case 2: store<uint16_t>(p, c.rd<uint16_t>(a)); break;
      default: *p = c.rd<uint8_t>(a); break;
    }
    a += k, p += k, n -= k;
  }
}
void write_operand(Cpu& c, uint64_t a, const uint8_t* p, unsigned n) {
  while (n) {
    unsigned k = n >= 8 ? 8 : n >= 4 ? 4 : n >= 2 ? 2 : 1;
    switch (k) {
      case 8: c.wr<uint64_t>(a, load<uint64_t>(p)); break;
      case 4: c.wr<uint32_t>(a, load<uint32_t>(p)); break;
      case 2: c.wr<uint16_t>(a, load<uint16_t>(p)); break;
      default: c.wr<uint8_t>(a, *p); break;
    }
    a += k, p += k, n -= k;
  }
}

void op_x87(Cpu& c, const Insn& in) {
  if (c.cr0 & (kCr0Em | kCr0Ts)) raise_fault(kNM);
  const uint32_t stub = uint32_t(in.imm & 0xFFFF);
  const unsigned bytes = unsigned(in.imm >> 16) & 0xFF;
  const uint32_t flags = uint32_t(in.imm >> 24) & 0xFF;
  // A pending unmasked exception is delivered before a waiting instruction runs.
  if (!(flags & kNoWait) && ((c.fsw & kFswEs) || (c.fsw & ~c.fcw & 0x3F))) raise_fault(kMF);

  alignas(16) uint8_t operand[112] = {};
  uint64_t a = 0;
  if (bytes) {
    a = c.ea(in);
    if (flags & kRead) read_operand(c, a, operand, bytes);
    if (flags & kWrite) {
      (void)c.wptr<uint8_t>(a);
      (void)c.wptr<uint8_t>(a + bytes - 1);
    }
  }

  alignas(16) uint8_t image[512] = {};
  store<uint16_t>(image + 0, c.fcw);
  store<uint16_t>(image + 2, c.fsw);
  image[4] = c.ftw;
  uint32_t mxcsr;
  asm volatile("stmxcsr %0" : "=m"(mxcsr));
  store<uint32_t>(image + 24, mxcsr);
  for (int i = 0; i < 8; ++i) std::memcpy(image + 32 + 16 * i, c.st_regs[i], 10);

  uint16_t host_cw;
  asm volatile("fnstcw %0" : "=m"(host_cw));
  uint64_t rflags_in = c.flags() & kArithFlags, rflags_out;
  const unsigned char* fn = keel_x87_stubs + 4 * stub;
  // The red zone below RSP may hold the compiler's data: step over it before the call.
  asm volatile(
      "fxrstor64 (%[image])\n\t"
      "lea -128(%%rsp), %%rsp\n\t"
      "pushfq\n\t"
      "andq %[keep], (%%rsp)\n\t"
      "orq %[flags_in], (%%rsp)\n\t"
      "popfq\n\t"
      "call *%[fn]\n\t"
      "pushfq\n\t"
      "popq %[flags_out]\n\t"
      "lea 128(%%rsp), %%rsp\n\t"
      "fxsave64 (%[image])\n\t"
      "fninit\n\t"
      "fldcw %[host_cw]"
      : [flags_out] "=&r"(rflags_out)
      : [image] "r"(image), [fn] "r"(fn), [flags_in] "r"(rflags_in),
        [keep] "r"(~kArithFlags), [host_cw] "m"(host_cw), "D"(operand)
      : "memory", "cc", "xmm0", "xmm1", "xmm2", "xmm3", "xmm4", "xmm5", "xmm6", "xmm7", "xmm8",
        "xmm9", "xmm10", "xmm11", "xmm12", "xmm13", "xmm14", "xmm15");

  if (flags & kEnvImage) std::memset(operand + 12, 0, 14);  // FIP, FCS, FOP, FDP, FDS
  if (flags & kWrite) write_operand(c, a, operand, bytes);
  // Commit only now: a fault on the store above leaves the guest's x87 state as it was.
  c.fcw = load<uint16_t>(image + 0);
  c.fsw = load<uint16_t>(image + 2);
  c.ftw = image[4];
  for (int i = 0; i < 8; ++i) {
    std::memcpy(c.st_regs[i], image + 32 + 16 * i, 10);
    std::memset(c.st_regs[i] + 10, 0, 6);
  }
  if (flags & kEflags) c.set_flags((c.flags() & ~kArithFlags) | (rflags_out & kArithFlags));
}

}  // namespace

bool select_x87(DecodeCtx& d) {
  const ZydisDecodedInstruction& zi = d.zi;
  if (!is_x87_data_insn(zi.mnemonic)) return false;
  if (zi.opcode_map != ZYDIS_OPCODE_MAP_DEFAULT || zi.opcode < 0xD8 || zi.opcode > 0xDF)
    return false;
  const uint8_t op = uint8_t(zi.opcode);
  const uint8_t modrm =
      uint8_t((zi.raw.modrm.mod << 6) | (zi.raw.modrm.reg << 3) | zi.raw.modrm.rm);
  uint32_t stub, bytes = 0, flags = 0;
  if (zi.raw.modrm.mod == 3) {
    if (!documented_register_form(op, modrm)) return false;
    stub = (op - 0xD8) * 72 + 8 + (modrm & 0x3F);
  } else {
    stub = (op - 0xD8) * 72 + zi.raw.modrm.reg;
    const ZydisDecodedOperand* mem = nullptr;
    for (int i = 0; i < zi.operand_count_visible; ++i)
      if (d.ops[i].type == ZYDIS_OPERAND_TYPE_MEMORY) mem = &d.ops[i];
    if (!mem) return false;
    switch (zi.mnemonic) {
      case ZYDIS_MNEMONIC_FLDENV: case ZYDIS_MNEMONIC_FNSTENV: bytes = 28; break;
      case ZYDIS_MNEMONIC_FRSTOR: case ZYDIS_MNEMONIC_FNSAVE: bytes = 108; break;
      default: bytes = mem->size / 8; break;
    }
    if (bytes > 108 || bytes == 0) return false;
    // The host stub has no operand-size prefix: the 16-bit environment layout is not offered.
    if (bytes >= 28 && zi.operand_width == 16) return false;
    if (mem->actions & ZYDIS_OPERAND_ACTION_MASK_READ) flags |= kRead;
    if (mem->actions & ZYDIS_OPERAND_ACTION_MASK_WRITE) flags |= kWrite;
    if (zi.mnemonic == ZYDIS_MNEMONIC_FNSTENV || zi.mnemonic == ZYDIS_MNEMONIC_FNSAVE)
      flags |= kNoWait | kEnvImage | kWrite;
    if (zi.mnemonic == ZYDIS_MNEMONIC_FLDENV || zi.mnemonic == ZYDIS_MNEMONIC_FRSTOR)
      flags |= kRead;
  }
  switch (zi.mnemonic) {
    case ZYDIS_MNEMONIC_FCOMI: case ZYDIS_MNEMONIC_FCOMIP: case ZYDIS_MNEMONIC_FUCOMI:
    case ZYDIS_MNEMONIC_FUCOMIP:
      flags |= kEflags;
      break;
    default:
      break;
  }
  d.in.imm = stub | (bytes << 16) | (flags << 24);
  d.in.fn = op_x87;
  return true;
}

}  // namespace keel::emu
