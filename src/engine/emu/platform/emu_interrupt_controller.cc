#include "engine/emu/platform/emu_interrupt_controller.h"

namespace keel::emu {

std::optional<ApicMessage> decode_msi(const MsiMessage& msg) {
  if ((msg.address >> 20) != 0xFEE) return std::nullopt;  // not the MSI window (high dword 0)
  ApicMessage m;
  m.destination = static_cast<uint8_t>(msg.address >> 12);
  m.logical = msg.address & (1u << 2);
  m.vector = static_cast<uint8_t>(msg.data);
  m.mode = static_cast<DeliveryMode>((msg.data >> 8) & 7);
  m.level_triggered = false;
  m.assert = true;
  switch (m.mode) {
    case DeliveryMode::kFixed:
    case DeliveryMode::kLowestPriority:
    case DeliveryMode::kNmi:
    case DeliveryMode::kInit:
    case DeliveryMode::kSmi:
    case DeliveryMode::kExtInt:
      return m;
    default:
      return std::nullopt;
  }
}

}  // namespace keel::emu
