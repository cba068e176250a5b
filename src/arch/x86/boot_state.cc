#include "arch/x86/boot_state.h"

#include <algorithm>

namespace keel::x86 {

uint64_t encode_descriptor(const Segment& seg) {
  uint64_t limit = seg.limit;
  if (seg.g) limit >>= 12;  // the descriptor holds the limit in 4 KiB units
  uint64_t d = 0;
  d |= limit & 0xFFFF;
  d |= (seg.base & 0xFF'FFFF) << 16;
  d |= uint64_t(seg.type & 0xF) << 40;
  d |= uint64_t(seg.s & 1) << 44;
  d |= uint64_t(seg.dpl & 3) << 45;
  d |= uint64_t(seg.present & 1) << 47;
  d |= ((limit >> 16) & 0xF) << 48;
  d |= uint64_t(seg.avl & 1) << 52;
  d |= uint64_t(seg.l & 1) << 53;
  d |= uint64_t(seg.db & 1) << 54;
  d |= uint64_t(seg.g & 1) << 55;
  d |= ((seg.base >> 24) & 0xFF) << 56;
  return d;
}

Segment boot_code_segment() {
  Segment s;
  s.base = 0;
  s.limit = 0xFFFF'FFFF;
  s.selector = kBootCodeSelector;
  s.type = 0xB;  // execute/read, accessed
  s.s = 1;
  s.present = 1;
  s.l = 1;
  s.g = 1;
  return s;
}

Segment boot_data_segment() {
  Segment s;
  s.base = 0;
  s.limit = 0xFFFF'FFFF;
  s.selector = kBootDataSelector;
  s.type = 0x3;  // read/write, accessed
  s.s = 1;
  s.present = 1;
  s.db = 1;
  s.g = 1;
  return s;
}

Segment boot_tss_segment() {
  // Never used for a task switch; VMX requires a usable busy TSS in TR, and the emu engine reads
  // it only for IST/RSP0 once the guest installs its own.
  Segment s;
  s.base = 0;
  s.limit = 0x67;
  s.selector = kBootTssSelector;
  s.type = 0xB;  // busy 64-bit TSS
  s.present = 1;
  return s;
}

void write_boot_tables(GuestMemory& memory) {
  uint64_t gdt[6] = {0, 0, encode_descriptor(boot_code_segment()),
                     encode_descriptor(boot_data_segment()),
                     encode_descriptor(boot_tss_segment()), 0 /* TSS base 63:32 */};
  memory.write(kBootGdtAddr, gdt, sizeof gdt);

  // Zero the whole table area first so that no stale entry survives a reset.
  auto tables = memory.write_span(kBootPml4Addr, kBootTablesEnd - kBootPml4Addr);
  std::fill(tables.begin(), tables.end(), 0);
  memory.write_obj<uint64_t>(kBootPml4Addr, kBootPdptAddr | kPtePresent | kPteWritable);
  for (uint64_t i = 0; i < kBootPdCount; ++i) {
    memory.write_obj<uint64_t>(kBootPdptAddr + 8 * i,
                               (kBootPdAddr + 0x1000 * i) | kPtePresent | kPteWritable);
  }
  for (uint64_t i = 0; i < 512 * kBootPdCount; ++i)
    memory.write_obj<uint64_t>(kBootPdAddr + 8 * i,
                               (i << 21) | kPtePresent | kPteWritable | kPteLarge);
}

CpuState boot_cpu_state(const BootEntry& entry) {
  CpuState st;
  st.rip = entry.rip;
  st.gpr[RSP] = entry.rsp;
  st.gpr[RSI] = entry.rsi;
  st.rflags = 0x2;  // interrupts off
  st.cs = boot_code_segment();
  st.ds = st.es = st.fs = st.gs = st.ss = boot_data_segment();
  st.tr = boot_tss_segment();
  st.ldt.type = 0x2;
  st.ldt.unusable = 1;
  st.gdt = {kBootGdtAddr, kBootGdtLimit};
  st.idt = {0, 0};
  st.cr0 = kCr0PE | kCr0MP | kCr0ET | kCr0NE | kCr0PG;
  st.cr3 = kBootPml4Addr;
  st.cr4 = kCr4PAE;
  st.efer = kEferLME | kEferLMA;
  st.apic_base = kApicBaseDefault | kApicBaseEnable | (entry.bsp ? kApicBaseBsp : 0);
  return st;
}

CpuState setup_long_mode(GuestMemory& memory, const BootEntry& entry) {
  write_boot_tables(memory);
  return boot_cpu_state(entry);
}

Segment protected_mode_code_segment() {
  Segment s = boot_code_segment();
  s.l = 0;
  s.db = 1;
  return s;
}

CpuState setup_protected_mode(GuestMemory& memory, uint32_t eip) {
  const uint64_t gdt[6] = {0, 0, encode_descriptor(protected_mode_code_segment()),
                           encode_descriptor(boot_data_segment()),
                           encode_descriptor(boot_tss_segment()), 0};
  memory.write(kBootGdtAddr, gdt, sizeof gdt);
  CpuState st;
  st.rip = eip;
  st.rflags = 0x2;
  st.cs = protected_mode_code_segment();
  st.ds = st.es = st.fs = st.gs = st.ss = boot_data_segment();
  st.tr = boot_tss_segment();  // type 0xB: a busy TSS, 32-bit outside long mode
  st.ldt.type = 0x2;
  st.ldt.unusable = 1;
  st.gdt = {kBootGdtAddr, kBootGdtLimit};
  st.idt = {0, 0};
  st.cr0 = kCr0PE | kCr0ET;
  st.apic_base = kApicBaseDefault | kApicBaseEnable | kApicBaseBsp;
  return st;
}

}  // namespace keel::x86
