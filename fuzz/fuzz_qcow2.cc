// libFuzzer target: qcow2 header, extension and table parsing, and the mapping code behind it.
// The input is the image file (in a memfd). Any input must open and serve reads, writes and
// discards, or throw keel::Error; backing files are not followed (they would be host paths).
#include <sys/mman.h>
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <vector>

#include "backends/block/qcow2_image.h"
#include "base/error.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  try {
    keel::qcow2::parse_header({data, size}, size);
  } catch (const keel::Error&) {
  }
  keel::ImageFile file;
  file.fd.reset(::memfd_create("fuzz.qcow2", MFD_CLOEXEC));
  if (!file.fd || ::write(file.fd.get(), data, size) != static_cast<ssize_t>(size)) return 0;
  file.size = size;
  try {
    auto img = keel::Qcow2Image::open_file("fuzz.qcow2", std::move(file), false, {.allow_backing = false});
    // Bounded work: the first 4 MiB of the disk, whatever its virtual size.
    uint64_t span = std::min<uint64_t>(img->size(), 4 << 20) & ~uint64_t{511};
    std::vector<uint8_t> buf(span);
    img->read_bytes(0, buf.data(), span);
    if (span) {
      img->write_bytes(0, buf.data(), std::min<uint64_t>(span, 8192));
      img->discard(0, span);
      img->write_zeroes(0, span / 2, false);
      img->flush();
    }
  } catch (const keel::Error&) {
  }
  return 0;
}
