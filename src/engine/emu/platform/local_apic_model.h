// LocalApicModel: a userspace xAPIC (one per vCPU) implementing the emu CPU seam
// (engine/emu/local_apic.h).
//
// Registers of the 4 KiB MMIO page: ID, version, TPR/APR/PPR, EOI, LDR/DFR, SVR, ISR/TMR/IRR,
// ESR, ICR, the six LVTs, and the timer (initial/current count, divide configuration) in one-shot,
// periodic and TSC-deadline modes. The APIC bus clock runs at 1 GHz (1 tick per ns before the
// divider). Timers are deadlines in guest time (GuestClock); nothing runs on its own: expiry is
// computed when the vCPU asks (pending_vector(), wait_for_interrupt(), register reads) and the
// DeadlineWatcher only raises the attention flag when a deadline passes.
//
// Threads: the owning vCPU thread calls everything; other threads (devices through the IOAPIC or
// MSIs, other vCPUs' IPIs, the watcher, the PIT on another vCPU) only call deliver_fixed(),
// receive(), wake(), platform_timers_changed() and the DeadlineClient functions. One mutex guards
// the registers; it is never held while calling out of the APIC (ApicBus, IOAPIC, platform poll),
// so the lock order is always PIT -> IOAPIC -> LAPIC.
#pragma once

#include <array>
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <mutex>
#include <optional>

#include "engine/emu/local_apic.h"
#include "engine/emu/platform/apic_bus.h"
#include "engine/emu/platform/deadline_watcher.h"
#include "state/state_format.h"

namespace keel::emu {

// APIC register offsets within the MMIO page.
namespace apic_reg {
inline constexpr uint32_t kId = 0x20;
inline constexpr uint32_t kVersion = 0x30;
inline constexpr uint32_t kTpr = 0x80;
inline constexpr uint32_t kApr = 0x90;
inline constexpr uint32_t kPpr = 0xA0;
inline constexpr uint32_t kEoi = 0xB0;
inline constexpr uint32_t kRrd = 0xC0;
inline constexpr uint32_t kLdr = 0xD0;
inline constexpr uint32_t kDfr = 0xE0;
inline constexpr uint32_t kSvr = 0xF0;
inline constexpr uint32_t kIsr = 0x100;
inline constexpr uint32_t kTmr = 0x180;
inline constexpr uint32_t kIrr = 0x200;
inline constexpr uint32_t kEsr = 0x280;
inline constexpr uint32_t kIcrLow = 0x300;
inline constexpr uint32_t kIcrHigh = 0x310;
inline constexpr uint32_t kLvtTimer = 0x320;
inline constexpr uint32_t kLvtThermal = 0x330;
inline constexpr uint32_t kLvtPerf = 0x340;
inline constexpr uint32_t kLvtLint0 = 0x350;
inline constexpr uint32_t kLvtLint1 = 0x360;
inline constexpr uint32_t kLvtError = 0x370;
inline constexpr uint32_t kTimerInitialCount = 0x380;
inline constexpr uint32_t kTimerCurrentCount = 0x390;
inline constexpr uint32_t kTimerDivide = 0x3E0;
}  // namespace apic_reg

inline constexpr uint32_t kApicVersion = 0x0005'0014;  // version 0x14, 6 LVT entries (max LVT 5)
inline constexpr uint32_t kLvtMasked = 1u << 16;
inline constexpr uint32_t kLvtTimerPeriodic = 1u << 17;
inline constexpr uint32_t kLvtTimerTscDeadline = 2u << 17;
inline constexpr uint32_t kSvrEnable = 1u << 8;
inline constexpr uint64_t kApicBaseBspBit = 1ull << 8;
inline constexpr uint64_t kApicBaseEnableBit = 1ull << 11;
// ESR bits.
inline constexpr uint32_t kEsrSendIllegalVector = 1u << 5;
inline constexpr uint32_t kEsrReceiveIllegalVector = 1u << 6;
// A periodic timer never fires faster than this (as KVM's min_timer_period_us): a guest that
// programs a 1-tick period would otherwise keep a host core busy with interrupts.
inline constexpr uint64_t kMinPeriodicNs = 50'000;

class LocalApicModel final : public LocalApic, public DeadlineClient {
 public:
  // `id` is the APIC id (keel: the vCPU index); the BSP starts with IA32_APIC_BASE.BSP set.
  // `watcher` may be null (tests drive time themselves).
  LocalApicModel(uint32_t id, const GuestClock& clock, ApicBus& bus,
                 DeadlineWatcher* watcher = nullptr);

  // ---- LocalApic (the emu CPU seam) ----
  uint64_t base_msr() const override;
  void set_base_msr(uint64_t value) override;
  void mmio_read(uint32_t offset, std::span<uint8_t> data) override;
  void mmio_write(uint32_t offset, std::span<const uint8_t> data) override;
  uint8_t cr8() const override;
  void set_cr8(uint8_t value) override;
  uint64_t tsc_deadline() const override;
  void set_tsc_deadline(uint64_t value) override;
  bool maybe_pending() const override { return attention_.load(std::memory_order_relaxed) != 0; }
  const std::atomic<uint32_t>* attention_word() const override { return &attention_; }
  int pending_vector() override;
  void accept(int vector) override;
  void wait_for_interrupt(const std::atomic<bool>& kicked) override;
  void wake() override;
  void deliver_fixed(uint8_t vector, bool level_triggered) override;

  // ---- platform side ----
  // Any message from the ApicBus (thread-safe): fixed/lowest-priority go to the IRR; NMI, INIT
  // and SIPI are recorded for the CPU (see take_*); SMI and ExtINT are dropped.
  void receive(const ApicMessage& msg);
  // Destination match for the ApicBus (thread-safe, lock-free).
  bool matches(uint8_t destination, bool logical) const;
  uint32_t id() const { return id_.load(std::memory_order_relaxed) >> 24; }

  // Events beyond fixed interrupts, for the CPU: NMI delivery, INIT and SIPI (SMP start-up).
  // Each returns and clears its event. They also raise maybe_pending(), end a HLT wait and call
  // the event listener.
  bool take_nmi() override;
  bool take_init() override;
  std::optional<uint8_t> take_sipi() override;
  void set_event_listener(std::function<void()> listener) override;
  void wait_for_event(const std::atomic<bool>& kicked) override;

  // The BSP polls the platform timers (PIT) whenever it checks its own timer: `poll(now)` fires
  // what is due and returns the next deadline (kNever if none). Set before the vCPU runs; called
  // without the APIC lock held.
  void set_platform_timers(std::function<uint64_t(uint64_t now_ns)> poll);
  // Thread-safe: a platform timer was reprogrammed; re-poll soon.
  void platform_timers_changed();

  // ---- DeadlineClient (watcher thread) ----
  uint64_t next_deadline_ns() const override;
  void deadline_reached() override;

  // Register value as the guest would read it (tests, debugging).
  uint32_t read_register(uint32_t offset);

  // Snapshots: every register, the timer and pending events. Times are saved relative to
  // `epoch_ns` (the host time of guest time 0, HostGuestClock::boot_ns()) so a later process
  // whose clock starts elsewhere continues the count. Called with the vCPUs paused;
  // restore_state() checks every field.
  void save_state(state::SectionWriter& out, uint64_t epoch_ns) const;
  void restore_state(const state::SectionReader& in, uint64_t epoch_ns);

 private:
  struct VectorSet {
    std::array<uint64_t, 4> w{};
    void set(int v) { w[v >> 6] |= 1ull << (v & 63); }
    void clear(int v) { w[v >> 6] &= ~(1ull << (v & 63)); }
    bool test(int v) const { return (w[v >> 6] >> (v & 63)) & 1; }
    int highest() const;  // -1 if empty
    uint32_t word(int i) const { return static_cast<uint32_t>(w[i / 2] >> (32 * (i % 2))); }
  };
  enum Attention : uint32_t { kIrq = 1, kTimerDue = 2 };
  // What the caller must do after releasing the lock.
  struct Outgoing {
    std::optional<ApicMessage> ipi;
    int eoi_vector = -1;  // level-triggered EOI to broadcast
  };

  uint32_t read_locked(uint32_t reg, uint64_t now);
  void write_locked(uint32_t reg, uint32_t value, uint64_t now, Outgoing& out);
  void finish(const Outgoing& out);

  bool enabled_locked() const;
  uint32_t ppr_locked() const;
  uint32_t apr_locked() const;
  int deliverable_locked() const;  // vector or -1
  void update_attention_locked();
  void set_irr_locked(uint8_t vector, bool level);
  void signal_error_locked(uint32_t esr_bits);
  void reset_locked();
  void mask_all_lvts_locked();

  // Timer.
  uint32_t timer_mode_locked() const { return lvt_[0] & (3u << 17); }
  uint64_t divisor_locked() const;
  uint32_t current_count_locked(uint64_t now);
  void start_count_locked(uint64_t now, uint32_t count);
  void stop_timer_locked();
  void fire_timer_locked(uint64_t now);
  void set_timer_deadline_locked(uint64_t deadline_ns);
  void publish_deadline();
  uint64_t poll_platform(uint64_t now);

  const GuestClock& clock_;
  ApicBus& bus_;
  DeadlineWatcher* watcher_;
  const bool bsp_;

  mutable std::mutex mutex_;
  std::condition_variable cv_;
  bool woken_ = false;
  std::function<void()> event_listener_;  // under mutex_

  // Registers (mutex_).
  uint64_t base_msr_;
  uint32_t tpr_ = 0;
  uint32_t svr_ = 0xFF;
  uint32_t esr_ = 0, esr_pending_ = 0;
  uint32_t icr_low_ = 0, icr_high_ = 0;
  std::array<uint32_t, 6> lvt_{};  // timer, thermal, perf, LINT0, LINT1, error
  VectorSet isr_, tmr_, irr_;
  uint32_t divide_conf_ = 0;
  uint32_t initial_count_ = 0;
  // One-shot/periodic: the count was `count_start_value_` at `count_start_ns_`.
  bool counting_ = false;
  uint64_t count_start_ns_ = 0;
  uint32_t count_start_value_ = 0;
  uint64_t tsc_deadline_ = 0;
  uint8_t nmi_pending_ = 0;  // NMIs not yet taken, at most 2
  bool init_pending_ = false;
  std::optional<uint8_t> sipi_vector_;

  // Read without the lock (ApicBus routing, the watcher, the CPU's block-boundary check).
  std::atomic<uint32_t> id_;
  std::atomic<uint32_t> ldr_{0};
  std::atomic<uint32_t> dfr_{0xFFFF'FFFF};
  std::atomic<uint32_t> attention_{0};
  std::atomic<uint64_t> timer_deadline_ns_{UINT64_MAX};
  std::atomic<uint64_t> platform_deadline_ns_{UINT64_MAX};

  std::function<uint64_t(uint64_t)> platform_poll_;
};

}  // namespace keel::emu
