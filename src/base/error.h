// Error handling policy: keel throws exceptions at clear boundaries.
//
// Error is what a failing operation throws; its message names the cause (the file, the field,
// the address, the ioctl) so that `keel` can print it as-is and exit 1. UsageError marks bad
// command-line input (exit 2). Code that parses untrusted input throws Error and never crashes.
#pragma once

#include <cerrno>
#include <cstring>
#include <stdexcept>
#include <string>

namespace keel {

class Error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

class UsageError : public Error {
 public:
  using Error::Error;
};

// Builds "what: strerror(errno)" for failed system calls.
inline std::string errno_message(const std::string& what, int err = errno) {
  return what + ": " + std::strerror(err);
}

[[noreturn]] inline void throw_errno(const std::string& what, int err = errno) {
  throw Error(errno_message(what, err));
}

}  // namespace keel
