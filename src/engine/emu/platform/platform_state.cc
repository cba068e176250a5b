// Snapshot save and restore of the emu platform's models (local APIC, IOAPIC, 8259 PICs, 8254
// PIT). Each model writes its own fields; restore checks widths and ranges (state_format.h) and
// the values the model relies on, then re-derives what is computed from them (pending-interrupt
// attention, timer deadlines).
//
// Host times (CLOCK_MONOTONIC ns) are saved as guest times, relative to the clock's epoch; the
// modular arithmetic round-trips every value exactly, kNever included (kept as is).
#include <string>

#include "engine/emu/platform/guest_clock.h"
#include "base/error.h"
#include "engine/emu/platform/io_apic.h"
#include "engine/emu/platform/pc_platform.h"
#include "engine/emu/platform/local_apic_model.h"
#include "engine/emu/platform/pic8259.h"
#include "engine/emu/platform/pit8254.h"

namespace keel::emu {

namespace {

uint64_t to_guest(uint64_t host_ns, uint64_t epoch) { return host_ns == kNever ? kNever : host_ns - epoch; }
uint64_t to_host(uint64_t guest_ns, uint64_t epoch) { return guest_ns == kNever ? kNever : guest_ns + epoch; }

}  // namespace

// ---------------------------------------------------------------------------------------------
// Local APIC

void LocalApicModel::save_state(state::SectionWriter& out, uint64_t epoch) const {
  std::lock_guard lock(mutex_);
  out.u32("id", id_.load());
  out.u32("ldr", ldr_.load());
  out.u32("dfr", dfr_.load());
  out.u64("base_msr", base_msr_);
  out.u32("tpr", tpr_);
  out.u32("svr", svr_);
  out.u32("esr", esr_);
  out.u32("esr_pending", esr_pending_);
  out.u32("icr_low", icr_low_);
  out.u32("icr_high", icr_high_);
  out.u32s("lvt", lvt_);
  out.u64s("isr", isr_.w);
  out.u64s("tmr", tmr_.w);
  out.u64s("irr", irr_.w);
  out.u32("divide_conf", divide_conf_);
  out.u32("initial_count", initial_count_);
  out.boolean("counting", counting_);
  out.u64("count_start_ns", to_guest(count_start_ns_, epoch));
  out.u32("count_start_value", count_start_value_);
  out.u64("tsc_deadline", tsc_deadline_);
  out.u64("timer_deadline_ns", to_guest(timer_deadline_ns_.load(), epoch));
  out.u8("nmi_pending", nmi_pending_);
  out.boolean("init_pending", init_pending_);
  out.boolean("sipi_pending", sipi_vector_.has_value());
  out.u8("sipi_vector", sipi_vector_.value_or(0));
}

void LocalApicModel::restore_state(const state::SectionReader& in, uint64_t epoch) {
  auto lvt = in.u32s("lvt", 6);
  auto isr = in.u64s("isr", 4), tmr = in.u64s("tmr", 4), irr = in.u64s("irr", 4);
  if (lvt.size() != 6) in.fail("field 'lvt' does not hold 6 entries");
  if (isr.size() != 4 || tmr.size() != 4 || irr.size() != 4)
    in.fail("the ISR, TMR and IRR must hold 256 bits each");
  uint32_t id = in.u32("id");
  if (id >> 24 != this->id())
    in.fail("APIC id " + std::to_string(id >> 24) + " restored into the APIC of vCPU " +
            std::to_string(this->id()));
  uint32_t divide = in.u32("divide_conf");
  if (divide & ~0xBu) in.fail("field 'divide_conf' has reserved bits set");
  {
    std::lock_guard lock(mutex_);
    ldr_ = in.u32("ldr");
    dfr_ = in.u32("dfr");
    base_msr_ = in.u64("base_msr");
    tpr_ = in.u32("tpr") & 0xFF;
    svr_ = in.u32("svr") & 0x13FF;
    esr_ = in.u32("esr");
    esr_pending_ = in.u32("esr_pending");
    icr_low_ = in.u32("icr_low");
    icr_high_ = in.u32("icr_high");
    for (size_t i = 0; i < 6; ++i) lvt_[i] = lvt[i];
    for (size_t i = 0; i < 4; ++i) {
      isr_.w[i] = isr[i];
      tmr_.w[i] = tmr[i];
      irr_.w[i] = irr[i];
    }
    divide_conf_ = divide;
    initial_count_ = in.u32("initial_count");
    counting_ = in.boolean("counting");
    count_start_ns_ = to_host(in.u64("count_start_ns"), epoch);
    count_start_value_ = in.u32("count_start_value");
    tsc_deadline_ = in.u64("tsc_deadline");
    timer_deadline_ns_ = to_host(in.u64("timer_deadline_ns"), epoch);
    nmi_pending_ = in.u8("nmi_pending");
    if (nmi_pending_ > 2) in.fail("field 'nmi_pending' counts more than 2 NMIs");
    init_pending_ = in.boolean("init_pending");
    if (in.boolean("sipi_pending"))
      sipi_vector_ = in.u8("sipi_vector");
    else
      sipi_vector_.reset();
    update_attention_locked();
  }
  // The vCPU polls its timers and the platform's on its next instruction boundary.
  attention_.fetch_or(kTimerDue);
  publish_deadline();
}

// ---------------------------------------------------------------------------------------------
// IOAPIC

void IoApic::save_state(state::SectionWriter& out) const {
  std::lock_guard lock(mutex_);
  out.u32("id", id_);
  out.u32("select", select_);
  out.u64s("redirection", redir_);
  uint32_t levels = 0;
  for (uint32_t pin = 0; pin < kIoApicPins; ++pin) levels |= uint32_t{line_[pin]} << pin;
  out.u32("line_levels", levels);
}

void IoApic::restore_state(const state::SectionReader& in) {
  auto redir = in.u64s("redirection", kIoApicPins);
  if (redir.size() != kIoApicPins)
    in.fail("field 'redirection' holds " + std::to_string(redir.size()) + " entries, not " +
            std::to_string(kIoApicPins));
  uint32_t id = in.u32("id"), select = in.u32("select"), levels = in.u32("line_levels");
  if (id > 0xF) in.fail("field 'id' is not a 4-bit IOAPIC id");
  if (levels >> kIoApicPins) in.fail("field 'line_levels' names pins the IOAPIC does not have");
  std::lock_guard lock(mutex_);
  id_ = id;
  select_ = select & 0xFF;
  for (uint32_t pin = 0; pin < kIoApicPins; ++pin) {
    redir_[pin] = redir[pin];
    line_[pin] = (levels >> pin) & 1;
  }
}

// ---------------------------------------------------------------------------------------------
// 8259 PIC

void Pic8259::save_state(state::SectionWriter& out, const std::string& p) const {
  std::lock_guard lock(mutex_);
  out.u8(p + "imr", imr_);
  out.u8(p + "irr", irr_);
  out.u8(p + "isr", isr_);
  out.u8(p + "vector_base", vector_base_);
  out.u8(p + "init_step", static_cast<uint8_t>(init_step_));
  out.boolean(p + "need_icw4", need_icw4_);
  out.boolean(p + "single", single_);
  out.boolean(p + "read_isr", read_isr_);
}

void Pic8259::restore_state(const state::SectionReader& in, const std::string& p) {
  uint8_t step = in.u8(p + "init_step");
  if (step == 1 || step > 4) in.fail("field '" + p + "init_step' = " + std::to_string(step) + " is not an ICW step");
  std::lock_guard lock(mutex_);
  imr_ = in.u8(p + "imr");
  irr_ = in.u8(p + "irr");
  isr_ = in.u8(p + "isr");
  vector_base_ = in.u8(p + "vector_base") & 0xF8;
  init_step_ = step;
  need_icw4_ = in.boolean(p + "need_icw4");
  single_ = in.boolean(p + "single");
  read_isr_ = in.boolean(p + "read_isr");
}

// ---------------------------------------------------------------------------------------------
// 8254 PIT

void Pit8254::save_state(state::SectionWriter& out, uint64_t epoch) {
  std::lock_guard lock(mutex_);
  for (int i = 0; i < 3; ++i) {
    const Channel& c = ch_[i];
    std::string p = "ch" + std::to_string(i) + "_";
    out.u8(p + "mode", c.mode);
    out.u8(p + "access", c.access);
    out.boolean(p + "bcd", c.bcd);
    out.boolean(p + "gate", c.gate);
    out.u32(p + "reload", c.reload);
    out.boolean(p + "counting", c.counting);
    out.boolean(p + "null_count", c.null_count);
    out.u64(p + "load_ns", to_guest(c.load_ns, epoch));
    out.boolean(p + "paused", c.paused);
    out.u64(p + "paused_ticks", c.paused_ticks);
    out.boolean(p + "write_msb_next", c.write_msb_next);
    out.u8(p + "write_lsb", c.write_lsb);
    out.boolean(p + "read_msb_next", c.read_msb_next);
    out.boolean(p + "count_latched", c.count_latched);
    out.u16(p + "latched_count", c.latched_count);
    out.boolean(p + "latch_msb_next", c.latch_msb_next);
    out.boolean(p + "status_latched", c.status_latched);
    out.u8(p + "latched_status", c.latched_status);
  }
  out.u8("port61", port61_);
  out.u64("next_edge_ns", to_guest(next_edge_ns_, epoch));
}

void Pit8254::restore_state(const state::SectionReader& in, uint64_t epoch) {
  std::array<Channel, 3> ch;
  for (int i = 0; i < 3; ++i) {
    Channel& c = ch[i];
    std::string p = "ch" + std::to_string(i) + "_";
    c.mode = in.u8(p + "mode");
    c.access = in.u8(p + "access");
    if (c.mode > 5) in.fail("field '" + p + "mode' = " + std::to_string(c.mode) + " is not a PIT mode");
    if (c.access < 1 || c.access > 3) in.fail("field '" + p + "access' is not an access mode");
    c.bcd = in.boolean(p + "bcd");
    c.gate = in.boolean(p + "gate");
    c.reload = in.u32(p + "reload");
    if (c.reload == 0 || c.reload > 0x10000) in.fail("field '" + p + "reload' is outside [1, 65536]");
    c.counting = in.boolean(p + "counting");
    c.null_count = in.boolean(p + "null_count");
    c.load_ns = to_host(in.u64(p + "load_ns"), epoch);
    c.paused = in.boolean(p + "paused");
    c.paused_ticks = in.u64(p + "paused_ticks");
    c.write_msb_next = in.boolean(p + "write_msb_next");
    c.write_lsb = in.u8(p + "write_lsb");
    c.read_msb_next = in.boolean(p + "read_msb_next");
    c.count_latched = in.boolean(p + "count_latched");
    c.latched_count = in.u16(p + "latched_count");
    c.latch_msb_next = in.boolean(p + "latch_msb_next");
    c.status_latched = in.boolean(p + "status_latched");
    c.latched_status = in.u8(p + "latched_status");
  }
  uint8_t port61 = in.u8("port61");
  uint64_t next_edge = to_host(in.u64("next_edge_ns"), epoch);
  {
    std::lock_guard lock(mutex_);
    ch_ = ch;
    port61_ = port61 & 0x0F;
    next_edge_ns_ = next_edge;
  }
  if (reprogrammed_) reprogrammed_();
}

// ---------------------------------------------------------------------------------------------
// The platform

namespace {

HostGuestClock& host_clock(GuestClock& clock) {
  auto* host = dynamic_cast<HostGuestClock*>(&clock);
  if (!host) throw Error("emu platform: only a host-driven guest clock can be saved or restored");
  return *host;
}

}  // namespace

void PcPlatform::save_state(state::Writer& out) {
  HostGuestClock& clock = host_clock(*clock_);
  uint64_t epoch = clock.boot_ns();
  auto& c = out.section("emu/clock");
  c.u64("guest_ns", clock.now_ns() - epoch);
  c.u64("tsc_hz", clock.tsc_hz());
  c.u32("vcpus", vcpus());
  for (uint32_t i = 0; i < vcpus(); ++i) apics_[i]->save_state(out.section("emu/lapic" + std::to_string(i)), epoch);
  ioapic_->save_state(out.section("emu/ioapic"));
  auto& pic = out.section("emu/pic");
  pic_master_->save_state(pic, "master_");
  pic_slave_->save_state(pic, "slave_");
  pit_->save_state(out.section("emu/pit"), epoch);
}

void PcPlatform::restore_state(const state::Document& in) {
  HostGuestClock& clock = host_clock(*clock_);
  const auto& c = in.section("emu/clock");
  if (c.u64("tsc_hz") != clock.tsc_hz())
    c.fail("the guest TSC ran at " + std::to_string(c.u64("tsc_hz")) + " Hz, this platform's at " +
           std::to_string(clock.tsc_hz()) + " Hz");
  if (c.u32("vcpus") != vcpus())
    c.fail("the snapshot has " + std::to_string(c.u32("vcpus")) + " vCPUs, this machine " +
           std::to_string(vcpus()));
  clock.continue_at(c.u64("guest_ns"));
  uint64_t epoch = clock.boot_ns();
  for (uint32_t i = 0; i < vcpus(); ++i) apics_[i]->restore_state(in.section("emu/lapic" + std::to_string(i)), epoch);
  ioapic_->restore_state(in.section("emu/ioapic"));
  pic_master_->restore_state(in.section("emu/pic"), "master_");
  pic_slave_->restore_state(in.section("emu/pic"), "slave_");
  pit_->restore_state(in.section("emu/pit"), epoch);
}

}  // namespace keel::emu
