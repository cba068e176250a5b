// parse_size() on arbitrary text: must return or throw Error, never crash or overflow silently.
#include <cstdint>
#include <string_view>

#include "base/error.h"
#include "base/size.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  try {
    keel::parse_size(std::string_view(reinterpret_cast<const char*>(data), size), 1 << 20);
  } catch (const keel::Error&) {
  }
  return 0;
}
