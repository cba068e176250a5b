// EscapeFilter: QEMU's Ctrl-A escapes on the console input stream. Ctrl-A x quits, Ctrl-A Ctrl-A
// sends one Ctrl-A to the guest, Ctrl-A h asks for help; any other key after Ctrl-A is dropped
// with it. Pure and incremental: an escape split across two reads still works.
#pragma once

#include <cstdint>
#include <span>
#include <string>

namespace keel {

class EscapeFilter {
 public:
  static constexpr uint8_t kEscape = 0x01;  // Ctrl-A

  struct Result {
    std::string to_guest;  // bytes to pass on, escapes removed
    bool quit = false;     // Ctrl-A x seen: bytes after it are not consumed
    bool help = false;     // Ctrl-A h seen
  };
  Result feed(std::span<const uint8_t> bytes);

  static const char* help_text();

 private:
  bool escaped_ = false;
};

}  // namespace keel
