#include "base/size.h"

#include <cctype>
#include <string>

#include "base/error.h"

namespace keel {
namespace {

[[noreturn]] void refuse(std::string_view text, const std::string& why) {
  throw Error("invalid size '" + std::string(text) + "': " + why);
}

}  // namespace

uint64_t parse_size(std::string_view text, uint64_t default_unit) {
  if (text.empty()) refuse(text, "empty");
  size_t i = 0;
  uint64_t value = 0;
  while (i < text.size() && std::isdigit(static_cast<unsigned char>(text[i]))) {
    uint64_t digit = text[i] - '0';
    if (value > (UINT64_MAX - digit) / 10) refuse(text, "too large");
    value = value * 10 + digit;
    ++i;
  }
  if (i == 0) refuse(text, "expected a decimal number, optionally followed by K, M, G or T");

  std::string suffix;
  for (size_t j = i; j < text.size(); ++j)
    suffix += static_cast<char>(std::toupper(static_cast<unsigned char>(text[j])));
  uint64_t unit;
  if (suffix.empty()) {
    unit = default_unit;
  } else {
    int shift;
    switch (suffix[0]) {
      case 'K': shift = 10; break;
      case 'M': shift = 20; break;
      case 'G': shift = 30; break;
      case 'T': shift = 40; break;
      default: refuse(text, "unknown suffix '" + std::string(text.substr(i)) + "' (use K, M, G or T)");
    }
    std::string_view rest = std::string_view(suffix).substr(1);
    if (!rest.empty() && rest != "B" && rest != "IB")
      refuse(text, "unknown suffix '" + std::string(text.substr(i)) + "' (use K, M, G or T)");
    unit = uint64_t{1} << shift;
  }
  if (unit != 0 && value > UINT64_MAX / unit) refuse(text, "too large");
  return value * unit;
}

std::string format_size(uint64_t bytes) {
  static constexpr const char* kUnits[] = {"KiB", "MiB", "GiB", "TiB"};
  std::string out = std::to_string(bytes) + " bytes";
  for (int i = 3; i >= 0; --i) {
    uint64_t unit = uint64_t{1} << (10 * (i + 1));
    if (bytes >= unit && bytes % unit == 0) return std::to_string(bytes / unit) + " " + kUnits[i];
  }
  return out;
}

}  // namespace keel
