// RawTerminal: puts a terminal into raw mode for the guest's console and restores it on every
// exit path: the destructor (normal return, exceptions unwinding), and fatal signals (SIGSEGV,
// SIGBUS, SIGILL, SIGFPE, SIGABRT from std::terminate), whose handler restores the saved
// settings and re-raises. Termination signals (SIGINT, SIGTERM, SIGHUP) are the caller's to turn
// into an orderly shutdown (`keel run` reads them through a signalfd), which then runs the
// destructor.
//
// The fatal-signal handler needs the saved settings in static storage; only one RawTerminal may
// be active in a process at a time (a second one throws).
#pragma once

#include <termios.h>

namespace keel {

class RawTerminal {
 public:
  // Does nothing when `fd` is not a terminal (active() is then false).
  explicit RawTerminal(int fd);
  ~RawTerminal();
  RawTerminal(const RawTerminal&) = delete;
  RawTerminal& operator=(const RawTerminal&) = delete;

  bool active() const { return active_; }
  // Restores the saved settings now (idempotent).
  void restore();

 private:
  int fd_;
  bool active_ = false;
  termios saved_{};
};

}  // namespace keel
