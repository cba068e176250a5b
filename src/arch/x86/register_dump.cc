#include "arch/x86/register_dump.h"

#include <fmt/format.h>

namespace keel::x86 {
namespace {

// The descriptor attributes in the bit positions of a descriptor's high dword, as QEMU shows them.
uint32_t attributes(const Segment& s) {
  return uint32_t(s.type) << 8 | uint32_t(s.s) << 12 | uint32_t(s.dpl) << 13 |
         uint32_t(s.present) << 15 | uint32_t(s.avl) << 20 | uint32_t(s.l) << 21 |
         uint32_t(s.db) << 22 | uint32_t(s.g) << 23;
}

std::string segment(const char* name, const Segment& s) {
  return fmt::format("{:<3}={:04x} {:016x} {:08x} {:08x}\r\n", name, s.selector, s.base, s.limit,
                     s.unusable ? 0u : attributes(s));
}

}  // namespace

std::string format_registers(const CpuState& c, bool halted) {
  const auto& r = c.gpr;
  std::string out;
  out += fmt::format("RAX={:016x} RBX={:016x} RCX={:016x} RDX={:016x}\r\n", r[RAX], r[RBX], r[RCX], r[RDX]);
  out += fmt::format("RSI={:016x} RDI={:016x} RBP={:016x} RSP={:016x}\r\n", r[RSI], r[RDI], r[RBP], r[RSP]);
  out += fmt::format("R8 ={:016x} R9 ={:016x} R10={:016x} R11={:016x}\r\n", r[R8], r[R9], r[R10], r[R11]);
  out += fmt::format("R12={:016x} R13={:016x} R14={:016x} R15={:016x}\r\n", r[R12], r[R13], r[R14], r[R15]);
  std::string flags;
  for (auto [bit, letter] : {std::pair{kFlagDF, 'D'}, {kFlagOF, 'O'}, {kFlagSF, 'S'}, {kFlagZF, 'Z'},
                             {kFlagAF, 'A'}, {kFlagPF, 'P'}, {kFlagCF, 'C'}})
    flags += (c.rflags & bit) ? letter : '-';
  out += fmt::format("RIP={:016x} RFL={:08x} [{}] CPL={} II=0 A20=1 SMM=0 HLT={}\r\n", c.rip,
                     c.rflags, flags, c.cs.selector & 3, halted ? 1 : 0);
  out += segment("ES", c.es) + segment("CS", c.cs) + segment("SS", c.ss) + segment("DS", c.ds) +
         segment("FS", c.fs) + segment("GS", c.gs) + segment("LDT", c.ldt) + segment("TR", c.tr);
  out += fmt::format("GDT=     {:016x} {:08x}\r\n", c.gdt.base, c.gdt.limit);
  out += fmt::format("IDT=     {:016x} {:08x}\r\n", c.idt.base, c.idt.limit);
  out += fmt::format("CR0={:08x} CR2={:016x} CR3={:016x} CR4={:08x}\r\n", c.cr0, c.cr2, c.cr3, c.cr4);
  out += fmt::format("CR8={:016x} EFER={:016x} APIC_BASE={:016x}\r\n", c.cr8, c.efer, c.apic_base);
  return out;
}

}  // namespace keel::x86
