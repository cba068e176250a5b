// TerminalConsole: the guest's console on keel's own stdin/stdout, as `keel run` shows it.
//
// Input: the main loop watches `in_fd`; bytes pass through the Ctrl-A escape filter and go to the
// console device with push_input(). What the device cannot take yet is kept here, `in_fd` is no
// longer watched, and reading resumes when the device's space callback (a vCPU thread) posts
// pump() back to the loop. End of input stops reading; the guest keeps running. An input that
// epoll cannot watch (a regular file, /dev/null) is read directly, as the device takes it.
//
// Output: output() returns a ConsoleOutput that writes straight to `out_fd` (no buffering); it
// captures only the fd, so it stays valid after the TerminalConsole is gone.
//
// Raw mode is not this class's business: `keel run` holds a RawTerminal for as long as it runs.
#pragma once

#include "sandbox/syscalls.h"

#include <functional>
#include <string>

#include "backends/console/console_port.h"
#include "backends/console/escape_filter.h"
#include "base/event_loop.h"

namespace keel {

class TerminalConsole {
 public:
  // `on_quit` runs on the loop thread when Ctrl-A x is typed.
  TerminalConsole(EventLoop& loop, int in_fd, int out_fd, ConsoleInput& device,
                  std::function<void()> on_quit);
  ~TerminalConsole();
  // Its system calls on the main loop, with the RawTerminal's (seccomp).
  static sandbox::AllowList syscalls();
  TerminalConsole(const TerminalConsole&) = delete;
  TerminalConsole& operator=(const TerminalConsole&) = delete;

  static ConsoleOutput output(int out_fd);

  // Moves pending input to the device and reads more while it has room. Loop thread only.
  void pump();

 private:
  void on_readable();
  // Reads one chunk from in_fd into pending_ (through the escape filter); false at end of input.
  bool read_chunk();

  EventLoop& loop_;
  const int in_fd_;
  const int out_fd_;
  ConsoleInput& device_;
  const std::function<void()> on_quit_;
  EscapeFilter filter_;
  std::string pending_;
  bool watching_ = false;   // in_fd_ is registered with the loop
  bool pollable_ = true;    // epoll accepts in_fd_
  bool input_open_ = true;  // no EOF, no error, no quit yet
  // Cleared by the destructor: a posted pump() that runs after it does nothing.
  std::shared_ptr<bool> alive_;
};

}  // namespace keel
