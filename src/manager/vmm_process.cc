#include "manager/vmm_process.h"

#include <fcntl.h>
#include <poll.h>
#include <sys/socket.h>
#include <signal.h>
#include <sys/random.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cerrno>
#include <fstream>
#include <sstream>

#include "base/error.h"
#include "base/log_file.h"
#include "control/unix_socket.h"
#include "sandbox/cgroup.h"

namespace keel::manager {

using nlohmann::json;

void SpawnedProcess::go() {
  ssize_t n;
  do {
    n = ::write(go_pipe.get(), "G", 1);
  } while (n < 0 && errno == EINTR);
  if (n != 1) throw_errno("starting the VMM");
  go_pipe.reset();
}

SpawnedProcess spawn_process(const std::string& binary, const std::vector<std::string>& args,
                             const std::string& log_path, const SpawnOptions& options,
                             const std::string& rotate_to) {
  // Everything the child needs is prepared before fork: after it, only async-signal-safe calls.
  std::vector<std::string> storage;
  storage.push_back(binary);
  storage.insert(storage.end(), args.begin(), args.end());
  std::vector<char*> argv;
  for (auto& s : storage) argv.push_back(s.data());
  argv.push_back(nullptr);
  std::vector<std::string> env_storage;
  for (char** e = environ; *e; ++e) env_storage.emplace_back(*e);
  env_storage.insert(env_storage.end(), options.env.begin(), options.env.end());
  std::vector<char*> envp;
  for (auto& e : env_storage) envp.push_back(e.data());
  envp.push_back(nullptr);

  if (rotate_to.empty()) {
    rotate_log_file(log_path);  // the previous run's log becomes LOG.1
  } else if (::rename(log_path.c_str(), rotate_to.c_str()) != 0 && errno != ENOENT) {
    throw_errno("rotate " + log_path);
  }
  UniqueFd log(::open(log_path.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC | O_NOFOLLOW, 0600));
  if (!log) throw_errno("open " + log_path);
  UniqueFd null(::open("/dev/null", O_RDONLY | O_CLOEXEC));
  if (!null) throw_errno("open /dev/null");
  int go[2];
  if (::pipe2(go, O_CLOEXEC) != 0) throw_errno("pipe2");
  UniqueFd go_read(::fcntl(go[0], F_DUPFD_CLOEXEC, 64)), go_write(go[1]);
  ::close(go[0]);
  if (!go_read) throw_errno("fcntl(F_DUPFD_CLOEXEC)");
  // The fds to pass, first moved out of the way of their target numbers (3 ... 63).
  std::vector<std::pair<UniqueFd, int>> passed;
  int first_closed = 3;
  for (auto [from, to] : options.fds) {
    UniqueFd moved(::fcntl(from, F_DUPFD_CLOEXEC, 64));
    if (!moved) throw_errno("fcntl(F_DUPFD_CLOEXEC)");
    passed.emplace_back(std::move(moved), to);
    first_closed = std::max(first_closed, to + 1);
  }
  std::string procs = options.cgroup.empty() ? std::string()
                                             : sandbox::cgroup_procs_path(options.cgroup);

  pid_t pid = ::fork();
  if (pid < 0) throw_errno("fork");
  if (pid == 0) {
    ::setsid();
    if (!procs.empty()) {
      int fd = ::open(procs.c_str(), O_WRONLY | O_CLOEXEC);
      bool joined = fd >= 0 && ::write(fd, "0", 1) == 1;
      if (fd >= 0) ::close(fd);
      if (!joined) {
        const char msg[] = "keel daemon: the VMM could not join its cgroup\n";
        [[maybe_unused]] ssize_t n = ::write(log.get(), msg, sizeof(msg) - 1);
      }
    }
    sigset_t none;
    sigemptyset(&none);
    ::sigprocmask(SIG_SETMASK, &none, nullptr);
    ::signal(SIGPIPE, SIG_DFL);
    ::dup2(null.get(), 0);
    ::dup2(log.get(), 1);
    ::dup2(log.get(), 2);
    for (auto& [fd, to] : passed) ::dup2(fd.get(), to);  // dup2 clears FD_CLOEXEC on the copy
    // Nothing else of the daemon's stays open while we wait, its end of this pipe least of all.
    const int go_fd = first_closed;
    ::dup2(go_read.get(), go_fd);
    ::syscall(SYS_close_range, static_cast<unsigned>(go_fd + 1), ~0u, 0u);
    // Wait for the daemon to have recorded us; end of file means it will not.
    char byte = 0;
    ssize_t n;
    do {
      n = ::read(go_fd, &byte, 1);
    } while (n < 0 && errno == EINTR);
    if (n != 1) ::_exit(0);
    ::close(go_fd);
    ::execve(argv[0], argv.data(), envp.data());
    const char msg[] = "keel daemon: exec of the VMM failed\n";
    [[maybe_unused]] ssize_t w = ::write(2, msg, sizeof(msg) - 1);
    ::_exit(127);
  }
  SpawnedProcess p;
  p.pid = pid;
  p.go_pipe = std::move(go_write);
  // Race-free: nobody else can reap our child before we open its pidfd.
  p.pidfd = open_pidfd(pid);
  if (!p.pidfd) {
    int err = errno;
    ::kill(pid, SIGKILL);
    throw_errno("pidfd_open", err);
  }
  return p;
}

void write_pidfile(const std::string& path, const VmmPidfile& record) {
  std::string text = json{{"pid", record.pid}, {"start_time", record.start_time},
                          {"token", record.token}}.dump() + "\n";
  std::string tmp = path + ".tmp";
  UniqueFd fd(::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0600));
  if (!fd) throw_errno("open " + tmp);
  if (::write(fd.get(), text.data(), text.size()) != static_cast<ssize_t>(text.size()) ||
      ::fsync(fd.get()) != 0)
    throw_errno("write " + tmp);
  if (::rename(tmp.c_str(), path.c_str()) != 0) throw_errno("rename " + tmp);
  std::string dir = path.substr(0, path.rfind('/'));
  UniqueFd d(::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (d) ::fsync(d.get());
}

std::optional<VmmPidfile> read_pidfile(const std::string& path) {
  UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NOFOLLOW));
  if (!fd) return std::nullopt;
  char buf[4096];
  ssize_t n = ::read(fd.get(), buf, sizeof buf);
  if (n <= 0) return std::nullopt;
  json j = json::parse(std::string(buf, static_cast<size_t>(n)), nullptr, false);
  if (!j.is_object() || !j.contains("pid") || !j["pid"].is_number_integer()) return std::nullopt;
  VmmPidfile record;
  record.pid = j["pid"].get<pid_t>();
  record.start_time = j.value("start_time", int64_t{0});
  record.token = j.value("token", "");
  return record;
}

std::string random_token() {
  uint8_t bytes[16];
  if (::getrandom(bytes, sizeof bytes, 0) != static_cast<ssize_t>(sizeof bytes))
    throw_errno("getrandom");
  static const char hex[] = "0123456789abcdef";
  std::string out;
  for (uint8_t b : bytes) {
    out += hex[b >> 4];
    out += hex[b & 15];
  }
  return out;
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
                      std::chrono::milliseconds timeout, int pass_fd) {
  std::future<json> reply;
  {
    std::lock_guard lock(mutex_);
    if (dead_) throw Error("the VMM is gone: " + dead_reason_);
    uint64_t id = next_id_++;
    json request{{"execute", command}, {"id", id}};
    if (!arguments.empty()) request["arguments"] = std::move(arguments);
    reply = pending_[id].get_future();
    try {
      if (pass_fd >= 0)
        control::send_with_fd(control_.fd(), request.dump() + "\n", pass_fd);
      else
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
