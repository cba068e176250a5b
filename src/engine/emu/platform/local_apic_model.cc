#include "engine/emu/platform/local_apic_model.h"

#include <algorithm>
#include <bit>
#include <chrono>
#include <cstring>
#include <utility>

#include "engine/emu/platform/guest_clock.h"

namespace keel::emu {

namespace {

constexpr uint32_t kLvtTimerModeMask = 3u << 17;
// Writable bits per LVT (timer, thermal, perf, LINT0, LINT1, error); delivery status and remote
// IRR are read-only.
constexpr std::array<uint32_t, 6> kLvtWritable = {0x0007'00FF, 0x0001'07FF, 0x0001'07FF,
                                                  0x0001'A7FF, 0x0001'A7FF, 0x0001'00FF};
constexpr uint32_t kIcrLowWritable = 0x000C'CFFF;
constexpr uint64_t kApicBaseWritable = 0x000F'FFFF'FFFF'F000ull | kApicBaseBspBit |
                                       kApicBaseEnableBit;

int lvt_index(uint32_t reg) {
  if (reg < apic_reg::kLvtTimer || reg > apic_reg::kLvtError) return -1;
  return static_cast<int>((reg - apic_reg::kLvtTimer) / 0x10);
}

}  // namespace

int LocalApicModel::VectorSet::highest() const {
  for (int i = 3; i >= 0; --i)
    if (w[i]) return i * 64 + 63 - std::countl_zero(w[i]);
  return -1;
}

LocalApicModel::LocalApicModel(uint32_t id, const GuestClock& clock, ApicBus& bus,
                               DeadlineWatcher* watcher)
    : clock_(clock),
      bus_(bus),
      watcher_(watcher),
      bsp_(id == 0),
      base_msr_(kApicDefaultBase | kApicBaseEnableBit | (id == 0 ? kApicBaseBspBit : 0)),
      id_(id << 24) {
  std::lock_guard lock(mutex_);
  reset_locked();
}

// ---------------------------------------------------------------------------------------------
// Register file

uint64_t LocalApicModel::base_msr() const {
  std::lock_guard lock(mutex_);
  return base_msr_;
}

void LocalApicModel::set_base_msr(uint64_t value) {
  {
    std::lock_guard lock(mutex_);
    bool was_enabled = base_msr_ & kApicBaseEnableBit;
    base_msr_ = value & kApicBaseWritable;
    // Hardware-disabling the APIC resets it (SDM 10.4.3); re-enabling does not restore state.
    if (was_enabled && !(base_msr_ & kApicBaseEnableBit)) reset_locked();
    update_attention_locked();
  }
  publish_deadline();
}

uint8_t LocalApicModel::cr8() const {
  std::lock_guard lock(mutex_);
  return static_cast<uint8_t>((tpr_ >> 4) & 0xF);
}

void LocalApicModel::set_cr8(uint8_t value) {
  std::lock_guard lock(mutex_);
  tpr_ = (value & 0xFu) << 4;
  update_attention_locked();
}

void LocalApicModel::mmio_read(uint32_t offset, std::span<uint8_t> data) {
  std::fill(data.begin(), data.end(), 0);
  // Registers are 32 bits wide at 16-byte strides; a read inside one returns its bytes, anything
  // else (straddling, past the page, wider than 4 bytes) reads as zeros.
  uint32_t within = offset & 0xF;
  if (offset >= 0x1000 || data.empty() || within + data.size() > 4) return;
  uint32_t v = read_register(offset & ~0xFu);
  std::memcpy(data.data(), reinterpret_cast<const uint8_t*>(&v) + within, data.size());
}

void LocalApicModel::mmio_write(uint32_t offset, std::span<const uint8_t> data) {
  // Only aligned 32-bit writes reach a register (as KVM); others are dropped.
  if (offset >= 0x1000 || (offset & 0xF) != 0 || data.size() != 4) return;
  uint32_t value;
  std::memcpy(&value, data.data(), 4);
  Outgoing out;
  {
    std::lock_guard lock(mutex_);
    write_locked(offset, value, clock_.now_ns(), out);
  }
  finish(out);
}

uint32_t LocalApicModel::read_register(uint32_t offset) {
  uint32_t v;
  {
    std::lock_guard lock(mutex_);
    v = read_locked(offset & 0xFF0, clock_.now_ns());
  }
  publish_deadline();
  return v;
}

uint32_t LocalApicModel::read_locked(uint32_t reg, uint64_t now) {
  using namespace apic_reg;
  if (reg >= kIsr && reg < kTmr) return isr_.word((reg - kIsr) / 0x10);
  if (reg >= kTmr && reg < kIrr) return tmr_.word((reg - kTmr) / 0x10);
  if (reg >= kIrr && reg < kEsr) return irr_.word((reg - kIrr) / 0x10);
  if (int i = lvt_index(reg); i >= 0) return lvt_[i];
  switch (reg) {
    case kId: return id_.load();
    case kVersion: return kApicVersion;
    case kTpr: return tpr_;
    case kApr: return apr_locked();
    case kPpr: return ppr_locked();
    case kLdr: return ldr_.load();
    case kDfr: return dfr_.load();
    case kSvr: return svr_;
    case kEsr: return esr_;
    case kIcrLow: return icr_low_;  // delivery status (bit 12) is always idle: IPIs are instant
    case kIcrHigh: return icr_high_;
    case kTimerInitialCount: return initial_count_;
    case kTimerCurrentCount:
      fire_timer_locked(now);
      update_attention_locked();
      return current_count_locked(now);
    case kTimerDivide: return divide_conf_;
    default: return 0;  // EOI, RRD and reserved offsets read as zero
  }
}

void LocalApicModel::write_locked(uint32_t reg, uint32_t value, uint64_t now, Outgoing& out) {
  using namespace apic_reg;
  if (int i = lvt_index(reg); i >= 0) {
    uint32_t v = value & kLvtWritable[i];
    if (!(svr_ & kSvrEnable)) v |= kLvtMasked;  // software-disabled: LVTs stay masked
    if (i == 0) {
      fire_timer_locked(now);
      // Changing the timer mode disarms the timer (SDM 10.5.4.1).
      if ((v & kLvtTimerModeMask) != timer_mode_locked()) stop_timer_locked();
    }
    lvt_[i] = v;
    update_attention_locked();
    return;
  }
  switch (reg) {
    case kId:
      id_.store(value & 0xFF00'0000);
      break;
    case kTpr:
      tpr_ = value & 0xFF;
      update_attention_locked();
      break;
    case kEoi: {
      int v = isr_.highest();
      if (v < 0) break;
      isr_.clear(v);
      if (tmr_.test(v)) out.eoi_vector = v;
      update_attention_locked();
      break;
    }
    case kLdr:
      ldr_.store(value & 0xFF00'0000);
      break;
    case kDfr:
      dfr_.store(value | 0x0FFF'FFFF);
      break;
    case kSvr:
      svr_ = value & 0x3FF;
      if (!(svr_ & kSvrEnable)) mask_all_lvts_locked();
      update_attention_locked();
      break;
    case kEsr:
      // A write latches the errors seen since the previous write (SDM 10.5.3).
      esr_ = esr_pending_;
      esr_pending_ = 0;
      break;
    case kIcrLow: {
      icr_low_ = value & kIcrLowWritable;
      ApicMessage msg;
      msg.vector = static_cast<uint8_t>(icr_low_ & 0xFF);
      msg.mode = static_cast<DeliveryMode>((icr_low_ >> 8) & 7);
      msg.logical = icr_low_ & (1u << 11);
      msg.assert = icr_low_ & (1u << 14);
      msg.level_triggered = icr_low_ & (1u << 15);
      msg.shorthand = static_cast<Shorthand>((icr_low_ >> 18) & 3);
      msg.destination = static_cast<uint8_t>(icr_high_ >> 24);
      bool fixed = msg.mode == DeliveryMode::kFixed || msg.mode == DeliveryMode::kLowestPriority;
      if (fixed && msg.vector < 16) {
        signal_error_locked(kEsrSendIllegalVector);
        break;
      }
      if (fixed) msg.level_triggered = false;  // IPIs are edge-triggered
      out.ipi = msg;
      break;
    }
    case kIcrHigh:
      icr_high_ = value & 0xFF00'0000;
      break;
    case kTimerInitialCount:
      if (timer_mode_locked() == kLvtTimerTscDeadline) break;  // ignored in TSC-deadline mode
      initial_count_ = value;
      if (value == 0)
        stop_timer_locked();
      else
        start_count_locked(now, value);
      break;
    case kTimerDivide: {
      fire_timer_locked(now);
      uint32_t current = counting_ ? current_count_locked(now) : 0;
      divide_conf_ = value & 0xB;
      // The count carries on from where it is at the new rate.
      if (counting_) start_count_locked(now, std::max<uint32_t>(current, 1));
      update_attention_locked();
      break;
    }
    default:
      break;  // read-only and reserved registers ignore writes
  }
}

void LocalApicModel::finish(const Outgoing& out) {
  if (out.eoi_vector >= 0) bus_.broadcast_eoi(static_cast<uint8_t>(out.eoi_vector));
  if (out.ipi) bus_.deliver(*out.ipi, this);
  publish_deadline();
}

// ---------------------------------------------------------------------------------------------
// Priorities and interrupt acceptance

bool LocalApicModel::enabled_locked() const {
  return (base_msr_ & kApicBaseEnableBit) && (svr_ & kSvrEnable);
}

uint32_t LocalApicModel::ppr_locked() const {
  int isrv = std::max(isr_.highest(), 0);
  return (tpr_ >> 4) >= static_cast<uint32_t>(isrv >> 4) ? tpr_ : (isrv & 0xF0);
}

uint32_t LocalApicModel::apr_locked() const {
  uint32_t isrv = std::max(isr_.highest(), 0);
  uint32_t irrv = std::max(irr_.highest(), 0);
  uint32_t tpr_class = tpr_ >> 4;
  if (tpr_class >= (irrv >> 4) && tpr_class > (isrv >> 4)) return tpr_;
  return std::max({tpr_ & 0xF0, isrv & 0xF0, irrv & 0xF0});
}

int LocalApicModel::deliverable_locked() const {
  if (!enabled_locked()) return -1;
  int v = irr_.highest();
  if (v < 0 || static_cast<uint32_t>(v & 0xF0) <= (ppr_locked() & 0xF0)) return -1;
  return v;
}

void LocalApicModel::update_attention_locked() {
  bool irq = deliverable_locked() >= 0 || nmi_pending_ || init_pending_ || sipi_vector_;
  if (irq)
    attention_.fetch_or(kIrq);
  else
    attention_.fetch_and(~uint32_t{kIrq});
}

void LocalApicModel::set_irr_locked(uint8_t vector, bool level) {
  irr_.set(vector);
  if (level)
    tmr_.set(vector);
  else
    tmr_.clear(vector);
}

void LocalApicModel::signal_error_locked(uint32_t esr_bits) {
  esr_pending_ |= esr_bits;
  uint32_t lvt = lvt_[5];
  if (!(lvt & kLvtMasked) && (lvt & 0xFF) >= 16 && enabled_locked())
    set_irr_locked(static_cast<uint8_t>(lvt & 0xFF), false);
}

int LocalApicModel::pending_vector() {
  attention_.fetch_and(~uint32_t{kTimerDue});
  uint64_t now = clock_.now_ns();
  poll_platform(now);
  int v;
  {
    std::lock_guard lock(mutex_);
    fire_timer_locked(now);
    update_attention_locked();
    v = deliverable_locked();
  }
  publish_deadline();
  return v;
}

void LocalApicModel::accept(int vector) {
  if (vector < 0 || vector > 255) return;
  std::lock_guard lock(mutex_);
  irr_.clear(vector);
  isr_.set(vector);
  update_attention_locked();
}

void LocalApicModel::deliver_fixed(uint8_t vector, bool level_triggered) {
  {
    std::lock_guard lock(mutex_);
    if (!enabled_locked()) return;  // a disabled APIC drops fixed interrupts (as KVM)
    if (vector < 16)
      signal_error_locked(kEsrReceiveIllegalVector);
    else
      set_irr_locked(vector, level_triggered);
    update_attention_locked();
    woken_ = true;
  }
  cv_.notify_one();
}

void LocalApicModel::receive(const ApicMessage& msg) {
  switch (msg.mode) {
    case DeliveryMode::kFixed:
    case DeliveryMode::kLowestPriority:
      deliver_fixed(msg.vector, msg.level_triggered);
      return;
    case DeliveryMode::kNmi:
    case DeliveryMode::kInit:
    case DeliveryMode::kStartup:
      break;
    default:
      return;  // SMI, ExtINT and reserved modes: nothing to deliver them to
  }
  // INIT level de-assert (sent after INIT by the MP startup sequence) does nothing.
  if (msg.mode == DeliveryMode::kInit && msg.level_triggered && !msg.assert) return;
  {
    std::lock_guard lock(mutex_);
    if (msg.mode == DeliveryMode::kNmi) nmi_pending_ = true;
    if (msg.mode == DeliveryMode::kInit) init_pending_ = true;
    if (msg.mode == DeliveryMode::kStartup) sipi_vector_ = msg.vector;
    update_attention_locked();
    woken_ = true;
    if (event_listener_) event_listener_();  // only sets a flag: safe under the lock
  }
  cv_.notify_one();
}

bool LocalApicModel::matches(uint8_t destination, bool logical) const {
  if (!logical) return destination == 0xFF || destination == (id_.load() >> 24);
  uint8_t ldr = static_cast<uint8_t>(ldr_.load() >> 24);
  if (destination == 0xFF) return true;
  if ((dfr_.load() >> 28) == 0xF) return (destination & ldr) != 0;  // flat model
  // Cluster model: high nibble selects the cluster, low nibble the members.
  return (destination >> 4) == (ldr >> 4) && (destination & ldr & 0xF) != 0;
}

bool LocalApicModel::take_nmi() {
  std::lock_guard lock(mutex_);
  bool v = std::exchange(nmi_pending_, false);
  update_attention_locked();
  return v;
}

bool LocalApicModel::take_init() {
  std::lock_guard lock(mutex_);
  bool v = std::exchange(init_pending_, false);
  update_attention_locked();
  return v;
}

std::optional<uint8_t> LocalApicModel::take_sipi() {
  std::lock_guard lock(mutex_);
  auto v = std::exchange(sipi_vector_, std::nullopt);
  update_attention_locked();
  return v;
}

void LocalApicModel::mask_all_lvts_locked() {
  for (auto& l : lvt_) l |= kLvtMasked;
}

void LocalApicModel::reset_locked() {
  tpr_ = 0;
  svr_ = 0xFF;
  esr_ = esr_pending_ = 0;
  icr_low_ = icr_high_ = 0;
  lvt_.fill(kLvtMasked);
  isr_ = tmr_ = irr_ = VectorSet{};
  divide_conf_ = 0;
  initial_count_ = 0;
  stop_timer_locked();
  ldr_.store(0);
  dfr_.store(0xFFFF'FFFF);
}

// ---------------------------------------------------------------------------------------------
// Timer

uint64_t LocalApicModel::divisor_locked() const {
  uint32_t code = ((divide_conf_ & 8) >> 1) | (divide_conf_ & 3);
  return uint64_t{1} << ((code + 1) & 7);  // 0b111 divides by 1
}

uint32_t LocalApicModel::current_count_locked(uint64_t now) {
  if (!counting_ || timer_mode_locked() == kLvtTimerTscDeadline) return 0;
  uint64_t ticks = (now - count_start_ns_) / divisor_locked();
  return ticks >= count_start_value_ ? 0 : count_start_value_ - static_cast<uint32_t>(ticks);
}

void LocalApicModel::start_count_locked(uint64_t now, uint32_t count) {
  counting_ = true;
  count_start_ns_ = now;
  count_start_value_ = count;
  uint64_t span = count * divisor_locked();
  if (timer_mode_locked() == kLvtTimerPeriodic) span = std::max(span, kMinPeriodicNs);
  set_timer_deadline_locked(now + span);
}

void LocalApicModel::stop_timer_locked() {
  counting_ = false;
  tsc_deadline_ = 0;
  timer_deadline_ns_.store(kNever);
}

void LocalApicModel::set_timer_deadline_locked(uint64_t deadline_ns) {
  timer_deadline_ns_.store(deadline_ns);
}

void LocalApicModel::fire_timer_locked(uint64_t now) {
  uint64_t due = timer_deadline_ns_.load();
  if (due > now) return;  // also kNever
  uint32_t lvt = lvt_[0];
  if (!(lvt & kLvtMasked) && enabled_locked()) {
    uint8_t vector = static_cast<uint8_t>(lvt & 0xFF);
    if (vector < 16)
      signal_error_locked(kEsrReceiveIllegalVector);
    else
      set_irr_locked(vector, false);
  }
  switch (timer_mode_locked()) {
    case kLvtTimerPeriodic: {
      uint64_t period = std::max(initial_count_ * divisor_locked(), kMinPeriodicNs);
      // Periods missed while nobody looked coalesce into this one interrupt, as the IRR would.
      uint64_t start = due + (now - due) / period * period;
      count_start_ns_ = start;
      count_start_value_ = initial_count_;
      set_timer_deadline_locked(start + period);
      break;
    }
    case kLvtTimerTscDeadline:
      stop_timer_locked();  // the MSR reads 0 once the deadline has passed
      break;
    default:
      counting_ = false;
      count_start_value_ = 0;
      timer_deadline_ns_.store(kNever);
      break;
  }
}

uint64_t LocalApicModel::tsc_deadline() const {
  std::lock_guard lock(mutex_);
  if (timer_mode_locked() != kLvtTimerTscDeadline) return 0;
  if (tsc_deadline_ != 0 && timer_deadline_ns_.load() <= clock_.now_ns()) return 0;  // expired
  return tsc_deadline_;
}

void LocalApicModel::set_tsc_deadline(uint64_t value) {
  {
    std::lock_guard lock(mutex_);
    // Writes outside TSC-deadline mode are ignored (SDM 10.5.4.1).
    if (timer_mode_locked() != kLvtTimerTscDeadline) return;
    tsc_deadline_ = value;
    if (value == 0) {
      timer_deadline_ns_.store(kNever);
    } else {
      uint64_t now = clock_.now_ns();
      uint64_t due = tsc_deadline_to_ns(clock_, value);
      set_timer_deadline_locked(due);
      // Already due: the watcher may have reported this very deadline before; flag it here.
      if (due <= now) attention_.fetch_or(kTimerDue);
    }
  }
  publish_deadline();
}

uint64_t LocalApicModel::next_deadline_ns() const {
  return std::min(timer_deadline_ns_.load(), platform_deadline_ns_.load());
}

void LocalApicModel::deadline_reached() { attention_.fetch_or(kTimerDue); }

void LocalApicModel::publish_deadline() {
  if (watcher_) watcher_->rearm(next_deadline_ns());
}

void LocalApicModel::set_platform_timers(std::function<uint64_t(uint64_t)> poll) {
  platform_poll_ = std::move(poll);
}

uint64_t LocalApicModel::poll_platform(uint64_t now) {
  if (!platform_poll_) return kNever;
  uint64_t next = platform_poll_(now);
  platform_deadline_ns_.store(next);
  return next;
}

void LocalApicModel::platform_timers_changed() {
  attention_.fetch_or(kTimerDue);
  wake();
}

// ---------------------------------------------------------------------------------------------
// HLT

void LocalApicModel::wait_for_interrupt(const std::atomic<bool>& kicked) {
  for (;;) {
    attention_.fetch_and(~uint32_t{kTimerDue});
    uint64_t now = clock_.now_ns();
    uint64_t platform_next = poll_platform(now);
    std::unique_lock lock(mutex_);
    woken_ = false;
    fire_timer_locked(now);
    update_attention_locked();
    if ((attention_.load() & kIrq) || kicked.load()) break;
    uint64_t next = std::min(timer_deadline_ns_.load(), platform_next);
    auto woken = [this] { return woken_; };
    if (next == kNever)
      cv_.wait(lock, woken);
    else if (next > now)
      cv_.wait_for(lock, std::chrono::nanoseconds(next - now), woken);
  }
  publish_deadline();
}

void LocalApicModel::set_event_listener(std::function<void()> listener) {
  std::lock_guard lock(mutex_);
  event_listener_ = std::move(listener);
}

void LocalApicModel::wait_for_event(const std::atomic<bool>& kicked) {
  std::unique_lock lock(mutex_);
  woken_ = false;
  cv_.wait(lock, [&] {
    return sipi_vector_ || init_pending_ || nmi_pending_ || woken_ || kicked.load();
  });
}

void LocalApicModel::wake() {
  {
    std::lock_guard lock(mutex_);
    woken_ = true;
  }
  cv_.notify_one();
}

}  // namespace keel::emu
