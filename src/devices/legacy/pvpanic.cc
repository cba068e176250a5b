#include "devices/legacy/pvpanic.h"

#include <misc/pvpanic.h>

#include "base/log.h"

namespace keel {

void PvPanic::read(uint64_t, std::span<uint8_t> data) {
  for (auto& b : data) b = 0;
  if (!data.empty()) data[0] = PVPANIC_PANICKED | PVPANIC_CRASH_LOADED;
}

void PvPanic::write(uint64_t, std::span<const uint8_t> data) {
  if (data.empty()) return;
  if (data[0] & PVPANIC_PANICKED) {
    power_.request_stop(StopReason::kPanic, "pvpanic: the guest kernel panicked");
  } else if (data[0] & PVPANIC_CRASH_LOADED) {
    log::warn("pvpanic: the guest kernel crashed and its crash kernel took over");
  }
}

}  // namespace keel
