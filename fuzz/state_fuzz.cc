// The VM state parser (state/state_format.h) and the section loaders a restore runs first, on
// arbitrary bytes: each must return or throw keel::Error (StateError), never crash, hang or
// allocate beyond its bounds. The first byte picks the target: a whole state file (its
// checksums make most mutations fail early), or one section's field list fed straight to the
// loaders (past the checksums, where the field checks must hold on their own).
#include <cstdint>
#include <vector>

#include "arch/x86/machine_state.h"
#include "base/error.h"
#include "engine/engine_convert.h"
#include "state/state_format.h"
#include "vm/snapshot.h"

namespace {

void load_all(const keel::state::SectionReader& s) {
  try {
    keel::x86::load_vcpu(s);
  } catch (const keel::Error&) {
  }
  try {
    keel::snapshot::load_config(s);
  } catch (const keel::Error&) {
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  std::span<const uint8_t> rest(data + 1, size - 1);
  try {
    if (data[0] & 1) {
      keel::state::Document doc = keel::state::Document::parse(rest, "fuzz");
      for (const auto& name : doc.names()) load_all(doc.section(name, UINT32_MAX));
      // A snapshot restored on the other engine is converted first (engine/engine_convert.h).
      try {
        keel::convert_engine_state(doc, "emu", "kvm", 1 + (data[0] >> 7), 0);
      } catch (const keel::Error&) {
      }
      keel::convert_engine_state(doc, "kvm", "emu", 1 + (data[0] >> 7), 2'000'000'000);
    } else {
      load_all(keel::state::SectionReader("fuzz", 1, std::vector<uint8_t>(rest.begin(), rest.end())));
    }
  } catch (const keel::Error&) {
  }
  return 0;
}
