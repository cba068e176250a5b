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
  bool protected_mode = false;  // entered in 32-bit protected mode (else keel's 64-bit entry)
};

std::vector<ProbeGuest> probe_guests();

}  // namespace keel
