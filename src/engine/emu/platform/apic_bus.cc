#include "engine/emu/platform/apic_bus.h"

#include "engine/emu/platform/local_apic_model.h"

namespace keel::emu {

void ApicBus::deliver(const ApicMessage& msg, LocalApicModel* source) const {
  switch (msg.shorthand) {
    case Shorthand::kSelf:
      if (source) source->receive(msg);
      return;
    case Shorthand::kAllIncludingSelf:
    case Shorthand::kAllExcludingSelf:
      for (auto* apic : apics_)
        if (apic != source || msg.shorthand == Shorthand::kAllIncludingSelf) apic->receive(msg);
      return;
    case Shorthand::kNone:
      break;
  }
  for (auto* apic : apics_) {
    if (!apic->matches(msg.destination, msg.logical)) continue;
    apic->receive(msg);
    if (msg.mode == DeliveryMode::kLowestPriority) return;
  }
}

}  // namespace keel::emu
