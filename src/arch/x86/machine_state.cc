#include "arch/x86/machine_state.h"

#include <cstdio>
#include <cstring>

namespace keel::x86 {

namespace {

using state::SectionReader;
using state::SectionWriter;

uint32_t pack_attributes(const Segment& s) {
  return (s.type & 0xF) | (s.s & 1) << 4 | (s.dpl & 3) << 5 | (s.present & 1) << 7 |
         (s.avl & 1) << 8 | (s.l & 1) << 9 | (s.db & 1) << 10 | (s.g & 1) << 11 |
         (s.unusable & 1) << 12;
}

void save_segment(SectionWriter& out, const std::string& p, const Segment& s) {
  out.u64(p + "_base", s.base);
  out.u32(p + "_limit", s.limit);
  out.u16(p + "_sel", s.selector);
  out.u32(p + "_attr", pack_attributes(s));
}

Segment load_segment(const SectionReader& in, const std::string& p) {
  Segment s;
  s.base = in.u64(p + "_base");
  s.limit = in.u32(p + "_limit");
  s.selector = in.u16(p + "_sel");
  uint32_t a = in.u32(p + "_attr");
  if (a >> 13) in.fail("field '" + p + "_attr' has undefined bits set");
  s.type = a & 0xF;
  s.s = (a >> 4) & 1;
  s.dpl = (a >> 5) & 3;
  s.present = (a >> 7) & 1;
  s.avl = (a >> 8) & 1;
  s.l = (a >> 9) & 1;
  s.db = (a >> 10) & 1;
  s.g = (a >> 11) & 1;
  s.unusable = (a >> 12) & 1;
  return s;
}

constexpr size_t kMaxMsrs = 1024;
constexpr size_t kMaxCpuidEntries = 256;
constexpr size_t kMaxXsave = 64 * 1024;

void save_cpuid(SectionWriter& out, const std::vector<CpuidEntry>& entries) {
  std::vector<uint32_t> words;
  for (const auto& e : entries)
    words.insert(words.end(), {e.function, e.index, e.flags, e.eax, e.ebx, e.ecx, e.edx});
  out.u32s("cpuid", words);
}

std::vector<CpuidEntry> load_cpuid(const SectionReader& in) {
  std::vector<uint32_t> w = in.u32s("cpuid", 7 * kMaxCpuidEntries);
  if (w.size() % 7) in.fail("field 'cpuid' is not a list of 7-word entries");
  std::vector<CpuidEntry> out;
  for (size_t i = 0; i < w.size(); i += 7)
    out.push_back({w[i], w[i + 1], w[i + 2], w[i + 3], w[i + 4], w[i + 5], w[i + 6]});
  return out;
}

}  // namespace

std::optional<uint64_t> find_msr(const std::vector<MsrEntry>& msrs, uint32_t index) {
  for (const auto& m : msrs)
    if (m.index == index) return m.value;
  return std::nullopt;
}

void save_vcpu(const VcpuSnapshot& v, SectionWriter& out) {
  const CpuState& r = v.regs;
  out.u64s("gpr", r.gpr);
  out.u64("rip", r.rip);
  out.u64("rflags", r.rflags);
  const std::pair<const char*, const Segment*> segs[] = {
      {"cs", &r.cs}, {"ds", &r.ds}, {"es", &r.es}, {"fs", &r.fs},
      {"gs", &r.gs}, {"ss", &r.ss}, {"tr", &r.tr}, {"ldt", &r.ldt}};
  for (auto [name, seg] : segs) save_segment(out, name, *seg);
  out.u64("gdt_base", r.gdt.base);
  out.u16("gdt_limit", r.gdt.limit);
  out.u64("idt_base", r.idt.base);
  out.u16("idt_limit", r.idt.limit);
  const uint64_t crs[] = {r.cr0, r.cr2, r.cr3, r.cr4, r.cr8};
  out.u64s("cr", crs);
  out.u64("efer", r.efer);
  out.u64("apic_base", r.apic_base);
  out.bytes("fxsave", v.fpu.fxsave);
  out.bytes("xsave", v.xsave);
  out.u64("xcr0", v.xcr0);
  out.u64s("dr", v.dr);
  out.u64("dr6", v.dr6);
  out.u64("dr7", v.dr7);
  std::vector<uint32_t> idx;
  std::vector<uint64_t> val;
  for (const auto& m : v.msrs) {
    idx.push_back(m.index);
    val.push_back(m.value);
  }
  out.u32s("msr_index", idx);
  out.u64s("msr_value", val);
  out.bytes("lapic", v.lapic);
  if (v.lapic_timer_remaining_ns) out.u64("lapic_timer_remaining_ns", *v.lapic_timer_remaining_ns);
  out.u32("mp_state", static_cast<uint32_t>(v.mp_state));
  const VcpuEvents& e = v.events;
  out.boolean("exception_injected", e.exception_injected);
  out.u8("exception_nr", e.exception_nr);
  out.boolean("exception_has_error", e.exception_has_error);
  out.u32("exception_error", e.exception_error);
  out.boolean("interrupt_injected", e.interrupt_injected);
  out.u8("interrupt_nr", e.interrupt_nr);
  out.boolean("interrupt_soft", e.interrupt_soft);
  out.u8("interrupt_shadow", e.interrupt_shadow);
  out.boolean("nmi_injected", e.nmi_injected);
  out.boolean("nmi_pending", e.nmi_pending);
  out.boolean("nmi_masked", e.nmi_masked);
  out.u32("sipi_vector", e.sipi_vector);
  save_cpuid(out, v.cpuid);
}

VcpuSnapshot load_vcpu(const SectionReader& in) {
  VcpuSnapshot v;
  CpuState& r = v.regs;
  std::vector<uint64_t> gpr = in.u64s("gpr", 16);
  if (gpr.size() != 16) in.fail("field 'gpr' does not hold 16 registers");
  std::copy(gpr.begin(), gpr.end(), r.gpr.begin());
  r.rip = in.u64("rip");
  r.rflags = in.u64("rflags");
  const std::pair<const char*, Segment*> segs[] = {
      {"cs", &r.cs}, {"ds", &r.ds}, {"es", &r.es}, {"fs", &r.fs},
      {"gs", &r.gs}, {"ss", &r.ss}, {"tr", &r.tr}, {"ldt", &r.ldt}};
  for (auto [name, seg] : segs) *seg = load_segment(in, name);
  r.gdt = {in.u64("gdt_base"), in.u16("gdt_limit")};
  r.idt = {in.u64("idt_base"), in.u16("idt_limit")};
  std::vector<uint64_t> crs = in.u64s("cr", 5);
  if (crs.size() != 5) in.fail("field 'cr' does not hold CR0, CR2, CR3, CR4 and CR8");
  r.cr0 = crs[0];
  r.cr2 = crs[1];
  r.cr3 = crs[2];
  r.cr4 = crs[3];
  r.cr8 = crs[4];
  if (r.cr8 > 15) in.fail("field 'cr' has CR8 above 15");
  r.efer = in.u64("efer");
  r.apic_base = in.u64("apic_base");
  in.bytes_exact("fxsave", v.fpu.fxsave);
  auto xs = in.bytes("xsave", kMaxXsave);
  v.xsave.assign(xs.begin(), xs.end());
  v.xcr0 = in.u64("xcr0");
  std::vector<uint64_t> dr = in.u64s("dr", 4);
  if (dr.size() != 4) in.fail("field 'dr' does not hold DR0-DR3");
  std::copy(dr.begin(), dr.end(), v.dr.begin());
  v.dr6 = in.u64("dr6");
  v.dr7 = in.u64("dr7");
  std::vector<uint32_t> idx = in.u32s("msr_index", kMaxMsrs);
  std::vector<uint64_t> val = in.u64s("msr_value", kMaxMsrs);
  if (idx.size() != val.size()) in.fail("fields 'msr_index' and 'msr_value' differ in length");
  for (size_t i = 0; i < idx.size(); ++i) v.msrs.push_back({idx[i], val[i]});
  in.bytes_exact("lapic", v.lapic);
  if (in.has("lapic_timer_remaining_ns")) v.lapic_timer_remaining_ns = in.u64("lapic_timer_remaining_ns");
  uint32_t mp = in.u32("mp_state");
  if (mp > static_cast<uint32_t>(MpState::kSipiReceived))
    in.fail("field 'mp_state' = " + std::to_string(mp) + " is not an MP state");
  v.mp_state = static_cast<MpState>(mp);
  VcpuEvents& e = v.events;
  e.exception_injected = in.boolean("exception_injected");
  e.exception_nr = in.u8("exception_nr");
  if (e.exception_nr > 31) in.fail("field 'exception_nr' is not an exception vector");
  e.exception_has_error = in.boolean("exception_has_error");
  e.exception_error = in.u32("exception_error");
  e.interrupt_injected = in.boolean("interrupt_injected");
  e.interrupt_nr = in.u8("interrupt_nr");
  e.interrupt_soft = in.boolean("interrupt_soft");
  e.interrupt_shadow = in.u8("interrupt_shadow");
  if (e.interrupt_shadow > 3) in.fail("field 'interrupt_shadow' has undefined bits");
  e.nmi_injected = in.boolean("nmi_injected");
  e.nmi_pending = in.boolean("nmi_pending");
  e.nmi_masked = in.boolean("nmi_masked");
  e.sipi_vector = in.u32("sipi_vector");
  v.cpuid = load_cpuid(in);
  return v;
}

}  // namespace keel::x86
