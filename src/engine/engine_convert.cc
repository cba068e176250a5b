#include "engine/engine_convert.h"

#include <algorithm>
#include <array>
#include <cstring>
#include <span>

#include "arch/x86/machine_state.h"
#include "engine/emu/platform/guest_clock.h"
#include "engine/kvm/kvm_uapi.h"

namespace keel {

namespace {

using emu::kNever;  // emu's "no deadline"
constexpr uint64_t kIoApicBase = 0xFEC0'0000;
constexpr uint32_t kIoApicPins = 24;
constexpr uint32_t kMsrTsc = 0x10, kMsrTscDeadline = 0x6E0;
// KVM's PIT read/write states (arch/x86/kvm/i8254.h).
constexpr uint8_t kRwLsb = 1, kRwMsb = 2, kRwWord0 = 3, kRwWord1 = 4;
// The MSRs each engine's vCPU restore takes (engine/kvm/kvm_state.cc, engine/emu/cpu_state.cc).
constexpr uint32_t kKvmMsrs[] = {0x10, 0x174, 0x175, 0x176, 0x277, 0x1A0, 0xC000'0081, 0xC000'0082,
                                 0xC000'0083, 0xC000'0084, 0xC000'0102, 0xC000'0103, 0x4b56'4d00,
                                 0x4b56'4d01, 0x4b56'4d02, 0x4b56'4d03, 0x4b56'4d04, 0x6E0};

using Page = std::array<uint8_t, x86::kLapicPageSize>;

// emu's clock TSC at guest time `ns` (HostGuestClock::read_tsc); the vCPU's TSC MSR runs ahead of
// it by its offset, and emu's APIC holds a TSC deadline in the clock's TSC, KVM's MSR in the vCPU's.
uint64_t clock_tsc(uint64_t ns, uint64_t tsc_hz) { return emu::mul_div(ns, tsc_hz, emu::kNsPerSec); }

uint32_t reg(const Page& p, uint32_t offset) {
  uint32_t v;
  std::memcpy(&v, p.data() + offset, 4);
  return v;
}
void set_reg(Page& p, uint32_t offset, uint32_t v) { std::memcpy(p.data() + offset, &v, 4); }

// ISR, TMR, IRR: 256 bits as emu's four 64-bit words, or as the page's eight registers 16 bytes apart.
std::vector<uint64_t> bits_from_page(const Page& p, uint32_t base) {
  std::vector<uint64_t> w(4);
  for (uint32_t i = 0; i < 8; ++i) w[i / 2] |= uint64_t{reg(p, base + 0x10 * i)} << (32 * (i % 2));
  return w;
}
void bits_to_page(Page& p, uint32_t base, const std::vector<uint64_t>& w) {
  for (uint32_t i = 0; i < 8; ++i) set_reg(p, base + 0x10 * i, static_cast<uint32_t>(w[i / 2] >> (32 * (i % 2))));
}

uint64_t divisor(uint32_t divide_conf) {
  uint32_t code = ((divide_conf & 8) >> 1) | (divide_conf & 3);
  return uint64_t{1} << ((code + 1) & 7);
}

template <typename T>
std::span<const uint8_t> raw(const T& v) {
  return {reinterpret_cast<const uint8_t*>(&v), sizeof v};
}
template <typename T>
void read_raw(const state::SectionReader& s, const char* field, T& v) {
  s.bytes_exact(field, std::span<uint8_t>(reinterpret_cast<uint8_t*>(&v), sizeof v));
}

void copy_cpuid(const state::Document& in, state::Writer& out) {
  if (!in.has("cpuid")) return;
  const auto& c = in.section("cpuid");
  auto& w = out.section("cpuid");
  for (uint32_t leaf : {1u, 7u, 0x8000'0001u}) {
    std::string field = "leaf" + std::to_string(leaf);
    if (c.has(field)) w.bytes(field, c.bytes(field, 16));
  }
}

// ---- emu -> kvm --------------------------------------------------------------------------------

kvm_pic_state pic_to_kvm(const state::SectionReader& s, const std::string& p, bool master) {
  if (s.boolean(p + "single"))
    s.fail("the " + std::string(master ? "master" : "slave") + " 8259 is in single mode, which KVM's PIC does not model");
  kvm_pic_state k{};
  k.imr = s.u8(p + "imr");
  k.irr = s.u8(p + "irr");
  k.last_irr = k.irr;
  k.isr = s.u8(p + "isr");
  k.irq_base = s.u8(p + "vector_base");
  uint8_t step = s.u8(p + "init_step");
  k.init_state = step >= 2 ? step - 1 : 0;  // emu: expecting ICW2..4 as 2..4; KVM: 1..3
  k.init4 = s.boolean(p + "need_icw4");
  k.read_reg_select = s.boolean(p + "read_isr");
  k.elcr_mask = master ? 0xF8 : 0xDE;
  return k;
}

kvm_pit_channel_state pit_channel_to_kvm(const state::SectionReader& s, int i) {
  std::string p = "ch" + std::to_string(i) + "_";
  kvm_pit_channel_state k{};
  uint32_t reload = s.u32(p + "reload");
  k.count = reload;
  k.mode = s.u8(p + "mode");
  k.rw_mode = s.u8(p + "access");
  k.bcd = s.boolean(p + "bcd");
  k.gate = s.boolean(p + "gate");
  bool word = k.rw_mode == 3;
  k.write_state = word ? (s.boolean(p + "write_msb_next") ? kRwWord1 : kRwWord0) : k.rw_mode;
  k.read_state = word ? (s.boolean(p + "read_msb_next") ? kRwWord1 : kRwWord0) : k.rw_mode;
  k.write_latch = s.u8(p + "write_lsb");
  if (s.boolean(p + "count_latched")) {
    k.count_latched = word ? (s.boolean(p + "latch_msb_next") ? kRwWord1 : kRwWord0) : k.rw_mode;
    k.latched_count = s.u16(p + "latched_count");
  }
  k.status_latched = s.boolean(p + "status_latched");
  k.status = s.u8(p + "latched_status");
  // A channel that has no count is KVM's "never programmed" (mode 0xff): no timer starts for it.
  // One that counts gets a load time (KVM_SET_PIT2 restarts the count and sets its own; a
  // non-zero one is what says "loaded" when the state goes back to emu).
  if (!s.boolean(p + "counting"))
    k.mode = 0xFF;
  else
    k.count_load_time = 1;
  return k;
}

void emu_to_kvm(const state::Document& in, uint32_t vcpus, state::Writer& out) {
  const auto& clock = in.section("emu/clock");
  const uint64_t now = clock.u64("guest_ns"), tsc_hz = clock.u64("tsc_hz");
  const auto& pic = in.section("emu/pic");
  for (uint32_t chip = 0; chip < 2; ++chip) {
    kvm_irqchip c{};
    c.chip.pic = pic_to_kvm(pic, chip == 0 ? "master_" : "slave_", chip == 0);
    out.section("kvm/irqchip" + std::to_string(chip)).bytes("chip", raw(c.chip));
  }
  const auto& io = in.section("emu/ioapic");
  auto redir = io.u64s("redirection", kIoApicPins);
  if (redir.size() != kIoApicPins) io.fail("field 'redirection' does not hold 24 entries");
  kvm_irqchip ioapic{};
  ioapic.chip.ioapic.base_address = kIoApicBase;
  ioapic.chip.ioapic.ioregsel = io.u32("select");
  ioapic.chip.ioapic.id = io.u32("id");
  ioapic.chip.ioapic.irr = io.u32("line_levels");
  for (uint32_t pin = 0; pin < kIoApicPins; ++pin) ioapic.chip.ioapic.redirtbl[pin].bits = redir[pin];
  out.section("kvm/irqchip2").bytes("chip", raw(ioapic.chip));

  const auto& pit = in.section("emu/pit");
  kvm_pit_state2 k{};
  for (int i = 0; i < 3; ++i) k.channels[i] = pit_channel_to_kvm(pit, i);
  k.channels[2].gate = pit.u8("port61") & 1;  // channel 2's gate is port 0x61's bit 0
  out.section("kvm/pit").bytes("pit", raw(k));
  out.section("kvm/clock").u64("clock_ns", now);

  for (uint32_t i = 0; i < vcpus; ++i) {
    x86::VcpuSnapshot v = x86::load_vcpu(in.section("cpu" + std::to_string(i)));
    const auto& a = in.section("emu/lapic" + std::to_string(i));
    auto lvt = a.u32s("lvt", 6);
    if (lvt.size() != 6) a.fail("field 'lvt' does not hold 6 entries");
    Page p{};
    set_reg(p, 0x20, a.u32("id"));
    set_reg(p, 0x30, 0x0005'0014);  // version 0x14, 6 LVT entries
    set_reg(p, 0x80, a.u32("tpr"));
    set_reg(p, 0xD0, a.u32("ldr"));
    set_reg(p, 0xE0, a.u32("dfr"));
    set_reg(p, 0xF0, a.u32("svr"));
    bits_to_page(p, 0x100, a.u64s("isr", 4));
    bits_to_page(p, 0x180, a.u64s("tmr", 4));
    bits_to_page(p, 0x200, a.u64s("irr", 4));
    set_reg(p, 0x280, a.u32("esr"));
    set_reg(p, 0x300, a.u32("icr_low"));
    set_reg(p, 0x310, a.u32("icr_high"));
    for (uint32_t l = 0; l < 6; ++l) set_reg(p, 0x320 + 0x10 * l, lvt[l]);
    uint32_t divide = a.u32("divide_conf");
    set_reg(p, 0x380, a.u32("initial_count"));
    set_reg(p, 0x3E0, divide);
    uint32_t current = 0;
    if (a.boolean("counting") && (lvt[0] & (3u << 17)) != (2u << 17)) {
      uint64_t start = a.u64("count_start_ns"), value = a.u32("count_start_value");
      uint64_t ticks = now >= start ? (now - start) / divisor(divide) : 0;
      current = ticks >= value ? 0 : static_cast<uint32_t>(value - ticks);
    }
    set_reg(p, 0x390, current);
    v.lapic = p;
    v.regs.apic_base = a.u64("base_msr");
    if (a.u8("nmi_pending")) v.events.nmi_pending = true;
    if (a.boolean("init_pending") || a.boolean("sipi_pending"))
      a.fail("an INIT or SIPI is pending, which is not carried over to KVM");
    // What KVM serves; the TSC deadline lives in emu's APIC.
    std::vector<x86::MsrEntry> msrs;
    for (const auto& m : v.msrs)
      if (std::find(std::begin(kKvmMsrs), std::end(kKvmMsrs), m.index) != std::end(kKvmMsrs)) msrs.push_back(m);
    if (uint64_t deadline = a.u64("tsc_deadline")) {
      uint64_t offset = x86::find_msr(v.msrs, kMsrTsc).value_or(0) - clock_tsc(now, tsc_hz);  // mod 2^64
      msrs.push_back({kMsrTscDeadline, deadline + offset});
    }
    v.msrs = std::move(msrs);
    x86::save_vcpu(v, out.section("cpu" + std::to_string(i)));
  }
}

// ---- kvm -> emu --------------------------------------------------------------------------------

void pic_to_emu(const state::SectionReader& s, const kvm_pic_state& k, const std::string& p,
                state::SectionWriter& w) {
  if (k.auto_eoi || k.rotate_on_auto_eoi || k.special_mask || k.special_fully_nested_mode || k.poll ||
      k.priority_add)
    s.fail("the guest set an 8259 mode the emu PIC does not model (auto-EOI, rotation, special "
           "mask, special fully nested or poll)");
  w.u8(p + "imr", k.imr);
  w.u8(p + "irr", k.irr);
  w.u8(p + "isr", k.isr);
  w.u8(p + "vector_base", k.irq_base);
  w.u8(p + "init_step", k.init_state ? static_cast<uint8_t>(k.init_state + 1) : 0);
  w.boolean(p + "need_icw4", k.init4);
  w.boolean(p + "single", false);
  w.boolean(p + "read_isr", k.read_reg_select);
}

void pit_channel_to_emu(const state::SectionReader& s, const kvm_pit_channel_state& k, int i, uint64_t now,
                        state::SectionWriter& w, uint64_t& next_edge) {
  std::string p = "ch" + std::to_string(i) + "_";
  uint32_t reload = k.count == 0 ? 0x10000 : std::min<uint32_t>(k.count, 0x10000);
  uint8_t access = k.rw_mode >= 1 && k.rw_mode <= 3 ? k.rw_mode : 3;
  // KVM marks a channel the guest never programmed with mode 0xff.
  const bool programmed = k.mode != 0xFF;
  if (programmed && k.mode > 5) s.fail("PIT channel " + std::to_string(i) + " is in mode " + std::to_string(k.mode));
  bool counting = programmed && k.count_load_time != 0;
  w.u8(p + "mode", programmed ? k.mode : 0);
  w.u8(p + "access", access);
  w.boolean(p + "bcd", k.bcd);
  w.boolean(p + "gate", k.gate);
  w.u32(p + "reload", reload);
  w.boolean(p + "counting", counting);
  w.boolean(p + "null_count", false);
  w.u64(p + "load_ns", now);  // the count restarts from its reload value, as KVM_SET_PIT2 does
  w.boolean(p + "paused", false);
  w.u64(p + "paused_ticks", 0);
  w.boolean(p + "write_msb_next", k.write_state == kRwWord1);
  w.u8(p + "write_lsb", k.write_latch);
  w.boolean(p + "read_msb_next", k.read_state == kRwWord1);
  w.boolean(p + "count_latched", k.count_latched != 0);
  w.u16(p + "latched_count", k.latched_count);
  w.boolean(p + "latch_msb_next", k.count_latched == kRwWord1);
  w.boolean(p + "status_latched", k.status_latched);
  w.u8(p + "latched_status", k.status);
  if (i == 0 && counting && k.mode != 1 && k.mode != 5)
    next_edge = now + uint64_t{reload} * 1'000'000'000 / 1'193'182;  // the first edge of the restarted count
}

void kvm_to_emu(const state::Document& in, uint32_t vcpus, uint64_t tsc_hz, state::Writer& out) {
  const uint64_t now = in.section("kvm/clock").u64("clock_ns");
  auto& clock = out.section("emu/clock");
  clock.u64("guest_ns", now);
  clock.u64("tsc_hz", tsc_hz);
  clock.u32("vcpus", vcpus);

  for (uint32_t i = 0; i < vcpus; ++i) {
    x86::VcpuSnapshot v = x86::load_vcpu(in.section("cpu" + std::to_string(i)));
    const auto& cpu = in.section("cpu" + std::to_string(i));
    if (!v.xsave.empty()) {
      if (v.xcr0 & ~uint64_t{3})
        cpu.fail("the guest enabled XSAVE state components (XCR0 = " + std::to_string(v.xcr0) +
                 ") the emu engine does not have");
      v.xsave.clear();  // x87 and SSE: the FXSAVE image carries them
    }
    const Page& p = v.lapic;
    auto& a = out.section("emu/lapic" + std::to_string(i));
    uint32_t lvt[6];
    for (uint32_t l = 0; l < 6; ++l) lvt[l] = reg(p, 0x320 + 0x10 * l);
    uint32_t divide = reg(p, 0x3E0) & 0xB;
    uint32_t initial = reg(p, 0x380), current = reg(p, 0x390);
    uint32_t mode = lvt[0] & (3u << 17);
    uint64_t deadline_msr = x86::find_msr(v.msrs, kMsrTscDeadline).value_or(0);
    a.u32("id", reg(p, 0x20));
    a.u32("ldr", reg(p, 0xD0));
    a.u32("dfr", reg(p, 0xE0));
    a.u64("base_msr", v.regs.apic_base);
    a.u32("tpr", reg(p, 0x80));
    a.u32("svr", reg(p, 0xF0));
    a.u32("esr", reg(p, 0x280));
    a.u32("esr_pending", 0);
    a.u32("icr_low", reg(p, 0x300));
    a.u32("icr_high", reg(p, 0x310));
    a.u32s("lvt", lvt);
    a.u64s("isr", bits_from_page(p, 0x100));
    a.u64s("tmr", bits_from_page(p, 0x180));
    a.u64s("irr", bits_from_page(p, 0x200));
    a.u32("divide_conf", divide);
    a.u32("initial_count", initial);
    uint64_t timer_deadline = kNever;
    bool counting = false;
    if (mode == (2u << 17)) {
      // TSC deadline: the same TSC, so the same distance in guest time.
      uint64_t tsc = x86::find_msr(v.msrs, kMsrTsc).value_or(0);
      if (deadline_msr && tsc_hz)
        timer_deadline = now + (deadline_msr > tsc ? static_cast<uint64_t>(
                                    static_cast<unsigned __int128>(deadline_msr - tsc) * 1'000'000'000 / tsc_hz)
                                                   : 0);
    } else if (current != 0) {
      counting = true;
      timer_deadline = now + uint64_t{current} * divisor(divide);
    }
    a.boolean("counting", counting);
    a.u64("count_start_ns", now);
    a.u32("count_start_value", counting ? current : 0);
    uint64_t raw_deadline = 0;  // in emu's clock TSC: the same distance ahead of it
    if (mode == (2u << 17) && deadline_msr) {
      uint64_t tsc = x86::find_msr(v.msrs, kMsrTsc).value_or(0), at = clock_tsc(now, tsc_hz);
      raw_deadline = deadline_msr > tsc ? at + (deadline_msr - tsc) : std::max<uint64_t>(at, 1);
    }
    a.u64("tsc_deadline", raw_deadline);
    a.u64("timer_deadline_ns", timer_deadline);
    a.u8("nmi_pending", 0);
    a.boolean("init_pending", false);
    a.boolean("sipi_pending", false);
    a.u8("sipi_vector", 0);
    v.lapic = {};
    x86::save_vcpu(v, out.section("cpu" + std::to_string(i)));
  }

  kvm_irqchip ioapic{};
  read_raw(in.section("kvm/irqchip2"), "chip", ioapic.chip);
  auto& io = out.section("emu/ioapic");
  io.u32("id", ioapic.chip.ioapic.id & 0xF);
  io.u32("select", ioapic.chip.ioapic.ioregsel);
  std::vector<uint64_t> redir(kIoApicPins);
  for (uint32_t pin = 0; pin < kIoApicPins; ++pin) redir[pin] = ioapic.chip.ioapic.redirtbl[pin].bits;
  io.u64s("redirection", redir);
  io.u32("line_levels", ioapic.chip.ioapic.irr & ((1u << kIoApicPins) - 1));

  auto& pic = out.section("emu/pic");
  for (uint32_t chip = 0; chip < 2; ++chip) {
    kvm_irqchip c{};
    const auto& s = in.section("kvm/irqchip" + std::to_string(chip));
    read_raw(s, "chip", c.chip);
    pic_to_emu(s, c.chip.pic, chip == 0 ? "master_" : "slave_", pic);
  }

  const auto& pit_section = in.section("kvm/pit");
  kvm_pit_state2 k{};
  read_raw(pit_section, "pit", k);
  auto& pit = out.section("emu/pit");
  uint64_t next_edge = kNever;
  for (int i = 0; i < 3; ++i) pit_channel_to_emu(pit_section, k.channels[i], i, now, pit, next_edge);
  pit.u8("port61", k.channels[2].gate ? 1 : 0);
  pit.u64("next_edge_ns", next_edge);
}

}  // namespace

state::Document convert_engine_state(const state::Document& in, const std::string& from,
                                     const std::string& to, uint32_t vcpus, uint64_t tsc_hz) {
  state::Writer out;
  auto& e = out.section("engine");
  e.str("name", to);
  e.u32("vcpus", vcpus);
  copy_cpuid(in, out);
  if (from == "emu" && to == "kvm")
    emu_to_kvm(in, vcpus, out);
  else if (from == "kvm" && to == "emu")
    kvm_to_emu(in, vcpus, tsc_hz, out);
  else
    in.section("engine").fail("no conversion from the " + from + " engine to " + to);
  auto bytes = out.finish();
  return state::Document::parse(bytes, "the snapshot converted from " + from + " to " + to);
}

}  // namespace keel
