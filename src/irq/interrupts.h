// How devices raise interrupts, independent of the engine.
//
// The engine owns the interrupt controllers (KVM: the in-kernel irqchip; emu: userspace IOAPIC +
// LAPIC models) and exposes them as an InterruptController. Devices hold an IrqLine (one GSI) or
// send MSI messages; they never see the engine.
#pragma once

#include <cstdint>

namespace keel {

struct MsiMessage {
  uint64_t address = 0;
  uint32_t data = 0;
};

class InterruptController {
 public:
  virtual ~InterruptController() = default;
  // Sets the level of IOAPIC/PIC input `gsi`. Edge-triggered users call pulse().
  virtual void set_irq(uint32_t gsi, bool level) = 0;
  // Delivers an MSI write (address 0xFEExxxxx, data = vector and delivery mode).
  virtual void send_msi(const MsiMessage& msg) = 0;
};

// One interrupt line, as a device sees it.
class IrqLine {
 public:
  IrqLine() = default;
  IrqLine(InterruptController* controller, uint32_t gsi) : controller_(controller), gsi_(gsi) {}

  void set(bool level) const {
    if (controller_) controller_->set_irq(gsi_, level);
  }
  void raise() const { set(true); }
  void lower() const { set(false); }
  void pulse() const {
    set(true);
    set(false);
  }
  uint32_t gsi() const { return gsi_; }

 private:
  InterruptController* controller_ = nullptr;
  uint32_t gsi_ = 0;
};

}  // namespace keel
