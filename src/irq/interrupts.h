// How devices raise interrupts, independent of the engine.
//
// The engine owns the interrupt controllers (KVM: the in-kernel irqchip; emu: userspace IOAPIC +
// LAPIC models) and exposes them as an InterruptController. Devices hold an IrqLine (one GSI) or
// send MSI messages; they never see the engine.
#pragma once

#include <cstdint>
#include <memory>

namespace keel {

struct MsiMessage {
  uint64_t address = 0;
  uint32_t data = 0;
  bool operator==(const MsiMessage&) const = default;
};

// One MSI source a device fires again and again (an MSI-X vector), made by
// InterruptController::create_msi_route(). The default sends the message with send_msi() on the
// firing thread; the KVM engine binds an eventfd to a GSI route (irqfd), so firing is one
// eventfd write and reprogramming is KVM_SET_GSI_ROUTING. The owner serialises set_message()
// and fire() (MsixTable: its mutex).
class MsiRoute {
 public:
  virtual ~MsiRoute() = default;
  // The guest reprogrammed the vector: later fire() calls deliver `msg`.
  virtual void set_message(const MsiMessage& msg) = 0;
  virtual void fire() = 0;
};

class InterruptController {
 public:
  virtual ~InterruptController() = default;
  // Sets the level of IOAPIC/PIC input `gsi`. Edge-triggered users call pulse().
  virtual void set_irq(uint32_t gsi, bool level) = 0;
  // Delivers an MSI write (address 0xFEExxxxx, data = vector and delivery mode).
  virtual void send_msi(const MsiMessage& msg) = 0;
  // A route that delivers `msg` on every fire(). Default: send_msi() per fire (SendMsiRoute).
  virtual std::unique_ptr<MsiRoute> create_msi_route(const MsiMessage& msg);
};

// The engine-independent MsiRoute: fire() is send_msi(message) on the calling thread.
class SendMsiRoute final : public MsiRoute {
 public:
  SendMsiRoute(InterruptController& controller, const MsiMessage& msg)
      : controller_(controller), msg_(msg) {}
  void set_message(const MsiMessage& msg) override { msg_ = msg; }
  void fire() override { controller_.send_msi(msg_); }

 private:
  InterruptController& controller_;
  MsiMessage msg_;
};

inline std::unique_ptr<MsiRoute> InterruptController::create_msi_route(const MsiMessage& msg) {
  return std::make_unique<SendMsiRoute>(*this, msg);
}

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
