// ApicBus: routes interrupt messages (IOAPIC redirections, MSI writes, IPIs from the ICR) to the
// local APICs of one VM, and level-triggered EOIs from the local APICs back to the IOAPIC.
//
// Thread-safe: deliver() may be called from any thread (device threads, vCPU threads). The set of
// APICs is fixed before any vCPU runs.
#pragma once

#include <cstdint>
#include <functional>
#include <vector>

namespace keel::emu {

class LocalApicModel;

enum class DeliveryMode : uint8_t {
  kFixed = 0,
  kLowestPriority = 1,
  kSmi = 2,
  kNmi = 4,
  kInit = 5,
  kStartup = 6,
  kExtInt = 7,
};

enum class Shorthand : uint8_t { kNone = 0, kSelf = 1, kAllIncludingSelf = 2, kAllExcludingSelf = 3 };

struct ApicMessage {
  uint8_t vector = 0;
  DeliveryMode mode = DeliveryMode::kFixed;
  bool logical = false;          // destination mode: logical (LDR match) or physical (APIC id)
  bool level_triggered = false;  // trigger mode: level (TMR set, EOI broadcast) or edge
  bool assert = true;            // level: assert (1) or de-assert (0); INIT de-assert is ignored
  uint8_t destination = 0;       // xAPIC: 8-bit APIC id, or logical mask; 0xFF = broadcast
  Shorthand shorthand = Shorthand::kNone;
};

class ApicBus {
 public:
  // Not thread-safe: called while the platform is being built.
  void attach(LocalApicModel* apic) { apics_.push_back(apic); }
  // Where level-triggered EOIs go (the IOAPIC). Set once before vCPUs run.
  void set_eoi_listener(std::function<void(uint8_t vector)> listener) {
    eoi_listener_ = std::move(listener);
  }

  // Delivers `msg` to every APIC it selects. `source` is the sender for shorthands (nullptr for
  // the IOAPIC and MSIs, which have none). Lowest-priority delivery goes to the first selected
  // APIC (lowest index): arbitration by priority buys nothing with our few vCPUs.
  void deliver(const ApicMessage& msg, LocalApicModel* source = nullptr) const;
  // Called by a local APIC (without its own lock held) when it EOIs a level-triggered vector.
  void broadcast_eoi(uint8_t vector) const {
    if (eoi_listener_) eoi_listener_(vector);
  }

  size_t size() const { return apics_.size(); }
  LocalApicModel* apic(size_t i) const { return i < apics_.size() ? apics_[i] : nullptr; }

 private:
  std::vector<LocalApicModel*> apics_;
  std::function<void(uint8_t)> eoi_listener_;
};

}  // namespace keel::emu
