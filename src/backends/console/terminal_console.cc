#include "backends/console/terminal_console.h"

#include <sys/ioctl.h>
#include <termios.h>

#include <sys/epoll.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "base/error.h"
#include "base/log.h"

namespace keel {
namespace {

void write_all(int fd, const void* data, size_t len) {
  auto* p = static_cast<const uint8_t*>(data);
  while (len > 0) {
    ssize_t n = ::write(fd, p, len);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return;  // closed or broken: console output is dropped, the guest goes on
    p += n;
    len -= static_cast<size_t>(n);
  }
}

}  // namespace

ConsoleOutput TerminalConsole::output(int out_fd) {
  return [out_fd](std::span<const uint8_t> bytes) { write_all(out_fd, bytes.data(), bytes.size()); };
}

TerminalConsole::TerminalConsole(EventLoop& loop, int in_fd, int out_fd, ConsoleInput& device,
                                 std::function<void()> on_quit)
    : loop_(loop),
      in_fd_(in_fd),
      out_fd_(out_fd),
      device_(device),
      on_quit_(std::move(on_quit)),
      alive_(std::make_shared<bool>(true)) {
  // Handoff: a vCPU thread drained the device's input FIFO -> pump() on the loop thread.
  std::weak_ptr<bool> alive = alive_;
  device_.set_input_space_callback([this, alive, &loop] {
    loop.post([this, alive] {
      if (auto a = alive.lock(); a && *a) pump();
    });
  });
  try {
    loop_.add_fd(in_fd_, EPOLLIN, [this](uint32_t) { on_readable(); });
    watching_ = true;
  } catch (const Error&) {
    pollable_ = false;  // EPERM: a regular file or /dev/null, always "ready"
    loop_.post([this, alive] {
      if (auto a = alive.lock(); a && *a) pump();
    });
  }
}

TerminalConsole::~TerminalConsole() {
  *alive_ = false;
  device_.set_input_space_callback(nullptr);
  if (watching_) loop_.remove_fd(in_fd_);
}

bool TerminalConsole::read_chunk() {
  uint8_t buf[4096];
  ssize_t n;
  do {
    n = ::read(in_fd_, buf, sizeof buf);
  } while (n < 0 && errno == EINTR);
  if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return true;
  if (n <= 0) return false;
  EscapeFilter::Result r = filter_.feed({buf, static_cast<size_t>(n)});
  pending_ += r.to_guest;
  if (r.help) write_all(out_fd_, EscapeFilter::help_text(), std::strlen(EscapeFilter::help_text()));
  if (r.quit) {
    input_open_ = false;
    on_quit_();
    return false;
  }
  return true;
}

void TerminalConsole::on_readable() {
  if (!read_chunk()) input_open_ = false;
  pump();
}

void TerminalConsole::pump() {
  while (true) {
    if (!pending_.empty()) {
      size_t n = device_.push_input(
          {reinterpret_cast<const uint8_t*>(pending_.data()), pending_.size()});
      pending_.erase(0, n);
      if (!pending_.empty()) break;  // full: wait for the space callback
    }
    // Unwatchable input is read here, only as fast as the device takes it.
    if (pollable_ || !input_open_) break;
    if (!read_chunk()) input_open_ = false;
  }
  // Watch the fd only while there is room for what it brings.
  bool want = input_open_ && pollable_ && pending_.empty();
  if (want && !watching_) {
    loop_.add_fd(in_fd_, EPOLLIN, [this](uint32_t) { on_readable(); });
    watching_ = true;
  } else if (!want && watching_) {
    loop_.remove_fd(in_fd_);
    watching_ = false;
  }
}

sandbox::AllowList TerminalConsole::syscalls() {
  const uint64_t all = ~0ull;
  return {
      {"read"}, {"poll"},
      // RawTerminal: the terminal's modes, and re-raising a fatal signal after restoring them.
      {"ioctl", {{1, all, TCGETS}}},
      {"ioctl", {{1, all, TCSETS}}},
      {"ioctl", {{1, all, TCSETSW}}},
      {"ioctl", {{1, all, TCSETSF}}},
      {"ioctl", {{1, all, TIOCGWINSZ}}},
      {"rt_sigaction"},
  };
}

}  // namespace keel
