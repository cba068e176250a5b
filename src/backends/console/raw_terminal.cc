#include "backends/console/raw_terminal.h"

#include <unistd.h>

#include <atomic>
#include <csignal>

#include "base/error.h"

namespace keel {
namespace {

// For the fatal-signal handler: it may only touch async-signal-safe state.
std::atomic<bool> g_saved_valid{false};
int g_saved_fd = -1;
termios g_saved{};
constexpr int kFatalSignals[] = {SIGSEGV, SIGBUS, SIGILL, SIGFPE, SIGABRT};
struct sigaction g_previous[sizeof kFatalSignals / sizeof kFatalSignals[0]];

void restore_on_fatal_signal(int sig) {
  if (g_saved_valid.exchange(false)) tcsetattr(g_saved_fd, TCSANOW, &g_saved);
  // SA_RESETHAND restored the default action: re-raise to die as the signal says.
  raise(sig);
}

}  // namespace

RawTerminal::RawTerminal(int fd) : fd_(fd) {
  if (!isatty(fd) || tcgetattr(fd, &saved_) != 0) return;
  if (g_saved_valid) throw Error("the terminal is already in raw mode");

  termios raw = saved_;
  // As QEMU's stdio console: no echo, no line editing, no signals from keys (Ctrl-C goes to the
  // guest), no CR/NL translation on input; output processing stays on so the host's '\n' in keel's
  // own messages still returns the carriage.
  raw.c_iflag &= ~(IGNBRK | BRKINT | PARMRK | ISTRIP | INLCR | IGNCR | ICRNL | IXON);
  raw.c_oflag |= OPOST;
  raw.c_lflag &= ~(ECHO | ECHONL | ICANON | ISIG | IEXTEN);
  raw.c_cflag &= ~(CSIZE | PARENB);
  raw.c_cflag |= CS8;
  raw.c_cc[VMIN] = 1;
  raw.c_cc[VTIME] = 0;

  g_saved_fd = fd;
  g_saved = saved_;
  g_saved_valid = true;
  for (size_t i = 0; i < std::size(kFatalSignals); ++i) {
    struct sigaction sa {};
    sa.sa_handler = restore_on_fatal_signal;
    sa.sa_flags = SA_RESETHAND | SA_NODEFER;
    sigemptyset(&sa.sa_mask);
    sigaction(kFatalSignals[i], &sa, &g_previous[i]);
  }
  active_ = true;
  if (tcsetattr(fd, TCSANOW, &raw) != 0) {
    int err = errno;
    restore();
    throw_errno("tcsetattr(raw mode)", err);
  }
}

RawTerminal::~RawTerminal() { restore(); }

void RawTerminal::restore() {
  if (!active_) return;
  if (g_saved_valid.exchange(false)) tcsetattr(fd_, TCSANOW, &saved_);
  for (size_t i = 0; i < std::size(kFatalSignals); ++i) sigaction(kFatalSignals[i], &g_previous[i], nullptr);
  active_ = false;
}

}  // namespace keel
