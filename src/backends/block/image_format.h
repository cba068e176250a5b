// Telling disk image formats apart by their first bytes, as `qemu-img info` does.
//
// keel reads raw and qcow2 (v2/v3). The others are recognised so that they are refused with a
// message naming the format and the `qemu-img convert` command that turns them into qcow2,
// rather than silently read as raw.
#pragma once

#include <cstdint>
#include <span>
#include <string>

#include "backends/block/block_backend.h"

namespace keel {

// How many leading bytes detection looks at (and a probed raw image guards, raw_image.h).
inline constexpr uint64_t kProbeBytes = 512;

struct DetectedFormat {
  ImageFormat format = ImageFormat::kRaw;  // kAuto: a format keel does not read
  std::string name = "raw";                // "qcow2", "vmdk", "qcow (version 1)", ...
  std::string qemu_name = "raw";           // qemu-img's -f name ("qcow", "vmdk", ...)
};

// `head` is the image's first bytes (up to kProbeBytes; fewer for a small file).
DetectedFormat detect_image_format(std::span<const uint8_t> head, uint64_t file_size);

// The refusal for a format keel does not read: "disk PATH is a vmdk image; keel reads raw and
// qcow2: convert it with qemu-img convert -f vmdk -O qcow2 PATH OUT.qcow2".
std::string unsupported_format_message(const std::string& path, const DetectedFormat& detected);

}  // namespace keel
