// libFuzzer target: the bzImage and ELF vmlinux parsers, and the whole loader on their output
// (also with the payload decompressed on the host).
// Any input must either load or throw keel::Error; ASan/UBSan catch out-of-bounds reads.
#include <cstddef>
#include <cstdint>
#include <span>

#include "base/error.h"
#include "boot/kernel_image.h"
#include "boot/linux_loader.h"
#include "memory/guest_memory.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  // 32 MiB of lazily mapped guest RAM, reused across runs: small enough that large declared
  // sizes hit the "does not fit" paths.
  static keel::GuestMemory memory(32 << 20);
  const std::span<const uint8_t> image(data, size);
  try {
    keel::boot::parse_bzimage(image);
  } catch (const keel::Error&) {
  }
  try {
    keel::boot::parse_elf_kernel(image);
  } catch (const keel::Error&) {
  }
  static const uint8_t initrd[8192] = {1, 2, 3};
  try {
    keel::boot::load_linux_image(memory, image, initrd, "console=ttyS0", 0xE0000);
  } catch (const keel::Error&) {
  }
  // The emu engine's path: the bzImage's payload decompressed on the host, then its ELF loaded.
  try {
    keel::boot::load_linux_image(memory, image, initrd, "console=ttyS0", 0xE0000,
                                 /*decompress_on_host=*/true);
  } catch (const keel::Error&) {
  }
  return 0;
}
