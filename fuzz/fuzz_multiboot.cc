// libFuzzer target: the multiboot header and PVH note parsers (boot/multiboot.h, parse_any_elf)
// and both protected-mode loaders on their output, with a module and a command line.
// Any input must either load or throw keel::Error; ASan/UBSan catch out-of-bounds reads.
#include <cstddef>
#include <cstdint>
#include <span>

#include "base/error.h"
#include "boot/kernel_image.h"
#include "boot/multiboot.h"
#include "boot/protected_mode_boot.h"
#include "memory/guest_memory.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  // 32 MiB of lazily mapped guest RAM, reused across runs: large declared sizes hit the "does not
  // fit" paths.
  static keel::GuestMemory memory(32 << 20);
  const std::span<const uint8_t> image(data, size);
  keel::boot::detect_boot_protocol(image);  // never throws
  try {
    keel::boot::parse_multiboot(image);
  } catch (const keel::Error&) {
  }
  try {
    keel::boot::parse_any_elf(image);
  } catch (const keel::Error&) {
  }
  const std::vector<keel::boot::BootModule> modules = {{"m", {1, 2, 3}, "m arg"}};
  try {
    keel::boot::load_multiboot(memory, image, "kernel", modules, "kernel a=b");
  } catch (const keel::Error&) {
  }
  try {
    keel::boot::load_pvh(memory, image, "kernel", modules, "a=b", 0xE0000);
  } catch (const keel::Error&) {
  }
  return 0;
}
