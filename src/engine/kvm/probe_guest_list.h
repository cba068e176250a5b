// The probe guests probe_kvm() runs, in order, with what each one checks. The code is assembled
// from probe_guests/NAME.asm at build time (cmake/embed_guests.cmake).
#pragma once

#include <cstdint>
#include <span>
#include <vector>

namespace keel {

struct ProbeGuest {
  const char* name;
  const char* description;
  std::span<const uint8_t> code;
};

std::vector<ProbeGuest> probe_guests();

}  // namespace keel
