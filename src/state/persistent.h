// Persistent: how a device or model saves and restores its own state (as Firecracker's
// `persist`). The machine walks its devices and hands each one its own section; it never knows
// their fields.
//
// save_state() is called with the VM paused (no vCPU runs) and the device quiesced (its worker
// threads stopped, in-flight I/O completed: see Quiescable). restore_state() is called on a
// freshly built, not yet started device; it validates every field it reads and throws
// state::StateError naming the section and field on anything it cannot accept. A restore that
// throws leaves the machine unusable; the caller discards it (keel never runs a half-restored VM).
#pragma once

#include <cstdint>

#include "state/state_format.h"

namespace keel::state {

class Persistent {
 public:
  virtual ~Persistent() = default;
  // The version written into the section; restore_state() accepts 1 up to it.
  virtual uint32_t state_version() const { return 1; }
  virtual void save_state(SectionWriter& out) = 0;
  virtual void restore_state(const SectionReader& in) = 0;
};

}  // namespace keel::state
