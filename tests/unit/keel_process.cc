#include "keel_process.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <grp.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstring>
#include <stdexcept>

namespace keel::testing {

std::string ProcessResult::describe() const {
  std::string s;
  if (timed_out) s += "timed out; ";
  if (exited) s += "exit status " + std::to_string(status);
  else s += "killed by signal " + std::to_string(signal);
  return s + "\n--- stdout ---\n" + out + "\n--- stderr ---\n" + err;
}

KeelProcess::KeelProcess(const std::vector<std::string>& args,
                         const std::map<std::string, std::string>& env, int tty_fd,
                         const std::string& binary) {
  ::signal(SIGPIPE, SIG_IGN);  // a child that exits early must not kill the test with EPIPE
  int in[2] = {-1, -1}, out[2] = {-1, -1}, err[2] = {-1, -1};
  if (tty_fd < 0 && (pipe2(in, O_CLOEXEC) || pipe2(out, O_CLOEXEC) || pipe2(err, O_CLOEXEC)))
    throw std::runtime_error("pipe2 failed");
  std::vector<std::string> argv_s = {binary};
  argv_s.insert(argv_s.end(), args.begin(), args.end());
  std::vector<char*> argv;
  for (auto& a : argv_s) argv.push_back(a.data());
  argv.push_back(nullptr);

  pid_ = fork();
  if (pid_ < 0) throw std::runtime_error("fork failed");
  if (pid_ == 0) {
    if (tty_fd >= 0) {
      setsid();
      ioctl(tty_fd, TIOCSCTTY, 0);
      dup2(tty_fd, 0);
      dup2(tty_fd, 1);
      dup2(tty_fd, 2);
    } else {
      dup2(in[0], 0);
      dup2(out[1], 1);
      dup2(err[1], 2);
    }
    for (auto& [k, v] : env) setenv(k.c_str(), v.c_str(), 1);
    execv(argv[0], argv.data());
    _exit(127);
  }
  if (tty_fd < 0) {
    close(in[0]);
    close(out[1]);
    close(err[1]);
    in_.reset(in[1]);
    out_.reset(out[0]);
    err_.reset(err[0]);
  }
}

KeelProcess::~KeelProcess() {
  if (!reaped_ && pid_ > 0) {
    kill(pid_, SIGKILL);
    waitpid(pid_, nullptr, 0);
  }
}

void KeelProcess::write_stdin(const std::string& bytes) {
  size_t done = 0;
  while (done < bytes.size()) {
    ssize_t n = ::write(in_.get(), bytes.data() + done, bytes.size() - done);
    if (n <= 0) return;
    done += static_cast<size_t>(n);
  }
}

void KeelProcess::close_stdin() { in_.reset(); }

void KeelProcess::send_signal(int sig) { kill(pid_, sig); }

void KeelProcess::pump(int timeout_ms) {
  pollfd fds[2];
  int n = 0;
  if (out_) fds[n++] = {out_.get(), POLLIN, 0};
  if (err_) fds[n++] = {err_.get(), POLLIN, 0};
  if (n == 0) {
    if (timeout_ms > 0) poll(nullptr, 0, timeout_ms);
    return;
  }
  if (poll(fds, n, timeout_ms) <= 0) return;
  for (int i = 0; i < n; ++i) {
    if (!(fds[i].revents & (POLLIN | POLLHUP))) continue;
    char buf[4096];
    ssize_t r = ::read(fds[i].fd, buf, sizeof buf);
    bool is_out = out_ && fds[i].fd == out_.get();
    if (r <= 0) {
      (is_out ? out_ : err_).reset();
      continue;
    }
    (is_out ? result_.out : result_.err).append(buf, static_cast<size_t>(r));
  }
}

bool KeelProcess::wait_for(std::string ProcessResult::*text, const UniqueFd& fd,
                           const std::string& marker, std::chrono::milliseconds deadline) {
  auto end = std::chrono::steady_clock::now() + deadline;
  while ((result_.*text).find(marker) == std::string::npos) {
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(end - std::chrono::steady_clock::now());
    if (left.count() <= 0 || !fd) return (result_.*text).find(marker) != std::string::npos;
    pump(static_cast<int>(std::min<int64_t>(left.count(), 100)));
  }
  return true;
}

bool KeelProcess::wait_for_stdout(const std::string& marker, std::chrono::milliseconds deadline) {
  return wait_for(&ProcessResult::out, out_, marker, deadline);
}

bool KeelProcess::wait_for_stderr(const std::string& marker, std::chrono::milliseconds deadline) {
  return wait_for(&ProcessResult::err, err_, marker, deadline);
}

ProcessResult KeelProcess::wait(std::chrono::milliseconds deadline) {
  auto end = std::chrono::steady_clock::now() + deadline;
  int wstatus = 0;
  while (true) {
    pid_t r = waitpid(pid_, &wstatus, WNOHANG);
    if (r == pid_) break;
    if (std::chrono::steady_clock::now() >= end) {
      result_.timed_out = true;
      kill(pid_, SIGKILL);
      waitpid(pid_, &wstatus, 0);
      break;
    }
    pump(20);
  }
  reaped_ = true;
  // The rest of the output; bounded, in case something keel started still holds the pipes.
  auto drain_end = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  while ((out_ || err_) && std::chrono::steady_clock::now() < drain_end) pump(100);
  result_.exited = WIFEXITED(wstatus);
  result_.status = result_.exited ? WEXITSTATUS(wstatus) : -1;
  result_.signal = WIFSIGNALED(wstatus) ? WTERMSIG(wstatus) : 0;
  return result_;
}

std::chrono::milliseconds Budget::left() const {
  auto left = std::chrono::duration_cast<std::chrono::milliseconds>(end_ - std::chrono::steady_clock::now());
  return std::max(left, std::chrono::milliseconds(0));
}

ProcessResult run_keel(const std::vector<std::string>& args, const std::string& input,
                       std::chrono::milliseconds deadline,
                       const std::map<std::string, std::string>& env, const std::string& binary) {
  KeelProcess p(args, env, -1, binary);
  p.write_stdin(input);
  p.close_stdin();
  return p.wait(deadline);
}

uint16_t free_loopback_port() {
  UniqueFd s(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
  sockaddr_in sa{};
  sa.sin_family = AF_INET;
  sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof sa;
  if (!s || ::bind(s.get(), reinterpret_cast<sockaddr*>(&sa), sizeof sa) != 0 ||
      ::getsockname(s.get(), reinterpret_cast<sockaddr*>(&sa), &len) != 0)
    throw std::runtime_error(std::string("cannot bind a loopback port: ") + std::strerror(errno));
  return ntohs(sa.sin_port);
}

std::string http_head(int fd, const std::string& request, std::chrono::milliseconds timeout) {
  size_t sent = 0;
  while (sent < request.size()) {
    ssize_t n = ::send(fd, request.data() + sent, request.size() - sent, MSG_NOSIGNAL);
    if (n <= 0) return {};
    sent += static_cast<size_t>(n);
  }
  std::string head;
  char buf[512];
  while (head.find("\r\n\r\n") == std::string::npos) {
    pollfd p{fd, POLLIN, 0};
    if (::poll(&p, 1, static_cast<int>(timeout.count())) <= 0) break;
    ssize_t n = ::recv(fd, buf, sizeof buf, 0);
    if (n <= 0) break;
    head.append(buf, static_cast<size_t>(n));
  }
  return head;
}

std::string as_user(uid_t uid, gid_t gid, const std::function<std::string()>& fn) {
  int fds[2];
  if (::pipe(fds) != 0) return "pipe failed";
  pid_t pid = ::fork();
  if (pid == 0) {
    ::close(fds[0]);
    std::string out = "child failed";
    if (::setgroups(0, nullptr) == 0 && ::setgid(gid) == 0 && ::setuid(uid) == 0) {
      try {
        out = fn();
      } catch (const std::exception& e) {
        out = std::string("exception: ") + e.what();
      }
    }
    [[maybe_unused]] ssize_t n = ::write(fds[1], out.data(), out.size());
    ::_exit(0);
  }
  ::close(fds[1]);
  std::string out;
  char buf[4096];
  for (ssize_t n; (n = ::read(fds[0], buf, sizeof buf)) > 0;) out.append(buf, static_cast<size_t>(n));
  ::close(fds[0]);
  ::waitpid(pid, nullptr, 0);
  return out;
}

ReachableKeel::ReachableKeel() : fd_(::open(KEEL_BINARY, O_RDONLY | O_CLOEXEC)) {
  if (!fd_) throw std::runtime_error(std::string("cannot open ") + KEEL_BINARY);
  path_ = "/proc/self/fd/" + std::to_string(fd_.get());
}

}  // namespace keel::testing
