// The compressed vmlinux inside a bzImage (setup header payload_offset/payload_length, boot
// protocol 2.08+), decompressed on the host.
//
// Why: a bzImage decompresses itself in the guest before Linux starts. Under the emu engine that
// costs ~15% of the boot to init (the LZ4 loop of Debian's cloud kernel runs at interpreter speed),
// while the host does it in milliseconds. The result is the ELF vmlinux the in-guest decompressor
// would have placed; the loader boots it at its link address, as Firecracker boots a vmlinux
// (which also means no KASLR: the in-guest decompressor is what picks a random base).
//
// Works on untrusted bytes: every size is checked, the output is capped by the payload's own
// size trailer (which the kernel build appends to every compression format) and by `limit`, and
// a corrupt stream throws Error saying where it went wrong.
#pragma once

#include <cstdint>
#include <optional>
#include <span>
#include <string_view>
#include <vector>

#include "boot/kernel_image.h"

namespace keel::boot {

enum class PayloadCompression { kGzip, kXz, kLzma, kLz4, kZstd, kBzip2, kLzo, kUnknown };

std::string_view compression_name(PayloadCompression c);

// From the payload's first bytes (the magic numbers the kernel's own decompressors check).
PayloadCompression detect_compression(std::span<const uint8_t> payload);

// The payload bytes of a parsed bzImage; empty when the protocol is older than 2.08 or the
// header's payload range does not lie inside the protected-mode code.
std::span<const uint8_t> bzimage_payload(const BzImage& bz, std::span<const uint8_t> image);

// The most a bzImage's payload may decompress to in a guest with `ram` bytes: the kernel's own
// decompressor works inside init_size (boot protocol 2.10+), and nothing larger than RAM boots.
uint64_t payload_output_limit(const BzImage& bz, uint64_t ram);

// Decompresses a payload. Returns nullopt when keel has no decompressor for its format (bzip2,
// lzo, unknown): the caller then boots the bzImage as it is. Throws Error when the stream is
// corrupt or truncated, or when it would decompress to more than `limit` bytes or to a size other
// than its trailer says. Memory is bounded before anything is allocated: the output by the
// trailer (checked against `limit`), the decoders' own state by what that output can need (an
// LZMA dictionary larger than the output is clamped to it; xz gets a memory limit; a zstd frame's
// content size must match the trailer).
std::optional<std::vector<uint8_t>> decompress_payload(std::span<const uint8_t> payload,
                                                       uint64_t limit);

}  // namespace keel::boot
