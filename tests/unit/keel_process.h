// Runs the built `keel` binary (KEEL_BINARY) as a child process for CLI tests: arguments,
// environment additions, bytes for its stdin, and a deadline; collects exit status, stdout and
// stderr. Tests can also wait for a marker on stdout while it runs and then signal or feed it.
#pragma once

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include <sys/types.h>

#include "base/fd.h"

namespace keel::testing {

struct ProcessResult {
  bool exited = false;    // exited normally (else killed by a signal or timed out)
  int status = -1;        // exit status when exited
  int signal = 0;         // terminating signal otherwise
  bool timed_out = false;
  std::string out, err;
  std::string describe() const;  // for failure messages
};

class KeelProcess {
 public:
  // Starts KEEL_BINARY (or `binary`) with `args`. stdin/stdout/stderr are pipes unless `tty_fd` >= 0,
  // in which case all three are that terminal (a pty slave) and out/err stay empty.
  KeelProcess(const std::vector<std::string>& args,
              const std::map<std::string, std::string>& env = {}, int tty_fd = -1,
              const std::string& binary = KEEL_BINARY);
  ~KeelProcess();

  pid_t pid() const { return pid_; }
  // Writes to the child's stdin (pipe mode).
  void write_stdin(const std::string& bytes);
  void close_stdin();
  // Reads output until stdout contains `marker` or the deadline passes; true if seen.
  bool wait_for_stdout(const std::string& marker, std::chrono::milliseconds deadline);
  bool wait_for_stderr(const std::string& marker, std::chrono::milliseconds deadline);  // the same
  void send_signal(int sig);
  // Waits for the child to exit (killing it with SIGKILL at the deadline) and collects the rest
  // of its output.
  ProcessResult wait(std::chrono::milliseconds deadline);

 private:
  void pump(int timeout_ms);  // reads what is available from stdout/stderr
  bool wait_for(std::string ProcessResult::*text, const UniqueFd& fd, const std::string& marker,
                std::chrono::milliseconds deadline);

  pid_t pid_ = -1;
  UniqueFd in_, out_, err_;
  ProcessResult result_;
  bool reaped_ = false;
};

// A test's time budget. CTest kills a test at 600 s (tests/CMakeLists.txt) without letting it
// print anything, so a test that boots Linux draws all its waits from one budget well inside
// that: when it runs out, the waits fail and the test reports what keel printed.
inline constexpr std::chrono::seconds kCtestTimeout{600};
inline constexpr std::chrono::seconds kTestBudget{540};

class Budget {
 public:
  explicit Budget(std::chrono::milliseconds total = kTestBudget)
      : end_(std::chrono::steady_clock::now() + total) {}
  std::chrono::milliseconds left() const;  // never negative
  // The smaller of `cap` and what is left.
  std::chrono::milliseconds at_most(std::chrono::milliseconds cap) const { return std::min(cap, left()); }

 private:
  std::chrono::steady_clock::time_point end_;
};

// Output checks: true when `haystack` contains `needle`.
inline bool contains(const std::string& haystack, const std::string& needle) {
  return haystack.find(needle) != std::string::npos;
}

// The path of the purpose-built test guest `name` (tests/guests/NAME.asm, assembled by CMake).
inline std::string test_guest(const std::string& name) {
  return std::string(KEEL_TEST_GUEST_DIR) + "/" + name + ".bin";
}

// A TCP port on 127.0.0.1 that was free a moment ago (bound to port 0, read back, closed).
// Throws std::runtime_error when no socket can be bound.
uint16_t free_loopback_port();

// Sends `request` on a connected socket and returns the response's head (status line and headers)
// as it arrives, waiting at most `timeout` for each piece; what came if the peer closes first.
std::string http_head(int fd, const std::string& request,
                      std::chrono::milliseconds timeout = std::chrono::seconds(5));

// Runs `fn` in a child process as `uid`/`gid` (no supplementary groups) and returns what it
// returned, or "child failed" if it could not take that identity.
std::string as_user(uid_t uid, gid_t gid, const std::function<std::string()>& fn);

// Runs keel to completion with `input` on stdin.
ProcessResult run_keel(const std::vector<std::string>& args, const std::string& input = "",
                       std::chrono::milliseconds deadline = std::chrono::seconds(60),
                       const std::map<std::string, std::string>& env = {},
                       const std::string& binary = KEEL_BINARY);

// KEEL_BINARY opened by the caller, as a path that runs it for any user: "/proc/self/fd/N" passes
// no directory on the way, so a user who cannot search the build tree (a clone in a 0700
// directory, as `mktemp -d` makes) still runs it. The descriptor lives as long as this object.
class ReachableKeel {
 public:
  ReachableKeel();
  const std::string& path() const { return path_; }

 private:
  UniqueFd fd_;
  std::string path_;
};

}  // namespace keel::testing
