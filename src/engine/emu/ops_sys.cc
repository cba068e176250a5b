// System instructions: segments and descriptor tables, control registers, MSRs, CPUID, TSC,
// SYSCALL/SYSRET, SWAPGS, IRET, far transfers, port I/O, HLT, INT n, flags with privilege rules.
#include "engine/emu/ops_common.h"

namespace keel::emu {

using namespace x86;

namespace {

constexpr uint64_t kCr0Pe = 1, kCr0Ts = 1ull << 3, kCr0Et = 1ull << 4, kCr0Wp = 1ull << 16,
                   kCr0Pg = 1ull << 31;
constexpr uint64_t kEferSce = 1, kEferLme = 1ull << 8, kEferLma = 1ull << 10, kEferNxe = 1ull << 11;
constexpr uint64_t kCr4Tsd = 1ull << 2;
// CR4 bits we accept: VME..OSXMMEXCPT (0-10). Nothing above (no UMIP, FSGSBASE, PCIDE, OSXSAVE,
// SMEP, SMAP): those features are not advertised.
constexpr uint64_t kCr4Allowed = 0x7FF;

inline bool canonical(uint64_t a) { return uint64_t(int64_t(a << 16) >> 16) == a; }

void need_cpl0(Cpu& c) {
  if (c.cpl != 0) raise_fault(kGP, 0);
}

}  // namespace

// ---------------------------------------------------------------- descriptors and segments

Segment Cpu::parse_descriptor(uint16_t selector, const uint8_t d[8]) {
  uint64_t lo;
  std::memcpy(&lo, d, 8);
  Segment s{};
  s.selector = selector;
  s.limit = uint32_t((lo & 0xFFFF) | ((lo >> 32) & 0xF0000));
  s.base = ((lo >> 16) & 0xFFFFFF) | ((lo >> 32) & 0xFF000000ull);
  s.type = (lo >> 40) & 0xF;
  s.s = (lo >> 44) & 1;
  s.dpl = (lo >> 45) & 3;
  s.present = (lo >> 47) & 1;
  s.avl = (lo >> 52) & 1;
  s.l = (lo >> 53) & 1;
  s.db = (lo >> 54) & 1;
  s.g = (lo >> 55) & 1;
  if (s.g) s.limit = (s.limit << 12) | 0xFFF;
  return s;
}

uint64_t Cpu::descriptor_address(uint16_t selector) {
  bool ldt = selector & 4;
  uint64_t base = ldt ? ldtr.base : gdt.base;
  return base + (selector & ~7u);
}

void Cpu::read_descriptor(uint16_t selector, uint8_t out[8], uint8_t vec) {
  bool ldt = selector & 4;
  uint32_t limit = ldt ? (ldtr.unusable ? 0 : ldtr.limit) : gdt.limit;
  uint32_t index = selector & ~7u;
  if ((ldt && ldtr.unusable) || index + 7 > limit) raise_fault(vec, selector & ~3u);
  uint64_t v = sys_rd<uint64_t>(descriptor_address(selector));
  std::memcpy(out, &v, 8);
}

void Cpu::load_segment(int idx, uint16_t sel) {
  if (real_mode()) {
    // Real mode: the base is selector * 16; limit and attributes stay as they were (an
    // application processor's trampoline only ever loads real-mode values).
    Segment s = sreg[idx];
    s.selector = sel;
    s.base = uint64_t(sel) << 4;
    s.unusable = 0;
    s.present = 1;
    s.s = 1;
    set_sreg_raw(idx, s);
    return;
  }
  if ((sel & ~3) == 0) {
    if (idx == kSS && (mode != 0 || (sel & 3) != cpl)) raise_fault(kGP, 0);
    Segment s{};
    s.selector = sel;
    s.unusable = 1;
    if (idx == kSS) {
      s.dpl = cpl;
      s.s = 1;
      s.type = 3;
      s.present = 1;
      s.db = 1;
    }
    set_sreg_raw(idx, s);
    return;
  }
  uint8_t d[8];
  read_descriptor(sel, d, kGP);
  Segment s = parse_descriptor(sel, d);
  uint8_t rpl = sel & 3;
  if (idx == kSS) {
    if (rpl != cpl || s.dpl != cpl || !s.s || (s.type & 8) || !(s.type & 2))
      raise_fault(kGP, sel & ~3u);
    if (!s.present) raise_fault(kStackFault, sel & ~3u);
  } else {
    if (!s.s || ((s.type & 8) && !(s.type & 2))) raise_fault(kGP, sel & ~3u);
    bool conforming_code = (s.type & 0xC) == 0xC;
    if (!conforming_code && std::max(cpl, rpl) > s.dpl) raise_fault(kGP, sel & ~3u);
    if (!s.present) raise_fault(kNP, sel & ~3u);
  }
  if (idx == kFS || idx == kGS) {
    // In 64-bit mode only the low 32 bits of the base come from the descriptor.
    s.base = uint32_t(s.base);
  }
  set_sreg_raw(idx, s);
}

void Cpu::load_cs(uint16_t selector, const uint8_t desc[8], uint8_t new_cpl) {
  Segment s = parse_descriptor(uint16_t((selector & ~3) | new_cpl), desc);
  sreg[kCS] = s;
  update_mode();
}

namespace {

// Checks a far-transfer target code segment (no call gates) and returns its descriptor.
void check_code_target(Cpu& c, uint16_t sel, uint8_t d[8], uint8_t new_cpl_expected) {
  if ((sel & ~3) == 0) raise_fault(kGP, 0);
  c.read_descriptor(sel, d, kGP);
  Segment s = Cpu::parse_descriptor(sel, d);
  if (!s.s || !(s.type & 8)) raise_fault(kGP, sel & ~3u);  // gates are not supported
  bool conforming = s.type & 4;
  if (conforming ? s.dpl > new_cpl_expected : s.dpl != new_cpl_expected)
    raise_fault(kGP, sel & ~3u);
  if (!s.present) raise_fault(kNP, sel & ~3u);
  if (s.l && s.db) raise_fault(kGP, sel & ~3u);
}

// ---------------------------------------------------------------- MOV/PUSH/POP segment

void op_mov_to_seg(Cpu& c, const Insn& in) {
  uint16_t sel = get_any<uint16_t>(c, in, 1);
  int idx = in.reg[0];
  if (idx == kCS) raise_fault(kUD);
  c.load_segment(idx, sel);
  if (idx == kSS) {
    c.set_shadow();
    c.end_block();
  }
}

void op_mov_from_seg(Cpu& c, const Insn& in) {
  uint16_t sel = c.sreg[in.reg[1]].selector;
  if (in.kind[0] == kOpReg) {
    if (in.osz == 2) c.set_reg<uint16_t>(in.reg[0], sel);
    else c.r[in.reg[0]] = sel;
  } else {
    c.wr<uint16_t>(c.ea(in), sel);
  }
}

void op_push_seg(Cpu& c, const Insn& in) {
  uint16_t sel = c.sreg[in.reg[0]].selector;
  if (in.osz == 8) c.push<uint64_t>(sel);
  else if (in.osz == 4) c.push<uint32_t>(sel);
  else c.push<uint16_t>(sel);
}

void op_pop_seg(Cpu& c, const Insn& in) {
  uint64_t old = c.r[RSP];
  uint16_t sel;
  if (in.osz == 8) sel = uint16_t(c.pop<uint64_t>());
  else if (in.osz == 4) sel = uint16_t(c.pop<uint32_t>());
  else sel = c.pop<uint16_t>();
  try {
    c.load_segment(in.reg[0], sel);
  } catch (const GuestFault&) {
    c.r[RSP] = old;
    throw;
  }
  if (in.reg[0] == kSS) {
    c.set_shadow();
    c.end_block();
  }
}

// ---------------------------------------------------------------- far transfers

// JMP FAR / CALL FAR through memory (m16:16/32/64) or an immediate pointer (compat mode).
void far_target(Cpu& c, const Insn& in, uint64_t* off, uint16_t* sel) {
  if (in.kind[0] == kOpImm) {
    *off = in.imm;
    *sel = in.imm2;
    return;
  }
  uint64_t a = c.ea(in);
  unsigned osz = in.osz;
  if (osz == 8) *off = c.rd<uint64_t>(a);
  else if (osz == 4) *off = c.rd<uint32_t>(a);
  else *off = c.rd<uint16_t>(a);
  *sel = c.rd<uint16_t>(a + osz);
}

// Real mode: CS = selector, base = selector * 16, the rest of the cached descriptor stays.
void load_real_mode_cs(Cpu& c, uint16_t sel) {
  Segment cs = c.sreg[kCS];
  cs.selector = sel;
  cs.base = uint64_t(sel) << 4;
  c.set_sreg_raw(kCS, cs);
}

void op_jmp_far(Cpu& c, const Insn& in) {
  uint64_t off;
  uint16_t sel;
  far_target(c, in, &off, &sel);
  if (c.real_mode()) {
    load_real_mode_cs(c, sel);
    c.rip() = in.osz == 4 ? uint32_t(off) : uint16_t(off);
    c.end_block();
    return;
  }
  uint8_t d[8];
  check_code_target(c, sel, d, c.cpl);
  c.load_cs(sel, d, c.cpl);
  c.rip() = c.mode == 0 ? off : uint32_t(off);
  c.end_block();
}

void op_call_far(Cpu& c, const Insn& in) {
  uint64_t off;
  uint16_t sel;
  far_target(c, in, &off, &sel);
  uint8_t d[8];
  if (!c.real_mode()) check_code_target(c, sel, d, c.cpl);
  uint64_t old_sp = c.r[RSP];
  try {
    if (in.osz == 8) {
      c.push<uint64_t>(c.sreg[kCS].selector);
      c.push<uint64_t>(c.rip());
    } else if (in.osz == 4) {
      c.push<uint32_t>(c.sreg[kCS].selector);
      c.push<uint32_t>(uint32_t(c.rip()));
    } else {
      c.push<uint16_t>(c.sreg[kCS].selector);
      c.push<uint16_t>(uint16_t(c.rip()));
    }
  } catch (const GuestFault&) {
    c.r[RSP] = old_sp;
    throw;
  }
  if (c.real_mode()) {
    load_real_mode_cs(c, sel);
    c.rip() = in.osz == 4 ? uint32_t(off) : uint16_t(off);
  } else {
    c.load_cs(sel, d, c.cpl);
    c.rip() = c.mode == 0 ? off : uint32_t(off);
  }
  c.end_block();
}

template <typename T>
uint64_t peek(Cpu& c, uint64_t sp_off) {
  return c.rd<T>(c.r[RSP] + sp_off + (c.mode == 0 ? 0 : c.seg_base[kSS]));
}

uint64_t peek_sz(Cpu& c, unsigned osz, uint64_t off) {
  if (osz == 8) return peek<uint64_t>(c, off);
  if (osz == 4) return peek<uint32_t>(c, off);
  return peek<uint16_t>(c, off);
}

void op_ret_far(Cpu& c, const Insn& in) {
  unsigned osz = in.osz;
  uint64_t off = peek_sz(c, osz, 0);
  uint16_t sel = uint16_t(peek_sz(c, osz, osz));
  uint16_t imm = in.kind[0] == kOpImm ? uint16_t(in.imm) : 0;
  if (c.real_mode()) {
    c.r[RSP] = (c.r[RSP] & ~0xFFFFull) | uint16_t(c.r[RSP] + 2 * osz + imm);
    load_real_mode_cs(c, sel);
    c.rip() = osz == 4 ? uint32_t(off) : uint16_t(off);
    c.end_block();
    return;
  }
  uint8_t rpl = sel & 3;
  if (rpl < c.cpl) raise_fault(kGP, sel & ~3u);
  uint8_t d[8];
  check_code_target(c, sel, d, rpl);
  if (rpl == c.cpl) {
    c.r[RSP] += 2 * osz + imm;
    c.load_cs(sel, d, rpl);
    c.rip() = c.mode == 0 ? off : uint32_t(off);
  } else {
    uint64_t new_sp = peek_sz(c, osz, 2 * osz + imm);
    uint16_t ss_sel = uint16_t(peek_sz(c, osz, 3 * osz + imm));
    uint8_t old_cpl = c.cpl;
    c.load_cs(sel, d, rpl);
    try {
      c.load_segment(kSS, ss_sel);
    } catch (const GuestFault&) {
      // Roll back to the caller's privilege before reporting.
      c.sreg[kCS].selector = uint16_t((c.sreg[kCS].selector & ~3) | old_cpl);
      c.update_mode();
      throw;
    }
    c.r[RSP] = new_sp + imm;
    c.rip() = c.mode == 0 ? off : uint32_t(off);
  }
  c.end_block();
}

// ---------------------------------------------------------------- IRET

uint64_t iret_flags(Cpu& c, uint64_t popped, unsigned osz) {
  uint64_t mask = kFlagCF | kFlagPF | kFlagAF | kFlagZF | kFlagSF | kFlagTF | kFlagDF | kFlagOF |
                  kFlagNT | kFlagRF | kFlagAC | kFlagID | (1ull << 19) | (1ull << 20);
  unsigned iopl = unsigned((c.rflags_ >> 12) & 3);
  if (c.cpl <= iopl) mask |= kFlagIF;
  if (c.cpl == 0) mask |= kFlagIOPL;
  if (osz == 2) mask &= 0xFFFF;
  uint64_t f = c.flags();
  return (f & ~mask) | (popped & mask) | 2;
}

void op_iret(Cpu& c, const Insn& in) {
  if (!c.long_mode()) throw Error("emu: IRET outside long mode is not supported; " + c.describe_rip());
  unsigned osz = in.osz;
  uint64_t new_rip = peek_sz(c, osz, 0);
  uint16_t cs_sel = uint16_t(peek_sz(c, osz, osz));
  uint64_t new_flags = peek_sz(c, osz, 2 * osz);
  uint8_t rpl = cs_sel & 3;
  if (rpl < c.cpl) raise_fault(kGP, cs_sel & ~3u);
  uint8_t d[8];
  check_code_target(c, cs_sel, d, rpl);
  Segment cs = Cpu::parse_descriptor(cs_sel, d);
  bool to_64 = cs.l;
  bool pops_stack = c.mode == 0 || rpl != c.cpl;
  uint64_t new_rsp = 0;
  uint16_t ss_sel = 0;
  if (pops_stack) {
    new_rsp = peek_sz(c, osz, 3 * osz);
    ss_sel = uint16_t(peek_sz(c, osz, 4 * osz));
  }
  if (to_64 && !canonical(new_rip)) raise_fault(kGP, 0);
  uint64_t f = iret_flags(c, new_flags, osz);
  uint8_t old_cpl = c.cpl;
  Segment old_cs = c.sreg[kCS];
  c.load_cs(cs_sel, d, rpl);
  if (pops_stack) {
    try {
      c.load_segment(kSS, ss_sel);
    } catch (const GuestFault&) {
      c.sreg[kCS] = old_cs;
      c.update_mode();
      throw;
    }
    c.r[RSP] = new_rsp;
  } else {
    c.r[RSP] += 3 * osz;
  }
  (void)old_cpl;
  c.set_flags(f);
  c.rip() = to_64 ? new_rip : uint32_t(new_rip);
  c.nmi_done();
  c.end_block();
}

// ---------------------------------------------------------------- SYSCALL / SYSRET / SWAPGS

void set_flat_cs(Cpu& c, uint16_t sel, uint8_t dpl, bool l, bool db) {
  Segment s{};
  s.selector = sel;
  s.base = 0;
  s.limit = 0xFFFFFFFF;
  s.type = 0xB;
  s.s = 1;
  s.dpl = dpl;
  s.present = 1;
  s.l = l;
  s.db = db;
  s.g = 1;
  c.sreg[kCS] = s;
}

void set_flat_ss(Cpu& c, uint16_t sel, uint8_t dpl) {
  Segment s{};
  s.selector = sel;
  s.limit = 0xFFFFFFFF;
  s.type = 0x3;
  s.s = 1;
  s.dpl = dpl;
  s.present = 1;
  s.db = 1;
  s.g = 1;
  c.sreg[kSS] = s;
}

void op_syscall(Cpu& c, const Insn&) {
  if (!(c.efer & kEferSce) || !c.long_mode()) raise_fault(kUD);
  bool from64 = c.mode == 0;
  c.r[RCX] = c.rip();
  c.r[R11] = c.flags() & ~kFlagRF;
  uint16_t sel = uint16_t((c.star >> 32) & 0xFFFC);
  set_flat_cs(c, sel, 0, true, false);
  set_flat_ss(c, uint16_t(sel + 8), 0);
  c.set_flags(c.flags() & ~(c.fmask | kFlagRF));
  c.rip() = from64 ? c.lstar : c.cstar;
  c.update_mode();
  c.end_block();
}

void op_sysret(Cpu& c, const Insn& in) {
  if (!(c.efer & kEferSce) || !c.long_mode()) raise_fault(kUD);
  if (c.cpl != 0) raise_fault(kGP, 0);
  uint16_t base = uint16_t((c.star >> 48) & 0xFFFF);
  if (in.osz == 8) {
    if (!canonical(c.r[RCX])) raise_fault(kGP, 0);
    set_flat_cs(c, uint16_t((base + 16) | 3), 3, true, false);
    c.rip() = c.r[RCX];
  } else {
    set_flat_cs(c, uint16_t(base | 3), 3, false, true);
    c.rip() = uint32_t(c.r[RCX]);
  }
  set_flat_ss(c, uint16_t((base + 8) | 3), 3);
  c.set_flags((c.r[R11] & 0x3C7FD7) | 2);
  c.update_mode();
  c.end_block();
}

void op_swapgs(Cpu& c, const Insn&) {
  if (c.mode != 0) raise_fault(kUD);
  need_cpl0(c);
  std::swap(c.sreg[kGS].base, c.kernel_gs_base);
  c.seg_base[kGS] = c.sreg[kGS].base;
}

// ---------------------------------------------------------------- descriptor-table registers

void op_lgdt_lidt(Cpu& c, const Insn& in) {
  need_cpl0(c);
  uint64_t a = c.ea(in);
  uint16_t limit = c.rd<uint16_t>(a);
  uint64_t base = c.mode == 0 ? c.rd<uint64_t>(a + 2) : c.rd<uint32_t>(a + 2);
  if (c.mode == 0 && !canonical(base)) raise_fault(kGP, 0);
  DescriptorTable& t = in.cc ? c.idt : c.gdt;
  t.base = base;
  t.limit = limit;
}

void op_sgdt_sidt(Cpu& c, const Insn& in) {
  uint64_t a = c.ea(in);
  const DescriptorTable& t = in.cc ? c.idt : c.gdt;
  c.wr<uint16_t>(a, t.limit);
  if (c.mode == 0) c.wr<uint64_t>(a + 2, t.base);
  else c.wr<uint32_t>(a + 2, uint32_t(t.base));
}

// Loads a 16-byte system descriptor (TSS or LDT) from the GDT.
Segment load_system_descriptor(Cpu& c, uint16_t sel, uint8_t want_type, uint64_t* addr) {
  if (sel & 4) raise_fault(kGP, sel & ~3u);
  uint32_t index = sel & ~7u;
  if (index + 15 > c.gdt.limit) raise_fault(kGP, sel & ~3u);
  *addr = c.gdt.base + index;
  uint64_t lo = c.sys_rd<uint64_t>(*addr);
  uint64_t hi = c.sys_rd<uint64_t>(*addr + 8);
  uint8_t d[8];
  std::memcpy(d, &lo, 8);
  Segment s = Cpu::parse_descriptor(sel, d);
  if (s.s || s.type != want_type) raise_fault(kGP, sel & ~3u);
  if (!s.present) raise_fault(kNP, sel & ~3u);
  s.base |= uint64_t(uint32_t(hi)) << 32;
  return s;
}

void op_ltr(Cpu& c, const Insn& in) {
  need_cpl0(c);
  uint16_t sel = get_any<uint16_t>(c, in, 0);
  if ((sel & ~3) == 0) raise_fault(kGP, 0);
  uint64_t addr;
  Segment s = load_system_descriptor(c, sel, 0x9, &addr);
  // Mark the descriptor busy.
  uint64_t lo = c.sys_rd<uint64_t>(addr);
  c.sys_wr<uint64_t>(addr, lo | (2ull << 40));
  s.type = 0xB;
  c.tr = s;
}

void op_lldt(Cpu& c, const Insn& in) {
  need_cpl0(c);
  uint16_t sel = get_any<uint16_t>(c, in, 0);
  if ((sel & ~3) == 0) {
    c.ldtr = Segment{};
    c.ldtr.unusable = 1;
    return;
  }
  uint64_t addr;
  c.ldtr = load_system_descriptor(c, sel, 0x2, &addr);
}

void op_str_sldt(Cpu& c, const Insn& in) {
  uint16_t sel = in.cc ? c.ldtr.selector : c.tr.selector;
  if (in.kind[0] == kOpReg) {
    if (in.osz == 2) c.set_reg<uint16_t>(in.reg[0], sel);
    else c.r[in.reg[0]] = sel;
  } else {
    c.wr<uint16_t>(c.ea(in), sel);
  }
}

// LSL / LAR: ZF=1 and the limit / access rights when the descriptor is visible at this CPL.
void op_lsl_lar(Cpu& c, const Insn& in) {
  uint16_t sel = get_any<uint16_t>(c, in, 1);
  uint64_t f = c.flags() & ~kFlagZF;
  bool ok = (sel & ~3) != 0;
  Segment s{};
  uint64_t raw = 0;
  if (ok) {
    bool ldt = sel & 4;
    uint32_t limit = ldt ? (c.ldtr.unusable ? 0 : c.ldtr.limit) : c.gdt.limit;
    if ((ldt && c.ldtr.unusable) || (sel & ~7u) + 7 > limit) {
      ok = false;
    } else {
      raw = c.sys_rd<uint64_t>(c.descriptor_address(sel));
      uint8_t d[8];
      std::memcpy(d, &raw, 8);
      s = Cpu::parse_descriptor(sel, d);
      bool conforming = s.s && (s.type & 0xC) == 0xC;
      if (!conforming && std::max<uint8_t>(c.cpl, sel & 3) > s.dpl) ok = false;
      if (!s.s && !(s.type == 2 || s.type == 9 || s.type == 0xB)) ok = false;
    }
  }
  if (!ok) {
    c.set_flags(f);
    return;
  }
  c.set_flags(f | kFlagZF);
  uint64_t v = in.cc ? (raw >> 32) & 0x00F0FF00 : s.limit;
  if (in.osz == 2) c.set_reg<uint16_t>(in.reg[0], uint16_t(v));
  else c.r[in.reg[0]] = uint32_t(v);
}

void op_verr_verw(Cpu& c, const Insn& in) {
  (void)get_any<uint16_t>(c, in, 0);
  c.set_flags(c.flags() & ~kFlagZF);
}

// ---------------------------------------------------------------- control and debug registers

void op_mov_cr(Cpu& c, const Insn& in) {
  need_cpl0(c);
  if (in.kind[0] == kOpReg && in.cc == 1) {  // MOV CRn, reg
    uint64_t v = c.mode == 0 ? c.r[in.reg[1]] : uint32_t(c.r[in.reg[1]]);
    switch (in.reg[0]) {
      case 0: c.write_cr0(v); break;
      case 2: c.cr2 = v; break;
      case 3: c.write_cr3(v); break;
      case 4: c.write_cr4(v); break;
      case 8:
        if (v > 15) raise_fault(kGP, 0);
        c.apic().set_cr8(uint8_t(v));
        break;
      default: raise_fault(kUD);
    }
    c.end_block();
    return;
  }
  uint64_t v;
  switch (in.reg[1]) {
    case 0: v = c.cr0; break;
    case 2: v = c.cr2; break;
    case 3: v = c.cr3; break;
    case 4: v = c.cr4; break;
    case 8: v = c.apic().cr8(); break;
    default: raise_fault(kUD);
  }
  c.r[in.reg[0]] = c.mode == 0 ? v : uint32_t(v);
}

void op_mov_dr(Cpu& c, const Insn& in) {
  need_cpl0(c);
  if (in.cc == 1) return;  // writes: debug registers have no effect here
  uint64_t v = 0;
  switch (in.reg[1]) {
    case 6: v = 0xFFFF0FF0; break;
    case 7: v = 0x400; break;
    default: v = 0; break;
  }
  c.r[in.reg[0]] = v;
}

void op_clts(Cpu& c, const Insn&) {
  need_cpl0(c);
  c.cr0 &= ~kCr0Ts;
}

void op_lmsw(Cpu& c, const Insn& in) {
  need_cpl0(c);
  uint16_t v = get_any<uint16_t>(c, in, 0);
  uint64_t cr0 = (c.cr0 & ~0xEull) | (v & 0xF) | (c.cr0 & 1);
  c.write_cr0(cr0);
}

void op_smsw(Cpu& c, const Insn& in) {
  if (in.kind[0] == kOpReg) {
    if (in.osz == 2) c.set_reg<uint16_t>(in.reg[0], uint16_t(c.cr0));
    else c.r[in.reg[0]] = in.osz == 8 ? c.cr0 : uint32_t(c.cr0);
  } else {
    c.wr<uint16_t>(c.ea(in), uint16_t(c.cr0));
  }
}

void op_invlpg(Cpu& c, const Insn& in) {
  need_cpl0(c);
  c.flush_tlb_page(c.ea(in));
}

void op_priv_nop(Cpu& c, const Insn&) { need_cpl0(c); }  // WBINVD, INVD

// ---------------------------------------------------------------- MSRs, CPUID, TSC

void op_rdmsr(Cpu& c, const Insn&) {
  need_cpl0(c);
  uint64_t v = c.read_msr(uint32_t(c.r[RCX]));
  c.r[RAX] = uint32_t(v);
  c.r[RDX] = v >> 32;
}

void op_wrmsr(Cpu& c, const Insn&) {
  need_cpl0(c);
  c.write_msr(uint32_t(c.r[RCX]), (c.r[RDX] << 32) | uint32_t(c.r[RAX]));
  c.end_block();
}

void op_cpuid(Cpu& c, const Insn&) {
  uint32_t out[4];
  c.cpuid(uint32_t(c.r[RAX]), uint32_t(c.r[RCX]), out);
  c.r[RAX] = out[0];
  c.r[RBX] = out[1];
  c.r[RCX] = out[2];
  c.r[RDX] = out[3];
}

void op_rdtsc(Cpu& c, const Insn&) {
  if ((c.cr4 & kCr4Tsd) && c.cpl != 0) raise_fault(kGP, 0);
  uint64_t t = c.read_tsc();
  c.r[RAX] = uint32_t(t);
  c.r[RDX] = t >> 32;
}

void op_rdtscp(Cpu& c, const Insn&) {
  if ((c.cr4 & kCr4Tsd) && c.cpl != 0) raise_fault(kGP, 0);
  uint64_t t = c.read_tsc();
  c.r[RAX] = uint32_t(t);
  c.r[RDX] = t >> 32;
  c.r[RCX] = uint32_t(c.tsc_aux);
}

void op_rdpid(Cpu& c, const Insn& in) { c.r[in.reg[0]] = uint32_t(c.tsc_aux); }

// ---------------------------------------------------------------- flags with privilege rules

void op_cli(Cpu& c, const Insn&) {
  if (c.cpl > ((c.rflags_ >> 12) & 3)) raise_fault(kGP, 0);
  c.rflags_ &= ~kFlagIF;
}

void op_sti(Cpu& c, const Insn&) {
  if (c.cpl > ((c.rflags_ >> 12) & 3)) raise_fault(kGP, 0);
  if (!(c.rflags_ & kFlagIF)) c.set_shadow();
  c.rflags_ |= kFlagIF;
}

void op_pushf(Cpu& c, const Insn& in) {
  uint64_t f = c.flags() & ~(kFlagVM | kFlagRF);
  if (in.osz == 8) c.push<uint64_t>(f);
  else if (in.osz == 4) c.push<uint32_t>(uint32_t(f));
  else c.push<uint16_t>(uint16_t(f));
}

void op_popf(Cpu& c, const Insn& in) {
  uint64_t v;
  if (in.osz == 8) v = c.pop<uint64_t>();
  else if (in.osz == 4) v = c.pop<uint32_t>();
  else v = c.pop<uint16_t>();
  uint64_t mask = kFlagCF | kFlagPF | kFlagAF | kFlagZF | kFlagSF | kFlagTF | kFlagDF | kFlagOF |
                  kFlagNT | kFlagAC | kFlagID;
  unsigned iopl = unsigned((c.rflags_ >> 12) & 3);
  if (c.cpl <= iopl) mask |= kFlagIF;
  if (c.cpl == 0) mask |= kFlagIOPL;
  if (in.osz == 2) mask &= 0xFFFF;
  uint64_t f = c.flags();
  bool if_was = f & kFlagIF;
  f = (f & ~mask) | (v & mask);
  c.set_flags(f & ~kFlagRF);
  if (!if_was && (f & kFlagIF)) c.set_shadow();  // not architectural, harmless: delays by one insn
}

// ---------------------------------------------------------------- port I/O

template <typename T>
void op_in(Cpu& c, const Insn& in) {
  uint16_t port = in.kind[1] == kOpImm ? uint16_t(in.imm & 0xFF) : uint16_t(c.r[RDX]);
  c.check_io(port, sizeof(T));
  c.set_reg<T>(RAX, T(c.io_in(port, sizeof(T))));
}

template <typename T>
void op_out(Cpu& c, const Insn& in) {
  uint16_t port = in.kind[0] == kOpImm ? uint16_t(in.imm & 0xFF) : uint16_t(c.r[RDX]);
  c.check_io(port, sizeof(T));
  c.io_out(port, sizeof(T), c.reg<T>(RAX));
}

template <typename T>
void op_ins(Cpu& c, const Insn& in) {
  uint16_t port = uint16_t(c.r[RDX]);
  c.check_io(port, sizeof(T));
  bool rep = in.prefix & (kPfxRep | kPfxRepne);
  int64_t step = (c.rflags_ & kFlagDF) ? -int64_t(sizeof(T)) : int64_t(sizeof(T));
  uint64_t amask = in.asz == 8 ? ~0ull : in.asz == 4 ? 0xFFFFFFFFull : 0xFFFF;
  uint64_t base = c.seg_base[c.mode == 0 ? kSegFlat : kES];
  while (!rep || (c.r[RCX] & amask)) {
    uint64_t di = c.r[RDI] & amask;
    // Probe the destination first so a fault does not lose the port read.
    (void)c.wptr<T>(di + base);
    T v = T(c.io_in(port, sizeof(T)));
    c.wr<T>(di + base, v);
    c.r[RDI] = (c.r[RDI] & ~amask) | ((di + step) & amask);
    if (!rep) break;
    c.r[RCX] = (c.r[RCX] & ~amask) | (((c.r[RCX] & amask) - 1) & amask);
  }
}

template <typename T>
void op_outs(Cpu& c, const Insn& in) {
  uint16_t port = uint16_t(c.r[RDX]);
  c.check_io(port, sizeof(T));
  bool rep = in.prefix & (kPfxRep | kPfxRepne);
  int64_t step = (c.rflags_ & kFlagDF) ? -int64_t(sizeof(T)) : int64_t(sizeof(T));
  uint64_t amask = in.asz == 8 ? ~0ull : in.asz == 4 ? 0xFFFFFFFFull : 0xFFFF;
  while (!rep || (c.r[RCX] & amask)) {
    uint64_t si = c.r[RSI] & amask;
    T v = c.rd<T>(si + c.seg_base[in.seg]);
    c.io_out(port, sizeof(T), v);
    c.r[RSI] = (c.r[RSI] & ~amask) | ((si + step) & amask);
    if (!rep) break;
    c.r[RCX] = (c.r[RCX] & ~amask) | (((c.r[RCX] & amask) - 1) & amask);
  }
}

// ---------------------------------------------------------------- HLT, INT, UD

void op_hlt(Cpu& c, const Insn&) {
  need_cpl0(c);
  c.halt();
}

void op_int(Cpu& c, const Insn& in) { c.deliver(uint8_t(in.imm), false, 0, true); }
void op_int3(Cpu& c, const Insn&) { c.deliver(kBP, false, 0, true); }
void op_int1(Cpu& c, const Insn&) { c.deliver(kDB, false, 0, false); }
void op_into(Cpu& c, const Insn&) {
  if (c.mode == 0) raise_fault(kUD);
  if (c.of()) c.deliver(kOF, false, 0, true);
}

Handler io_sized(int osz, Handler h1, Handler h2, Handler h4) {
  return osz == 1 ? h1 : osz == 2 ? h2 : h4;
}

}  // namespace

// ---------------------------------------------------------------- CR / MSR / CPUID bodies

void Cpu::write_cr0(uint64_t v) {
  v |= kCr0Et;
  if ((v >> 32) != 0) raise_fault(kGP, 0);
  if ((v & kCr0Pg) && !(v & kCr0Pe)) raise_fault(kGP, 0);
  uint64_t old = cr0;
  if ((v & kCr0Pg) && !(old & kCr0Pg) && (efer & kEferLme)) {
    if (!(cr4 & (1u << 5))) raise_fault(kGP, 0);  // long mode needs PAE
    efer |= kEferLma;
  }
  if (!(v & kCr0Pg) && (old & kCr0Pg) && long_mode()) {
    if (mode == 0) raise_fault(kGP, 0);  // cannot leave long mode from 64-bit code
    efer &= ~kEferLma;
  }
  cr0 = v;
  if ((old ^ v) & (kCr0Pg | kCr0Wp | kCr0Pe)) flush_tlb();
  update_mode();
}

void Cpu::write_cr3(uint64_t v) {
  cr3 = v & 0x000F'FFFF'FFFF'FFFFull & ~0xFE7ull;
  flush_tlb(/*keep_global=*/true);
}

void Cpu::write_cr4(uint64_t v) {
  if (v & ~kCr4Allowed) raise_fault(kGP, 0);
  if (long_mode() && !(v & (1u << 5))) raise_fault(kGP, 0);
  cr4 = v;
  flush_tlb();
}

void Cpu::write_efer(uint64_t v) {
  if (v & ~(kEferSce | kEferLme | kEferLma | kEferNxe)) raise_fault(kGP, 0);
  if (paging() && ((v ^ efer) & kEferLme)) raise_fault(kGP, 0);
  efer = (v & ~kEferLma) | (efer & kEferLma);
  flush_tlb();
  update_mode();
}

namespace {
// IA32_ARCH_CAPABILITIES (0x10A): emu executes one instruction at a time and fills no buffers
// a later instruction could sample, so it is unaffected by every speculative-execution and
// stale-data flaw these bits describe. Without them Linux assumes an Ivy Bridge's flaws and
// turns on page-table isolation (a CR3 switch and TLB flush per system call) and the rest.
constexpr uint64_t kArchCapabilities =
    (1ull << 0)     // RDCL_NO: no Meltdown, so no page-table isolation, no L1TF
    | (1ull << 1)   // IBRS_ALL: enhanced IBRS (one SPEC_CTRL write at boot instead of retpolines)
    | (1ull << 3)   // SKIP_L1DFL_VMENTRY
    | (1ull << 4)   // SSB_NO
    | (1ull << 5)   // MDS_NO
    | (1ull << 6)   // PSCHANGE_MC_NO: no iTLB multihit
    | (1ull << 8)   // TAA_NO
    | (1ull << 13)  // SBDR_SSDP_NO
    | (1ull << 14)  // FBSDP_NO
    | (1ull << 15)  // PSDP_NO
    | (1ull << 20)  // BHI_NO: no branch-history clearing loop on every system call
    | (1ull << 24)  // PBRSB_NO
    | (1ull << 26)  // GDS_NO
    | (1ull << 27)  // RFDS_NO
    | (1ull << 62); // ITS_NO
}  // namespace

uint64_t Cpu::read_msr(uint32_t i) {
  if (kvm_clock_ && KvmClock::handles(i)) {
    uint64_t v = 0;
    kvmclock_.read_msr(i, v);
    return v;
  }
  switch (i) {
    case 0x10: return read_tsc();
    case 0x1B: return apic_.base_msr();
    case 0x3A: return 1;  // IA32_FEATURE_CONTROL: locked, VMX off
    case 0x48: return spec_ctrl;
    case 0x10A: return kArchCapabilities;
    case 0x8B: return 0;  // IA32_BIOS_SIGN_ID (microcode revision)
    case 0xFE: return 0;  // IA32_MTRRCAP: no variable ranges, no fixed ranges
    case 0x174: return sysenter_cs;
    case 0x179: return 0;  // IA32_MCG_CAP: no machine-check banks (CPUID has no MCE/MCA)
    case 0x17A: return 0;  // IA32_MCG_STATUS
    case 0x175: return sysenter_esp;
    case 0x176: return sysenter_eip;
    case 0x1A0: return misc_enable;
    case 0x277: return pat;
    case 0x2FF: return 0;  // MTRR_DEF_TYPE: MTRRs disabled
    case 0x6E0:
      if (!tsc_deadline_) raise_fault(kGP, 0);
      // The APIC counts in the clock's TSC, the guest in its own (offset by WRMSR TSC, a restore).
      if (uint64_t d = apic_.tsc_deadline()) return d + uint64_t(tsc_offset);
      return 0;
    case 0xC0000080: return efer;
    case 0xC0000081: return star;
    case 0xC0000082: return lstar;
    case 0xC0000083: return cstar;
    case 0xC0000084: return fmask;
    case 0xC0000100: return sreg[kFS].base;
    case 0xC0000101: return sreg[kGS].base;
    case 0xC0000102: return kernel_gs_base;
    case 0xC0000103: return tsc_aux;
    default:
      if ((i >= 0x200 && i <= 0x20F) || i == 0x250 || i == 0x258 || i == 0x259 ||
          (i >= 0x268 && i <= 0x26F))
        return 0;  // MTRR ranges read as disabled
      raise_fault(kGP, 0);
  }
}

void Cpu::write_msr(uint32_t i, uint64_t v) {
  if (kvm_clock_ && KvmClock::handles(i)) {
    kvmclock_.write_msr(i, v);
    return;
  }
  switch (i) {
    case 0x10:
      tsc_offset = int64_t(v - clock_.read_tsc());
      kvmclock_.set_tsc_offset(tsc_offset);
      return;
    case 0x1B:
      if (v & ~(0x000F'FFFF'FFFF'F000ull | (1ull << 11) | (1ull << 8))) raise_fault(kGP, 0);
      apic_.set_base_msr(v);
      return;
    case 0x8B: return;
    case 0x48:  // IA32_SPEC_CTRL: IBRS, STIBP, SSBD, BHI_DIS_S (nothing to do), rest reserved
      if (v & ~uint64_t(7 | (1u << 10))) raise_fault(kGP, 0);
      spec_ctrl = v;
      return;
    case 0x49:  // IA32_PRED_CMD: IBPB (no predictor state to flush)
      if (v & ~uint64_t(1)) raise_fault(kGP, 0);
      return;
    case 0x174: sysenter_cs = v & 0xFFFF; return;
    case 0x175: if (!canonical(v)) raise_fault(kGP, 0); sysenter_esp = v; return;
    case 0x176: if (!canonical(v)) raise_fault(kGP, 0); sysenter_eip = v; return;
    case 0x1A0: misc_enable = v; return;
    case 0x277: {
      for (int k = 0; k < 8; ++k) {
        uint8_t t = (v >> (k * 8)) & 0xFF;
        if (t == 2 || t == 3 || t > 7) raise_fault(kGP, 0);
      }
      pat = v;
      return;
    }
    case 0x2FF: return;  // MTRRs stay disabled
    case 0x6E0:
      if (!tsc_deadline_) raise_fault(kGP, 0);
      if (v == 0) {
        apic_.set_tsc_deadline(0);  // disarms
      } else {
        // In the clock's TSC; one before the clock's TSC 1 is due at once, one past its end never.
        __int128 raw = static_cast<__int128>(v) - tsc_offset;
        apic_.set_tsc_deadline(raw < 1 ? 1 : raw > __int128{UINT64_MAX} ? UINT64_MAX : uint64_t(raw));
      }
      return;
    case 0xC0000080: write_efer(v); return;
    case 0xC0000081: star = v; return;
    case 0xC0000082: if (!canonical(v)) raise_fault(kGP, 0); lstar = v; return;
    case 0xC0000083: if (!canonical(v)) raise_fault(kGP, 0); cstar = v; return;
    case 0xC0000084: fmask = uint32_t(v); return;
    case 0xC0000100:
      if (!canonical(v)) raise_fault(kGP, 0);
      sreg[kFS].base = v;
      seg_base[kFS] = v;
      return;
    case 0xC0000101:
      if (!canonical(v)) raise_fault(kGP, 0);
      sreg[kGS].base = v;
      seg_base[kGS] = v;
      return;
    case 0xC0000102: if (!canonical(v)) raise_fault(kGP, 0); kernel_gs_base = v; return;
    case 0xC0000103: tsc_aux = uint32_t(v); return;
    default:
      if ((i >= 0x200 && i <= 0x20F) || i == 0x250 || i == 0x258 || i == 0x259 ||
          (i >= 0x268 && i <= 0x26F))
        return;
      raise_fault(kGP, 0);
  }
}

void Cpu::cpuid(uint32_t leaf, uint32_t sub, uint32_t o[4]) {
  implemented_cpuid(leaf, sub, o);
  x86::apply_cpu_model(cpu_model_, leaf, sub, o);
}

void Cpu::implemented_cpuid(uint32_t leaf, uint32_t sub, uint32_t o[4]) {
  o[0] = o[1] = o[2] = o[3] = 0;
  auto str = [&](const char* s, int a, int b, int c2) {
    std::memcpy(&o[a], s, 4);
    std::memcpy(&o[b], s + 4, 4);
    std::memcpy(&o[c2], s + 8, 4);
  };
  switch (leaf) {
    case 0:
      o[0] = 0x16;  // leaves 0xB (topology) and 0x15/0x16 (TSC) are below
      str("GenuineIntel", 1, 3, 2);
      return;
    case 1:
      o[0] = 0x000306A9;  // family 6, model 0x3A, stepping 9
      o[1] = (apic_id_ << 24) | (1u << 16) | (8u << 8);  // APIC id, 1 logical CPU, CLFLUSH 64 B
      o[2] = (1u << 13)    // CMPXCHG16B
             | (1u << 23)  // POPCNT
             | (1u << 31);  // hypervisor
      if (tsc_deadline_) o[2] |= 1u << 24;
      o[3] = (1u << 0)     // FPU
             | (1u << 3)   // PSE
             | (1u << 4)   // TSC
             | (1u << 5)   // MSR
             | (1u << 6)   // PAE
             | (1u << 8)   // CX8
             | (1u << 11)  // SEP (MSRs only)
             | (1u << 13)  // PGE
             | (1u << 15)  // CMOV
             | (1u << 16)  // PAT
             | (1u << 17)  // PSE36
             | (1u << 19)  // CLFLUSH
             | (1u << 23)  // MMX
             | (1u << 24)  // FXSR
             | (1u << 25)  // SSE
             | (1u << 26);  // SSE2
      if (apic_.base_msr() & (1u << 11)) o[3] |= 1u << 9;  // APIC, while IA32_APIC_BASE enables it
      return;
    case 2:
      o[0] = 0x0000FF01;  // "use leaf 4"
      return;
    case 4: {
      // Deterministic cache parameters: 32K L1d, 32K L1i, 256K L2, 8M L3, 64-byte lines.
      struct C { uint32_t type, level, ways, sets; };
      static const C caches[] = {{1, 1, 8, 64}, {2, 1, 8, 64}, {3, 2, 4, 1024}, {3, 3, 16, 8192}};
      if (sub >= 4) return;
      const C& cc = caches[sub];
      o[0] = cc.type | (cc.level << 5) | (1u << 8);
      o[1] = ((cc.ways - 1) << 22) | 63;
      o[2] = cc.sets - 1;
      return;
    }
    case 7:
      if (sub == 0) {
        o[0] = 2;                         // highest subleaf
        o[2] = 1u << 22;                  // RDPID
        o[3] = (1u << 26) | (1u << 29);   // IBRS/IBPB (SPEC_CTRL, PRED_CMD), ARCH_CAPABILITIES
      } else if (sub == 2) {
        // BHI_CTRL: SPEC_CTRL.BHI_DIS_S exists, so Linux sets one bit at boot rather than run
        // its branch-history clearing loop on every system call (kernels that ignore BHI_NO).
        o[3] = 1u << 4;
      }
      return;
    case 0x15: {
      uint64_t hz = clock_.tsc_hz();
      o[0] = 1;
      o[1] = 1;
      o[2] = uint32_t(hz);
      if (hz > 0xFFFFFFFFull) {
        o[0] = 1;
        o[1] = uint32_t(hz / 25'000'000);
        o[2] = 25'000'000;
      }
      return;
    }
    case 0xB:
      // Extended topology: every vCPU is a package of its own (one core, one thread), as QEMU's
      // default -smp; EDX is the x2APIC id (= the APIC id).
      o[3] = apic_id_;
      o[2] = sub & 0xFF;
      if (sub == 0) {
        o[1] = 1;
        o[2] |= 1u << 8;  // SMT level
      } else if (sub == 1) {
        o[1] = 1;
        o[2] |= 2u << 8;  // core level
      }
      return;
    case 0x16: {
      uint32_t mhz = uint32_t(clock_.tsc_hz() / 1'000'000);
      o[0] = mhz;
      o[1] = mhz;
      o[2] = 100;
      return;
    }
    case 0x40000000:
      o[0] = 0x40000001;
      str("KVMKVMKVM\0\0\0", 1, 2, 3);
      return;
    case 0x40000001:
      o[0] = (1u << 1);  // KVM_FEATURE_NOP_IO_DELAY
      if (kvm_clock_) o[0] |= (1u << 0) | (1u << 3) | (1u << 24);  // CLOCKSOURCE(2), STABLE
      return;
    case 0x80000000:
      o[0] = 0x80000008;
      return;
    case 0x80000001:
      o[2] = 1u << 0;  // LAHF/SAHF in 64-bit mode
      o[3] = (1u << 11)    // SYSCALL
             | (1u << 20)  // NX
             | (1u << 26)  // 1 GiB pages
             | (1u << 27)  // RDTSCP
             | (1u << 29);  // long mode
      return;
    case 0x80000002:
    case 0x80000003:
    case 0x80000004: {
      static const char brand[49] = "keel emu x86-64 CPU                             ";
      std::memcpy(o, brand + (leaf - 0x80000002) * 16, 16);
      return;
    }
    case 0x80000005:
      // L1 caches in AMD layout: 32K, 8-way, 64-byte lines (data in ECX, code in EDX).
      o[2] = (32u << 24) | (8u << 16) | (1u << 8) | 64;
      o[3] = (32u << 24) | (8u << 16) | (1u << 8) | 64;
      return;
    case 0x80000006:
      o[2] = (256u << 16) | (0x6u << 12) | 64;  // L2: 256K, 8-way, 64-byte lines
      return;
    case 0x80000007:
      o[3] = 1u << 8;  // invariant TSC
      return;
    case 0x80000008:
      o[0] = 0x3028;  // 48-bit virtual, 40-bit physical addresses
      return;
    default:
      return;
  }
}

bool select_sys(DecodeCtx& d) {
  Insn& in = d.in;
  const auto m = d.zi.mnemonic;
  const bool far = d.zi.meta.branch_type == ZYDIS_BRANCH_TYPE_FAR;
  switch (m) {
    case ZYDIS_MNEMONIC_MOV:
      // MOV to/from a segment register (the GPR forms were taken by select_int).
      if (d.ops[0].type == ZYDIS_OPERAND_TYPE_REGISTER &&
          ZydisRegisterGetClass(d.ops[0].reg.value) == ZYDIS_REGCLASS_SEGMENT) {
        in.fn = op_mov_to_seg;
        if (in.reg[0] == kSS) d.ends_block = true;
        return true;
      }
      if (d.ops[1].type == ZYDIS_OPERAND_TYPE_REGISTER &&
          ZydisRegisterGetClass(d.ops[1].reg.value) == ZYDIS_REGCLASS_SEGMENT) {
        in.fn = op_mov_from_seg;
        return true;
      }
      for (int k = 0; k < 2; ++k) {
        if (d.ops[k].type != ZYDIS_OPERAND_TYPE_REGISTER) continue;
        auto cls = ZydisRegisterGetClass(d.ops[k].reg.value);
        if (cls == ZYDIS_REGCLASS_CONTROL || cls == ZYDIS_REGCLASS_DEBUG) {
          in.cc = k == 0;  // 1 = write to the special register
          in.fn = cls == ZYDIS_REGCLASS_CONTROL ? op_mov_cr : op_mov_dr;
          if (k == 0) d.ends_block = true;
          return true;
        }
      }
      return false;
    case ZYDIS_MNEMONIC_PUSH:
      if (d.ops[0].type == ZYDIS_OPERAND_TYPE_REGISTER &&
          ZydisRegisterGetClass(d.ops[0].reg.value) == ZYDIS_REGCLASS_SEGMENT) {
        in.fn = op_push_seg;
        return true;
      }
      return false;
    case ZYDIS_MNEMONIC_POP:
      if (d.ops[0].type == ZYDIS_OPERAND_TYPE_REGISTER &&
          ZydisRegisterGetClass(d.ops[0].reg.value) == ZYDIS_REGCLASS_SEGMENT) {
        in.fn = op_pop_seg;
        if (in.reg[0] == kSS) d.ends_block = true;
        return true;
      }
      return false;
    case ZYDIS_MNEMONIC_JMP:
      if (!far) return false;
      in.fn = op_jmp_far;
      d.ends_block = true;
      return true;
    case ZYDIS_MNEMONIC_CALL:
      if (!far) return false;
      in.fn = op_call_far;
      d.ends_block = true;
      return true;
    case ZYDIS_MNEMONIC_RET:
      if (!far) return false;
      in.fn = op_ret_far;
      d.ends_block = true;
      return true;
    case ZYDIS_MNEMONIC_IRET:
    case ZYDIS_MNEMONIC_IRETD:
    case ZYDIS_MNEMONIC_IRETQ:
      in.fn = op_iret;
      return true;
    case ZYDIS_MNEMONIC_SYSCALL: in.fn = op_syscall; return true;
    case ZYDIS_MNEMONIC_SYSRET: in.fn = op_sysret; return true;
    case ZYDIS_MNEMONIC_SWAPGS: in.fn = op_swapgs; return true;
    case ZYDIS_MNEMONIC_LGDT: in.cc = 0; in.fn = op_lgdt_lidt; return true;
    case ZYDIS_MNEMONIC_LIDT: in.cc = 1; in.fn = op_lgdt_lidt; return true;
    case ZYDIS_MNEMONIC_SGDT: in.cc = 0; in.fn = op_sgdt_sidt; return true;
    case ZYDIS_MNEMONIC_SIDT: in.cc = 1; in.fn = op_sgdt_sidt; return true;
    case ZYDIS_MNEMONIC_LTR: in.fn = op_ltr; return true;
    case ZYDIS_MNEMONIC_LLDT: in.fn = op_lldt; return true;
    case ZYDIS_MNEMONIC_STR: in.cc = 0; in.fn = op_str_sldt; return true;
    case ZYDIS_MNEMONIC_SLDT: in.cc = 1; in.fn = op_str_sldt; return true;
    case ZYDIS_MNEMONIC_LSL: in.cc = 0; in.fn = op_lsl_lar; return true;
    case ZYDIS_MNEMONIC_LAR: in.cc = 1; in.fn = op_lsl_lar; return true;
    case ZYDIS_MNEMONIC_VERR:
    case ZYDIS_MNEMONIC_VERW: in.fn = op_verr_verw; return true;
    case ZYDIS_MNEMONIC_CLTS: in.fn = op_clts; return true;
    case ZYDIS_MNEMONIC_LMSW: in.fn = op_lmsw; return true;
    case ZYDIS_MNEMONIC_SMSW: in.fn = op_smsw; return true;
    case ZYDIS_MNEMONIC_INVLPG: in.fn = op_invlpg; return true;
    case ZYDIS_MNEMONIC_WBINVD:
    case ZYDIS_MNEMONIC_INVD: in.fn = op_priv_nop; return true;
    case ZYDIS_MNEMONIC_CLFLUSH:
    case ZYDIS_MNEMONIC_CLFLUSHOPT:
      in.fn = [](Cpu& c, const Insn& in) { (void)c.rd<uint8_t>(c.ea(in)); };
      return true;
    case ZYDIS_MNEMONIC_RDMSR: in.fn = op_rdmsr; return true;
    case ZYDIS_MNEMONIC_WRMSR: in.fn = op_wrmsr; return true;
    case ZYDIS_MNEMONIC_CPUID: in.fn = op_cpuid; return true;
    case ZYDIS_MNEMONIC_RDTSC: in.fn = op_rdtsc; return true;
    case ZYDIS_MNEMONIC_RDTSCP: in.fn = op_rdtscp; return true;
    case ZYDIS_MNEMONIC_RDPID: in.fn = op_rdpid; return true;
    case ZYDIS_MNEMONIC_CLI: in.fn = op_cli; return true;
    case ZYDIS_MNEMONIC_STI: in.fn = op_sti; return true;
    case ZYDIS_MNEMONIC_PUSHF:
    case ZYDIS_MNEMONIC_PUSHFD:
    case ZYDIS_MNEMONIC_PUSHFQ: in.fn = op_pushf; return true;
    case ZYDIS_MNEMONIC_POPF:
    case ZYDIS_MNEMONIC_POPFD:
    case ZYDIS_MNEMONIC_POPFQ: in.fn = op_popf; return true;
    case ZYDIS_MNEMONIC_IN:
      in.fn = io_sized(in.osz, &op_in<uint8_t>, &op_in<uint16_t>, &op_in<uint32_t>);
      // Operand 1 is DX or an immediate; Zydis shows DX as a register operand.
      if (in.kind[1] == kOpReg) in.kind[1] = kOpReg;
      return true;
    case ZYDIS_MNEMONIC_OUT:
      in.fn = io_sized(d.ops[1].size / 8, &op_out<uint8_t>, &op_out<uint16_t>, &op_out<uint32_t>);
      return true;
    case ZYDIS_MNEMONIC_INSB: case ZYDIS_MNEMONIC_INSW: case ZYDIS_MNEMONIC_INSD:
      in.fn = io_sized(in.osz, &op_ins<uint8_t>, &op_ins<uint16_t>, &op_ins<uint32_t>);
      return true;
    case ZYDIS_MNEMONIC_OUTSB: case ZYDIS_MNEMONIC_OUTSW: case ZYDIS_MNEMONIC_OUTSD:
      in.seg = override_seg(d.zi, d.mode);
      in.fn = io_sized(in.osz, &op_outs<uint8_t>, &op_outs<uint16_t>, &op_outs<uint32_t>);
      return true;
    case ZYDIS_MNEMONIC_HLT: in.fn = op_hlt; return true;
    case ZYDIS_MNEMONIC_INT: in.fn = op_int; return true;
    case ZYDIS_MNEMONIC_INT3: in.fn = op_int3; return true;
    case ZYDIS_MNEMONIC_INT1: in.fn = op_int1; return true;
    case ZYDIS_MNEMONIC_INTO: in.fn = op_into; return true;
    case ZYDIS_MNEMONIC_UD0:
    case ZYDIS_MNEMONIC_UD1:
    case ZYDIS_MNEMONIC_UD2: in.fn = op_ud; return true;
    default:
      return false;
  }
}

}  // namespace keel::emu
