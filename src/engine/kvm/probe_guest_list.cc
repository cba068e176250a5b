#include "engine/kvm/probe_guest_list.h"

#include <cstring>

#include "base/error.h"
#include "engine/kvm/probe_guests.h"  // generated

namespace keel {

namespace {

struct Described {
  const char* name;
  const char* description;
  bool protected_mode = false;
};

// Order: the basic paths first, so the reason names the most fundamental failure.
constexpr Described kProbes[] = {
    {"exception_cpl0", "exception delivery (#UD, #GP) at CPL0"},
    {"timer_interrupt_cpl0", "LAPIC timer interrupt waking HLT at CPL0"},
    {"int3_cpl0", "INT3 at CPL0"},
    {"xgetbv_cpl0", "XGETBV at CPL0"},
    {"xsave_cpl0", "XSAVE at CPL0"},
    {"xrstor_cpl0", "XRSTOR at CPL0"},
    {"cmpxchg16b_cpl0", "CMPXCHG16B at CPL0"},
    // Multiboot and PVH kernels start here; Linux never needs it from KVM (its SMP trampoline
    // passes through it, but only on the emu engine).
    {"protected_mode_cpl0", "32-bit protected-mode entry (paging off) at CPL0", true},
};

}  // namespace

std::vector<ProbeGuest> probe_guests() {
  std::vector<ProbeGuest> out;
  for (const auto& p : kProbes) {
    const embedded::EmbeddedGuest* found = nullptr;
    for (const auto& g : embedded::kEmbeddedGuests)
      if (std::strcmp(g.name, p.name) == 0) found = &g;
    if (!found) throw Error(std::string("probe guest ") + p.name + " is not embedded");
    out.push_back({p.name, p.description, {found->data, found->size}, p.protected_mode});
  }
  return out;
}

}  // namespace keel
