#include "arch/x86/boot_state.h"

#include <gtest/gtest.h>

#include "arch/x86/page_walk.h"

namespace keel::x86 {
namespace {

// Decodes an 8-byte descriptor back into the fields the CPU would load.
Segment decode(uint64_t d, uint16_t selector) {
  Segment s;
  s.selector = selector;
  s.limit = static_cast<uint32_t>((d & 0xFFFF) | ((d >> 32) & 0xF'0000));
  s.base = ((d >> 16) & 0xFF'FFFF) | (((d >> 56) & 0xFF) << 24);
  s.type = (d >> 40) & 0xF;
  s.s = (d >> 44) & 1;
  s.dpl = (d >> 45) & 3;
  s.present = (d >> 47) & 1;
  s.avl = (d >> 52) & 1;
  s.l = (d >> 53) & 1;
  s.db = (d >> 54) & 1;
  s.g = (d >> 55) & 1;
  if (s.g) s.limit = (s.limit << 12) | 0xFFF;
  return s;
}

void expect_same(const Segment& a, const Segment& b) {
  EXPECT_EQ(a.base, b.base);
  EXPECT_EQ(a.limit, b.limit);
  EXPECT_EQ(a.selector, b.selector);
  EXPECT_EQ(a.type, b.type);
  EXPECT_EQ(a.s, b.s);
  EXPECT_EQ(a.dpl, b.dpl);
  EXPECT_EQ(a.present, b.present);
  EXPECT_EQ(a.l, b.l);
  EXPECT_EQ(a.db, b.db);
  EXPECT_EQ(a.g, b.g);
}

TEST(BootState, GdtHoldsTheLinuxBootSegments) {
  GuestMemory mem(16 << 20);
  CpuState st = setup_long_mode(mem, {.rip = 0x100000, .rsp = 0x8000, .rsi = 0x7000});

  EXPECT_EQ(st.gdt.base, 0x500u);
  EXPECT_EQ(st.gdt.limit, 0x2Fu);
  EXPECT_EQ(mem.read_obj<uint64_t>(0x500), 0u);  // null descriptor
  EXPECT_EQ(mem.read_obj<uint64_t>(0x508), 0u);
  // The well-known flat 64-bit code and data descriptors (as in the Linux boot protocol).
  EXPECT_EQ(mem.read_obj<uint64_t>(0x510), 0x00AF'9B00'0000'FFFFull);
  EXPECT_EQ(mem.read_obj<uint64_t>(0x518), 0x00CF'9300'0000'FFFFull);

  // What the GDT says is what the segment registers hold.
  expect_same(decode(mem.read_obj<uint64_t>(0x510), 0x10), st.cs);
  expect_same(decode(mem.read_obj<uint64_t>(0x518), 0x18), st.ds);
  expect_same(decode(mem.read_obj<uint64_t>(0x520), 0x20), st.tr);
  for (const Segment* s : {&st.ds, &st.es, &st.ss, &st.fs, &st.gs}) {
    EXPECT_EQ(s->selector, kBootDataSelector);
    EXPECT_EQ(s->type, 0x3);
  }
  EXPECT_EQ(st.cs.selector, kBootCodeSelector);
  EXPECT_EQ(st.cs.l, 1);
  EXPECT_EQ(st.cs.db, 0);  // L=1 requires D=0
  EXPECT_EQ(st.tr.s, 0);
  EXPECT_EQ(st.tr.type, 0xB);
  EXPECT_EQ(mem.read_obj<uint64_t>(0x528), 0u);  // TSS base 63:32
}

TEST(BootState, RegistersEnterLongModeWithInterruptsOff) {
  GuestMemory mem(16 << 20);
  CpuState st = setup_long_mode(mem, {.rip = 0x1234000, .rsp = 0x8ff0, .rsi = 0x7000});
  EXPECT_EQ(st.rip, 0x1234000u);
  EXPECT_EQ(st.gpr[RSP], 0x8ff0u);
  EXPECT_EQ(st.gpr[RSI], 0x7000u);
  EXPECT_EQ(st.gpr[RAX], 0u);
  EXPECT_EQ(st.rflags, 0x2u);
  EXPECT_EQ(st.cr0, 0x8000'0033u);  // PG | NE | ET | MP | PE
  EXPECT_EQ(st.cr4, 0x20u);         // PAE
  EXPECT_EQ(st.cr3, 0x9000u);
  EXPECT_EQ(st.efer, 0x500u);       // LMA | LME
  EXPECT_EQ(st.apic_base, 0xFEE0'0900u);
  EXPECT_EQ(boot_cpu_state({.bsp = false}).apic_base, 0xFEE0'0800u);
}

TEST(BootState, PageTablesIdentityMapTheFirst4GiBWith2MiBPages) {
  GuestMemory mem(16 << 20);
  CpuState st = setup_long_mode(mem, {});
  EXPECT_EQ(mem.read_obj<uint64_t>(0x9000), 0xA003u);
  EXPECT_EQ(mem.read_obj<uint64_t>(0x9008), 0u);
  for (int i = 0; i < 4; ++i)
    EXPECT_EQ(mem.read_obj<uint64_t>(0xA000 + 8 * i), 0xB003u + 0x1000u * i);
  EXPECT_EQ(mem.read_obj<uint64_t>(0xA020), 0u);
  EXPECT_EQ(mem.read_obj<uint64_t>(0xB000), 0x83u);
  EXPECT_EQ(mem.read_obj<uint64_t>(0xB008), 0x200083u);
  EXPECT_EQ(mem.read_obj<uint64_t>(0xEFF8), 0xFFE0'0083u);

  for (uint64_t va : {0x0ull, 0x100000ull, 0x12345678ull, 0xFEE00020ull, 0xFFFF'FFFFull})
    EXPECT_EQ(translate(mem, st, va), va) << std::hex << va;
  EXPECT_EQ(translate(mem, st, 0x1'0000'0000ull), std::nullopt);
  EXPECT_EQ(translate(mem, st, 0xFFFF'8000'0000'0000ull), std::nullopt);
}

TEST(BootState, RewritingClearsStaleEntries) {
  GuestMemory mem(16 << 20);
  mem.write_obj<uint64_t>(0x9FF8, 0xDEAD'B003);
  setup_long_mode(mem, {});
  EXPECT_EQ(mem.read_obj<uint64_t>(0x9FF8), 0u);
}

TEST(BootState, RefusesMemoryTooSmallForTheTables) {
  GuestMemory mem(0x8000);
  EXPECT_THROW(write_boot_tables(mem), GuestMemoryError);
}

TEST(PageWalk, FollowsFourLevelTablesWith4KiBPages) {
  GuestMemory mem(16 << 20);
  CpuState st = setup_long_mode(mem, {});
  // Map VA 0xFFFF'8000'0040'3000 -> PA 0x77000 through a new PML4 slot.
  uint64_t va = 0xFFFF'8000'0040'3000ull;
  mem.write_obj<uint64_t>(0x9000 + 8 * 256, 0x20000 | 3);          // PML4[256] -> PDPT
  mem.write_obj<uint64_t>(0x20000 + 8 * 0, 0x21000 | 3);           // PDPT[0] -> PD
  mem.write_obj<uint64_t>(0x21000 + 8 * 2, 0x22000 | 3);           // PD[2] -> PT
  mem.write_obj<uint64_t>(0x22000 + 8 * 3, 0x77000 | 3);           // PT[3] -> page
  EXPECT_EQ(translate(mem, st, va + 0x123), 0x77123u);
  EXPECT_EQ(translate(mem, st, va + 0x1000), std::nullopt);

  mem.write_obj<uint32_t>(0x77ffe, 0x44332211);
  uint8_t buf[4];
  // The read stops at the first unmapped page.
  EXPECT_EQ(read_virtual(mem, st, va + 0xffe, buf), 2u);
  EXPECT_EQ(buf[0], 0x11);
  EXPECT_EQ(buf[1], 0x22);
}

TEST(PageWalk, TablesOutsideRamAreNotFollowed) {
  GuestMemory mem(16 << 20);
  CpuState st = setup_long_mode(mem, {});
  mem.write_obj<uint64_t>(0x9000 + 8 * 5, 0x4000'0000'0000ull | 3);  // points far outside RAM
  EXPECT_EQ(translate(mem, st, 5ull << 39), std::nullopt);
}

TEST(PageWalk, PagingOffIsIdentity) {
  GuestMemory mem(1 << 20);
  CpuState st;
  EXPECT_EQ(translate(mem, st, 0x1234), 0x1234u);
}

}  // namespace
}  // namespace keel::x86
