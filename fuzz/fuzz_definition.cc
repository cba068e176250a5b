// libFuzzer target: VM definitions as `keel define` and POST /v1/vms receive them, and the
// `keel run` command line made from the ones that pass. Any input is accepted or refused with a
// DefinitionError naming the field.
#include <string>

#include "manager/vm_definition.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string text(reinterpret_cast<const char*>(data), size);
  try {
    keel::manager::VmDefinition d = keel::manager::parse_definition_text(text);
    keel::manager::vmm_arguments(d, "/run/x.sock", "/log/x.log");
    keel::manager::parse_definition(d.to_json());  // what is stored parses again
  } catch (const keel::manager::DefinitionError&) {
  }
  return 0;
}
