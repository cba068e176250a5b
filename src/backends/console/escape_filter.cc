#include "backends/console/escape_filter.h"

namespace keel {

EscapeFilter::Result EscapeFilter::feed(std::span<const uint8_t> bytes) {
  Result r;
  for (uint8_t b : bytes) {
    if (!escaped_) {
      if (b == kEscape) escaped_ = true;
      else r.to_guest.push_back(static_cast<char>(b));
      continue;
    }
    escaped_ = false;
    switch (b) {
      case kEscape: r.to_guest.push_back(static_cast<char>(kEscape)); break;
      case 'x':
      case 'X':
        r.quit = true;
        return r;
      case 'h':
      case 'H':
      case '?':
        r.help = true;
        break;
      default:
        break;  // unknown escape: dropped, as QEMU does
    }
  }
  return r;
}

const char* EscapeFilter::help_text() {
  return "\r\nC-a h    print this help\r\n"
         "C-a x    exit keel\r\n"
         "C-a C-a  send C-a to the guest\r\n";
}

}  // namespace keel
