// EmuInterruptController: keel::InterruptController for the emu engine. Device interrupt lines
// (GSIs) go to IOAPIC pins; MSI writes are decoded and delivered straight to the local APICs.
// Thread-safe: devices call it from any thread.
#pragma once

#include <optional>

#include "engine/emu/platform/apic_bus.h"
#include "engine/emu/platform/io_apic.h"
#include "irq/interrupts.h"

namespace keel::emu {

// Decodes an MSI (address 0xFEExxxxx: destination id bits 19:12, destination mode bit 2; data:
// vector bits 7:0, delivery mode bits 10:8). nullopt for an address outside the MSI window or a
// delivery mode MSIs cannot use (SIPI, reserved). MSIs are edge-triggered.
std::optional<ApicMessage> decode_msi(const MsiMessage& msg);

class EmuInterruptController final : public InterruptController {
 public:
  EmuInterruptController(IoApic& ioapic, ApicBus& bus) : ioapic_(ioapic), bus_(bus) {}
  // GSI n is IOAPIC pin n; GSIs beyond the IOAPIC's 24 pins are ignored.
  void set_irq(uint32_t gsi, bool level) override { ioapic_.set_irq(gsi, level); }
  // Malformed messages are dropped (a device cannot make the host fail).
  void send_msi(const MsiMessage& msg) override {
    if (auto m = decode_msi(msg)) bus_.deliver(*m);
  }

 private:
  IoApic& ioapic_;
  ApicBus& bus_;
};

}  // namespace keel::emu
