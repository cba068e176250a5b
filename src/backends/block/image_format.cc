#include "backends/block/image_format.h"

#include <cstring>
#include <filesystem>

#include "backends/block/qcow2_image.h"
#include "backends/block/raw_image.h"
#include "base/error.h"

namespace keel {

const char* to_string(ImageFormat format) {
  switch (format) {
    case ImageFormat::kAuto: return "auto";
    case ImageFormat::kRaw: return "raw";
    case ImageFormat::kQcow2: return "qcow2";
  }
  return "?";
}

ImageFormat parse_image_format(const std::string& text) {
  if (text == "raw") return ImageFormat::kRaw;
  if (text == "qcow2") return ImageFormat::kQcow2;
  if (text == "auto") return ImageFormat::kAuto;
  throw UsageError("unknown image format '" + text + "' (keel reads raw and qcow2)");
}

namespace {

bool starts_with(std::span<const uint8_t> head, uint64_t at, const char* magic, size_t n) {
  return head.size() >= at + n && std::memcmp(head.data() + at, magic, n) == 0;
}

DetectedFormat unsupported(std::string name, std::string qemu_name) {
  return {ImageFormat::kAuto, std::move(name), std::move(qemu_name)};
}

}  // namespace

DetectedFormat detect_image_format(std::span<const uint8_t> head, uint64_t file_size) {
  if (starts_with(head, 0, "QFI\xfb", 4) && head.size() >= 8) {
    uint32_t version = uint32_t{head[4]} << 24 | uint32_t{head[5]} << 16 | uint32_t{head[6]} << 8 | head[7];
    if (version == 2 || version == 3) return {ImageFormat::kQcow2, "qcow2", "qcow2"};
    if (version == 1) return unsupported("qcow (version 1)", "qcow");
    return unsupported("qcow2 version " + std::to_string(version), "qcow2");
  }
  if (starts_with(head, 0, "QED\0", 4)) return unsupported("qed", "qed");
  if (starts_with(head, 0, "KDMV", 4) || starts_with(head, 0, "COWD", 4) ||
      starts_with(head, 0, "# Disk DescriptorFile", 21))
    return unsupported("vmdk", "vmdk");
  if (starts_with(head, 0, "vhdxfile", 8)) return unsupported("vhdx", "vhdx");
  if (starts_with(head, 0x40, "\x7f\x10\xda\xbe", 4)) return unsupported("vdi", "vdi");
  if (starts_with(head, 0, "conectix", 8)) return unsupported("vpc (VHD)", "vpc");
  if (starts_with(head, 0, "WithoutFreeSpace", 16) || starts_with(head, 0, "WithouFreSpacExt", 16))
    return unsupported("parallels", "parallels");
  if (starts_with(head, 0, "Bochs Virtual HD Image", 22)) return unsupported("bochs", "bochs");
  if (starts_with(head, 0, "LUKS\xba\xbe", 6)) return unsupported("luks (encrypted)", "luks");
  if (starts_with(head, 0, "#!/bin/sh\n#V2.0 Format", 22)) return unsupported("cloop", "cloop");
  return {};
}

std::string unsupported_format_message(const std::string& path, const DetectedFormat& d) {
  std::filesystem::path out = path;
  out.replace_extension(".qcow2");
  if (out == std::filesystem::path(path)) out += ".converted.qcow2";
  return "disk " + path + " is a " + d.name + " image; keel reads raw and qcow2: convert it with "
         "`qemu-img convert -f " + d.qemu_name + " -O qcow2 " + path + " " + out.string() + "`";
}

std::unique_ptr<BlockBackend> open_block_backend(const std::string& path, ImageFormat format,
                                                 bool readonly) {
  if (format == ImageFormat::kRaw) return RawImage::open(path, readonly);
  if (format == ImageFormat::kQcow2) return Qcow2Image::open(path, readonly);
  // Detect: read the head through a read-only descriptor (the backend takes its own lock).
  std::vector<uint8_t> head(kProbeBytes);
  uint64_t file_size;
  {
    ImageFile f = open_image_file(path, true);
    file_size = f.size;
    head.resize(std::min<uint64_t>(kProbeBytes, f.size));
    pread_all(f.fd.get(), head.data(), head.size(), 0, "disk " + path);
  }
  DetectedFormat d = detect_image_format(head, file_size);
  if (d.format == ImageFormat::kQcow2) return Qcow2Image::open(path, readonly);
  if (d.format == ImageFormat::kRaw) return RawImage::open(path, readonly, /*probed=*/true);
  throw Error(unsupported_format_message(path, d));
}

}  // namespace keel
