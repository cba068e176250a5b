// Parsing of human-written sizes such as "512M".
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

namespace keel {

// Parses a decimal number with an optional binary suffix: K, M, G or T (case-insensitive, each
// 1024 times the previous; "KiB"/"MiB"/... and "KB"/"MB"/... are accepted as the same). A number
// without a suffix is multiplied by `default_unit` (1 = bytes; the CLI's --memory passes 1 MiB,
// as QEMU's -m does). Throws Error naming the text on an empty string, a sign, a fraction, an
// unknown suffix, trailing characters or a value that does not fit in 64 bits.
uint64_t parse_size(std::string_view text, uint64_t default_unit = 1);

// Formats a byte count for messages: "512 MiB", "4 KiB", "1000 bytes".
std::string format_size(uint64_t bytes);

}  // namespace keel
