// The seam between the emu CPU (engine/emu/cpu*) and the emu platform (local APIC, IOAPIC, PIT,
// clocks). The CPU calls these at instruction boundaries and for APIC accesses; the platform
// implements them. Everything here is per vCPU unless said otherwise.
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <optional>
#include <span>

namespace keel::emu {

inline constexpr uint64_t kApicDefaultBase = 0xFEE0'0000;

// Guest time for one VM: the TSC runs at a fixed advertised frequency derived from the host's
// CLOCK_MONOTONIC, so a guest `sleep 1` takes one second of host time.
class GuestClock {
 public:
  virtual ~GuestClock() = default;
  virtual uint64_t tsc_hz() const = 0;
  virtual uint64_t read_tsc() const = 0;
  virtual uint64_t now_ns() const = 0;  // host CLOCK_MONOTONIC, ns
};

class LocalApic {
 public:
  virtual ~LocalApic() = default;

  // IA32_APIC_BASE MSR (0x1B). Writes that set reserved bits are the CPU's to refuse (#GP).
  virtual uint64_t base_msr() const = 0;
  virtual void set_base_msr(uint64_t value) = 0;

  // xAPIC MMIO page accesses (offset within the 4 KiB page at the APIC base).
  virtual void mmio_read(uint32_t offset, std::span<uint8_t> data) = 0;
  virtual void mmio_write(uint32_t offset, std::span<const uint8_t> data) = 0;

  // CR8 <-> TPR[7:4].
  virtual uint8_t cr8() const = 0;
  virtual void set_cr8(uint8_t value) = 0;

  // IA32_TSC_DEADLINE MSR (0x6E0).
  virtual uint64_t tsc_deadline() const = 0;
  virtual void set_tsc_deadline(uint64_t value) = 0;

  // Cheap check (an atomic load) the CPU makes at block boundaries: is anything pending that may
  // need attention (an interrupt request, an expired timer)? False positives are allowed.
  virtual bool maybe_pending() const = 0;
  // The word maybe_pending() reads (nonzero: maybe pending), for translated code to test inline
  // at block entries; nullptr when the model has none (the CPU then checks at every entry).
  virtual const std::atomic<uint32_t>* attention_word() const { return nullptr; }
  // Fires expired timers, then returns the highest-priority deliverable vector (IRR above PPR)
  // without accepting it, or -1. Called when RFLAGS.IF=1 and no STI/MOV SS shadow.
  virtual int pending_vector() = 0;
  // Accepts `vector` (IRR -> ISR); the CPU then delivers it through the IDT.
  virtual void accept(int vector) = 0;

  // HLT: blocks the calling vCPU thread until an interrupt becomes deliverable, a timer expires,
  // or `kicked` becomes true (another thread then calls wake()). Returns at once if one already is.
  virtual void wait_for_interrupt(const std::atomic<bool>& kicked) = 0;
  // Thread-safe: wakes wait_for_interrupt().
  virtual void wake() = 0;

  // Thread-safe delivery from the IOAPIC, MSI writes and other vCPUs' IPIs (fixed mode).
  virtual void deliver_fixed(uint8_t vector, bool level_triggered) = 0;

  // NMI, INIT and SIPI IPIs from other vCPUs, each taken once by this vCPU's thread. The
  // listener is called (from the sending thread, briefly) when one arrives; nullptr removes it.
  virtual bool take_nmi() { return false; }
  virtual bool take_init() { return false; }
  virtual std::optional<uint8_t> take_sipi() { return std::nullopt; }
  virtual void set_event_listener(std::function<void()> listener) {}
  // A vCPU waiting for its SIPI, or halted with interrupts off: blocks until an NMI, INIT or SIPI
  // arrives or `kicked` becomes true (then wake() is called); may return early. Returns at once
  // if one already has.
  virtual void wait_for_event(const std::atomic<bool>& kicked) {}
};

}  // namespace keel::emu
