// One VMM process (`keel run --control PATH --paused ...`) as the daemon sees it: spawning it,
// identifying it again after a daemon restart, and the link to it (control connection, console
// stream, pidfd).
#pragma once

#include <sys/types.h>

#include <chrono>
#include <cstdint>
#include <future>
#include <map>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "base/fd.h"
#include "control/control_client.h"

namespace keel::manager {

// What a spawned VMM gets besides its arguments.
struct SpawnOptions {
  std::vector<std::pair<int, int>> fds;  // (fd in the daemon, fd number in the child), from 3 up
  std::vector<std::string> env;          // "NAME=value" added to the daemon's environment
  std::string cgroup;                    // a cgroup directory to join before exec ("" = none)
};

// A child that waits for go() before it execs the VMM: the daemon records it first (its pid and
// start time, in the VM's pidfile), so that no VMM it cannot find again ever runs. If go() never
// comes (the daemon dies, or gives up and closes the pipe), the child exits without exec.
class SpawnedProcess {
 public:
  pid_t pid = 0;
  UniqueFd pidfd;

  // Lets the child exec. Throws Error if it is already gone.
  void go();
  UniqueFd go_pipe;  // write end; closing it without a byte makes the child exit
};

// fork of `binary args...` in a session of its own (so a signal to the daemon's process group
// or the daemon's death leaves it running), stdin from /dev/null, stdout and stderr appended to
// `log_path` (O_NOFOLLOW, 0600) after the previous run's log there has moved to `log_path`.1,
// signal mask and SIGPIPE reset, in `options.cgroup`, with `options.fds` in place and every other
// fd above 2 closed; it execs once go() is called. Throws Error if the fork or pidfd fails; a
// failing exec shows as an exit status of 127 with the reason in the log. `rotate_to` names
// where the previous log goes instead of `log_path`.1 ("" = the default).
SpawnedProcess spawn_process(const std::string& binary, const std::vector<std::string>& args,
                             const std::string& log_path, const SpawnOptions& options = {},
                             const std::string& rotate_to = {});

// The VM's pidfile (DIR/run/NAME.pid, 0600): the VMM's pid, its start time and the token of the
// daemon's control slots, written (durably) before the VMM execs and removed when it is gone.
struct VmmPidfile {
  pid_t pid = 0;
  int64_t start_time = 0;
  std::string token;
};
void write_pidfile(const std::string& path, const VmmPidfile& record);
std::optional<VmmPidfile> read_pidfile(const std::string& path);

// A random token for the daemon's control connections (hex).
std::string random_token();

// The start time of `pid` in clock ticks since boot (/proc/PID/stat field 22), or 0 if there is
// no such live process (gone or a zombie).
int64_t process_start_time(pid_t pid);

// pidfd_open(2); an invalid fd if the process is gone.
UniqueFd open_pidfd(pid_t pid);
bool pidfd_signal(int pidfd, int signal);

// The last `max_bytes` of a file (the VMM's log, for error messages).
std::string file_tail(const std::string& path, size_t max_bytes = 2048);

// A live VMM: its control connection (commands from API threads, replies and events read by the
// supervisor thread), its console stream and its pidfd.
class VmmLink {
 public:
  VmmLink(pid_t pid, UniqueFd pidfd, bool is_child, std::string control_path,
          control::ControlClient control, UniqueFd console);

  // Thread-safe: sends a command and waits for the reply that the supervisor thread hands over.
  // Throws control::ControlError for an error reply, Error on timeout or when the VMM is gone.
  nlohmann::json execute(const std::string& command,
                         nlohmann::json arguments = nlohmann::json::object(),
                         std::chrono::milliseconds timeout = std::chrono::seconds(10),
                         int pass_fd = -1);  // sent along with the command (getfd)
  // Thread-safe: bytes for the guest's serial input.
  void console_write(std::string_view bytes);
  // Thread-safe: signals the process through its pidfd (immune to pid reuse).
  bool signal(int sig) const;

  pid_t pid() const { return pid_; }
  bool is_child() const { return is_child_; }
  const std::string& control_path() const { return control_path_; }
  int pidfd() const { return pidfd_.get(); }
  int control_fd() const { return control_.fd(); }
  int console_fd() const { return console_.get(); }

  // Supervisor thread only: reads what the control socket has, completes waiting commands and
  // returns the events. Throws Error when the VMM closed the connection.
  std::vector<nlohmann::json> read_control();
  // Fails every waiting command (the VMM is gone).
  void fail_pending(const std::string& why);

 private:
  pid_t pid_;
  UniqueFd pidfd_;
  bool is_child_;
  std::string control_path_;
  control::ControlClient control_;
  UniqueFd console_;

  std::mutex mutex_;  // guards the fields below and serialises writes to the control socket
  uint64_t next_id_ = 1;
  std::map<uint64_t, std::promise<nlohmann::json>> pending_;
  bool dead_ = false;
  std::string dead_reason_;
  std::mutex console_mutex_;
};

}  // namespace keel::manager
