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

uint32_t lapic_reg(const std::array<uint8_t, kLapicPageSize>& page, uint32_t reg) {
  uint32_t v = 0;
  if (reg + 4 <= page.size()) std::memcpy(&v, page.data() + reg, 4);
  return v;
}

void set_lapic_reg(std::array<uint8_t, kLapicPageSize>& page, uint32_t reg, uint32_t value) {
  if (reg + 4 <= page.size()) std::memcpy(page.data() + reg, &value, 4);
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

void save_ioapic(const IoApicSnapshot& s, SectionWriter& out) {
  out.u32("id", s.id);
  out.u32("select", s.select);
  out.u64s("redirection", s.redirection);
  out.u32("line_levels", s.line_levels);
}

IoApicSnapshot load_ioapic(const SectionReader& in) {
  IoApicSnapshot s;
  s.id = in.u32("id");
  if (s.id > 0xFF) in.fail("field 'id' is not an IOAPIC id");
  s.select = in.u32("select");
  if (s.select > 0xFF) in.fail("field 'select' is not a register index");
  std::vector<uint64_t> r = in.u64s("redirection", 24);
  if (r.size() != 24) in.fail("field 'redirection' does not hold 24 entries");
  std::copy(r.begin(), r.end(), s.redirection.begin());
  s.line_levels = in.u32("line_levels") & 0xFF'FFFF;
  return s;
}

void save_pic(const std::array<PicSnapshot, 2>& s, SectionWriter& out) {
  for (int i = 0; i < 2; ++i) {
    const PicSnapshot& p = s[i];
    const uint8_t b[] = {p.last_irr, p.irr, p.imr, p.isr, p.priority_add, p.irq_base,
                         p.read_reg_select, p.poll, p.special_mask, p.init_state, p.auto_eoi,
                         p.rotate_on_auto_eoi, p.special_fully_nested_mode, p.init4, p.elcr,
                         p.elcr_mask};
    out.bytes(i == 0 ? "master" : "slave", b);
  }
}

std::array<PicSnapshot, 2> load_pic(const SectionReader& in) {
  std::array<PicSnapshot, 2> s;
  for (int i = 0; i < 2; ++i) {
    uint8_t b[16];
    in.bytes_exact(i == 0 ? "master" : "slave", b);
    PicSnapshot& p = s[i];
    p = {b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7], b[8], b[9], b[10], b[11], b[12], b[13],
         b[14], b[15]};
    if (p.init_state > 3) in.fail("PIC init state " + std::to_string(p.init_state) + " is undefined");
  }
  return s;
}

void save_pit(const PitSnapshot& s, SectionWriter& out) {
  for (int i = 0; i < 3; ++i) {
    const PitChannelSnapshot& c = s.channels[i];
    std::string p = "ch" + std::to_string(i) + "_";
    out.u8(p + "mode", c.mode);
    out.u8(p + "access", c.access);
    out.boolean(p + "bcd", c.bcd);
    out.boolean(p + "gate", c.gate);
    out.u32(p + "reload", c.reload);
    out.boolean(p + "counting", c.counting);
    out.u64(p + "loaded_ns_ago", c.loaded_ns_ago);
  }
  out.u8("port61", s.port61);
}

PitSnapshot load_pit(const SectionReader& in) {
  PitSnapshot s;
  for (int i = 0; i < 3; ++i) {
    PitChannelSnapshot& c = s.channels[i];
    std::string p = "ch" + std::to_string(i) + "_";
    c.mode = in.u8(p + "mode");
    if (c.mode > 5) in.fail("field '" + p + "mode' is not a PIT mode");
    c.access = in.u8(p + "access");
    if (c.access < 1 || c.access > 3) in.fail("field '" + p + "access' is not an access mode");
    c.bcd = in.boolean(p + "bcd");
    c.gate = in.boolean(p + "gate");
    c.reload = in.u32(p + "reload");
    if (c.reload == 0 || c.reload > 0x10000) in.fail("field '" + p + "reload' is out of range");
    c.counting = in.boolean(p + "counting");
    c.loaded_ns_ago = in.u64(p + "loaded_ns_ago");
  }
  s.port61 = in.u8("port61") & 0x0F;
  return s;
}

void save_clock(const ClockSnapshot& s, SectionWriter& out) {
  out.u64("guest_ns", s.guest_ns);
  out.u64("tsc", s.tsc);
  out.u64("tsc_hz", s.tsc_hz);
}

ClockSnapshot load_clock(const SectionReader& in) {
  return {in.u64("guest_ns"), in.u64("tsc"), in.u64("tsc_hz")};
}

// ---------------------------------------------------------------------------------------------
// CPUID feature comparison

namespace {

struct FeatureWord {
  uint32_t function, index;
  int reg;  // 0 eax, 1 ebx, 2 ecx, 3 edx
  uint32_t ignore;  // bits that describe topology or OS state rather than features
  const char* names[32];
};

// The Linux kernel's names (arch/x86/include/asm/cpufeatures.h), "" where unnamed here.
const FeatureWord kFeatureWords[] = {
    {1, 0, 3, 1u << 28 /* htt */,
     {"fpu", "vme", "de", "pse", "tsc", "msr", "pae", "mce", "cx8", "apic", "", "sep", "mtrr",
      "pge", "mca", "cmov", "pat", "pse36", "pn", "clflush", "", "dts", "acpi", "mmx", "fxsr",
      "sse", "sse2", "ss", "ht", "tm", "ia64", "pbe"}},
    {1, 0, 2, (1u << 27) /* osxsave */ | (1u << 31) /* hypervisor */,
     {"pni", "pclmulqdq", "dtes64", "monitor", "ds_cpl", "vmx", "smx", "est", "tm2", "ssse3",
      "cid", "sdbg", "fma", "cx16", "xtpr", "pdcm", "", "pcid", "dca", "sse4_1", "sse4_2",
      "x2apic", "movbe", "popcnt", "tsc_deadline_timer", "aes", "xsave", "osxsave", "avx", "f16c",
      "rdrand", "hypervisor"}},
    {7, 0, 1, 0,
     {"fsgsbase", "tsc_adjust", "sgx", "bmi1", "hle", "avx2", "fdp_excptn_only", "smep", "bmi2",
      "erms", "invpcid", "rtm", "cqm", "zero_fcs_fds", "mpx", "rdt_a", "avx512f", "avx512dq",
      "rdseed", "adx", "smap", "avx512ifma", "pcommit", "clflushopt", "clwb", "intel_pt",
      "avx512pf", "avx512er", "avx512cd", "sha_ni", "avx512bw", "avx512vl"}},
    {7, 0, 2, 0,
     {"prefetchwt1", "avx512vbmi", "umip", "pku", "ospke", "waitpkg", "avx512_vbmi2", "cet_ss",
      "gfni", "vaes", "vpclmulqdq", "avx512_vnni", "avx512_bitalg", "tme", "avx512_vpopcntdq", "",
      "la57", "", "", "", "", "", "rdpid", "", "bus_lock_detect", "cldemote", "", "movdiri",
      "movdir64b", "enqcmd", "sgx_lc", ""}},
    {7, 0, 3, 0,
     {"", "", "avx512_4vnniw", "avx512_4fmaps", "fsrm", "", "", "", "avx512_vp2intersect", "srbds_ctrl",
      "md_clear", "rtm_always_abort", "", "tsx_force_abort", "serialize", "hybrid_cpu", "tsxldtrk",
      "", "pconfig", "arch_lbr", "ibt", "", "amx_bf16", "avx512_fp16", "amx_tile", "amx_int8",
      "spec_ctrl", "intel_stibp", "flush_l1d", "arch_capabilities", "core_capabilities",
      "spec_ctrl_ssbd"}},
    {0xD, 1, 0, 0,
     {"xsaveopt", "xsavec", "xgetbv1", "xsaves", "xfd", "", "", "", "", "", "", "", "", "", "",
      "", "", "", "", "", "", "", "", "", "", "", "", "", "", "", "", ""}},
    {0x8000'0001, 0, 3, 0,
     {"", "", "", "", "", "", "", "", "", "", "", "syscall", "", "", "", "", "", "", "", "mp",
      "nx", "", "mmxext", "", "", "fxsr_opt", "pdpe1gb", "rdtscp", "", "lm", "3dnowext", "3dnow"}},
    {0x8000'0001, 0, 2, 0,
     {"lahf_lm", "cmp_legacy", "svm", "extapic", "cr8_legacy", "abm", "sse4a", "misalignsse",
      "3dnowprefetch", "osvw", "ibs", "xop", "skinit", "wdt", "", "lwp", "fma4", "tce", "",
      "nodeid_msr", "", "tbm", "topoext", "perfctr_core", "perfctr_nb", "", "bpext", "ptsc",
      "perfctr_llc", "mwaitx", "", ""}},
    {0x4000'0001, 0, 0, 0,
     {"kvm_clocksource", "kvm_nop_io_delay", "kvm_mmu_op", "kvm_clocksource2", "kvm_async_pf",
      "kvm_steal_time", "kvm_pv_eoi", "kvm_pv_unhalt", "", "kvm_pv_tlb_flush", "kvm_async_pf_vmexit",
      "kvm_pv_send_ipi", "kvm_poll_control", "kvm_pv_sched_yield", "kvm_async_pf_int",
      "kvm_msi_ext_dest_id", "kvm_hc_map_gpa_range", "kvm_migration_control", "", "", "", "", "",
      "", "kvm_clocksource_stable", "", "", "", "", "", "", ""}},
};

uint32_t reg_of(const CpuidEntry& e, int reg) {
  switch (reg) {
    case 0: return e.eax;
    case 1: return e.ebx;
    case 2: return e.ecx;
    default: return e.edx;
  }
}

}  // namespace

std::vector<std::string> missing_cpuid_features(const std::vector<CpuidEntry>& saved,
                                                const std::vector<CpuidEntry>& available) {
  static const char* const kRegNames[] = {"eax", "ebx", "ecx", "edx"};
  std::vector<std::string> missing;
  for (const FeatureWord& w : kFeatureWords) {
    auto s = find_cpuid(saved, w.function, w.index);
    if (!s) continue;
    auto a = find_cpuid(available, w.function, w.index);
    uint32_t have = a ? reg_of(*a, w.reg) : 0;
    uint32_t lack = reg_of(*s, w.reg) & ~have & ~w.ignore;
    for (int bit = 0; bit < 32; ++bit) {
      if (!(lack & (1u << bit))) continue;
      if (*w.names[bit]) {
        missing.push_back(w.names[bit]);
      } else {
        char buf[64];
        std::snprintf(buf, sizeof buf, "cpuid 0x%x.%u %s bit %d", w.function, w.index,
                      kRegNames[w.reg], bit);
        missing.push_back(buf);
      }
    }
  }
  return missing;
}

}  // namespace keel::x86
