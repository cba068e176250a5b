// Reading the output of tests/guests/acpi_counter.asm ("count N" lines), for the snapshot and
// migration tests.
#pragma once

#include <algorithm>
#include <string>

namespace keel::testing {

// The highest N of a complete "count N" line in `out`, or -1. A line cut by the VMM's own log
// output (keel logs on stdout) is not one.
inline int last_count(const std::string& out) {
  int last = -1;
  size_t at = 0;
  while ((at = out.find("count ", at)) != std::string::npos) {
    size_t end = out.find('\n', at);
    if (end == std::string::npos) break;
    std::string digits = out.substr(at + 6, end - at - 6);
    if (!digits.empty() && digits.size() < 10 && digits.find_first_not_of("0123456789") == std::string::npos)
      last = std::max(last, std::stoi(digits));
    at = end;
  }
  return last;
}

}  // namespace keel::testing
