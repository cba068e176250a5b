#include "manager/vmm_process.h"

#include <fcntl.h>
#include <poll.h>
#include <sys/socket.h>
#include <signal.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cerrno>
#include <fstream>
#include <sstream>

#include "base/error.h"
#include "base/log_file.h"
#include "control/unix_socket.h"

namespace keel::manager {

using nlohmann::json;

SpawnedProcess spawn_process(const std::string& binary, const std::vector<std::string>& args,
                             const std::string& log_path, int pass_fd) {
  // Everything the child needs is prepared before fork: after it, only async-signal-safe calls.
  std::vector<std::string> storage;
  storage.push_back(binary);
  storage.insert(storage.end(), args.begin(), args.end());
  std::vector<char*> argv;
  for (auto& s : storage) argv.push_back(s.data());
  argv.push_back(nullptr);

  rotate_log_file(log_path);  // the previous run's log becomes LOG.1
  UniqueFd log(::open(log_path.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC | O_NOFOLLOW, 0600));
  if (!log) throw_errno("open " + log_path);
  UniqueFd null(::open("/dev/null", O_RDONLY | O_CLOEXEC));
  if (!null) throw_errno("open /dev/null");

  pid_t pid = ::fork();
  if (pid < 0) throw_errno("fork");
  if (pid == 0) {
    ::setsid();
    sigset_t none;
    sigemptyset(&none);
    ::sigprocmask(SIG_SETMASK, &none, nullptr);
    ::signal(SIGPIPE, SIG_DFL);
    ::dup2(null.get(), 0);
    ::dup2(log.get(), 1);
    ::dup2(log.get(), 2);
    unsigned first_closed = 3;
    if (pass_fd >= 0) {
      // dup2 clears FD_CLOEXEC on the copy; onto itself it changes nothing, so clear it here.
      if (pass_fd == 3) ::fcntl(3, F_SETFD, 0);
      else ::dup2(pass_fd, 3);
      first_closed = 4;
    }
    ::syscall(SYS_close_range, first_closed, ~0u, 0u);
    ::execv(argv[0], argv.data());
    const char msg[] = "keel daemon: exec of the VMM failed\n";
    [[maybe_unused]] ssize_t n = ::write(2, msg, sizeof(msg) - 1);
    ::_exit(127);
  }
  SpawnedProcess p;
  p.pid = pid;
  // Race-free: nobody else can reap our child before we open its pidfd.
  p.pidfd = open_pidfd(pid);
  if (!p.pidfd) {
    int err = errno;
    ::kill(pid, SIGKILL);
    throw_errno("pidfd_open", err);
  }
  return p;
}

int64_t process_start_time(pid_t pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/stat");
  std::string stat;
  if (!in || !std::getline(in, stat)) return 0;
  size_t close = stat.rfind(')');
  if (close == std::string::npos) return 0;
  std::istringstream fields(stat.substr(close + 2));
  std::string field;
  // Field 3 is the state; field 22 the start time.
  std::vector<std::string> f;
  while (fields >> field) f.push_back(field);
  if (f.size() < 20 || f[0] == "Z" || f[0] == "X") return 0;
  try {
    return std::stoll(f[19]);
  } catch (...) {
    return 0;
  }
}

UniqueFd open_pidfd(pid_t pid) {
  return UniqueFd(static_cast<int>(::syscall(SYS_pidfd_open, pid, 0)));
}

bool pidfd_signal(int pidfd, int sig) {
  return ::syscall(SYS_pidfd_send_signal, pidfd, sig, nullptr, 0) == 0;
}

std::string file_tail(const std::string& path, size_t max_bytes) {
  std::ifstream in(path, std::ios::binary | std::ios::ate);
  if (!in) return {};
  std::streamoff size = in.tellg();
  std::streamoff start = size > static_cast<std::streamoff>(max_bytes)
                             ? size - static_cast<std::streamoff>(max_bytes)
                             : 0;
  in.seekg(start);
  std::string out(static_cast<size_t>(size - start), '\0');
  in.read(out.data(), static_cast<std::streamsize>(out.size()));
  while (!out.empty() && (out.back() == '\n' || out.back() == '\r')) out.pop_back();
  return out;
}

VmmLink::VmmLink(pid_t pid, UniqueFd pidfd, bool is_child, std::string control_path,
                 control::ControlClient control, UniqueFd console)
    : pid_(pid),
      pidfd_(std::move(pidfd)),
      is_child_(is_child),
      control_path_(std::move(control_path)),
      control_(std::move(control)),
      console_(std::move(console)) {
  control::set_nonblocking(console_.get(), true);
}

json VmmLink::execute(const std::string& command, json arguments,
                      std::chrono::milliseconds timeout) {
  std::future<json> reply;
  {
    std::lock_guard lock(mutex_);
    if (dead_) throw Error("the VMM is gone: " + dead_reason_);
    uint64_t id = next_id_++;
    json request{{"execute", command}, {"id", id}};
    if (!arguments.empty()) request["arguments"] = std::move(arguments);
    reply = pending_[id].get_future();
    try {
      control_.send(request);
    } catch (...) {
      pending_.erase(id);
      throw;
    }
  }
  if (reply.wait_for(timeout) != std::future_status::ready) {
    throw Error("the VMM did not answer '" + command + "' in time");
  }
  json message = reply.get();  // rethrows what fail_pending set
  if (message.contains("error")) {
    const json& err = message["error"];
    throw control::ControlError(err.value("class", "GenericError"),
                                err.value("desc", "unknown error"));
  }
  return message.value("return", json::object());
}

void VmmLink::console_write(std::string_view bytes) {
  std::lock_guard lock(console_mutex_);
  // The console fd is non-blocking (the supervisor reads it); a guest that does not read its
  // input makes us wait briefly, then the rest is dropped with an error.
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(2);
  while (!bytes.empty()) {
    ssize_t n = ::send(console_.get(), bytes.data(), bytes.size(), MSG_NOSIGNAL | MSG_DONTWAIT);
    if (n > 0) {
      bytes.remove_prefix(static_cast<size_t>(n));
      continue;
    }
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && errno == EAGAIN && std::chrono::steady_clock::now() < deadline) {
      pollfd p{console_.get(), POLLOUT, 0};
      ::poll(&p, 1, 100);
      continue;
    }
    throw_errno("console write");
  }
}

bool VmmLink::signal(int sig) const { return pidfd_signal(pidfd_.get(), sig); }

std::vector<json> VmmLink::read_control() {
  std::vector<json> events;
  for (json& message : control_.read_messages()) {
    if (message.contains("event")) {
      events.push_back(std::move(message));
      continue;
    }
    if (!message.contains("id") || !message["id"].is_number_unsigned()) continue;
    std::lock_guard lock(mutex_);
    auto it = pending_.find(message["id"].get<uint64_t>());
    if (it == pending_.end()) continue;  // its caller gave up waiting
    it->second.set_value(std::move(message));
    pending_.erase(it);
  }
  return events;
}

void VmmLink::fail_pending(const std::string& why) {
  std::lock_guard lock(mutex_);
  dead_ = true;
  dead_reason_ = why;
  for (auto& [id, promise] : pending_) {
    promise.set_exception(std::make_exception_ptr(Error("the VMM is gone: " + why)));
  }
  pending_.clear();
}

}  // namespace keel::manager
