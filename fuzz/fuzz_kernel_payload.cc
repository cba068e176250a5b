// libFuzzer target: the bzImage payload decompressors (gzip, xz, lzma, lz4 legacy, zstd) on
// arbitrary bytes. Any input must decompress, be declined (nullopt) or throw keel::Error.
#include <cstddef>
#include <cstdint>
#include <span>

#include "base/error.h"
#include "boot/kernel_payload.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  try {
    // A small limit: a trailer claiming more is refused before anything is allocated.
    keel::boot::decompress_payload(std::span<const uint8_t>(data, size), 16 << 20);
  } catch (const keel::Error&) {
  }
  return 0;
}
