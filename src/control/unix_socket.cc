#include "control/unix_socket.h"

#include <fcntl.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <thread>

#include "base/error.h"

namespace keel::control {

namespace {

sockaddr_un make_address(const std::string& path) {
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  if (path.empty() || path.size() >= sizeof(addr.sun_path)) {
    throw Error("socket path '" + path + "' is empty or longer than " +
                std::to_string(sizeof(addr.sun_path) - 1) + " bytes");
  }
  std::memcpy(addr.sun_path, path.data(), path.size());
  return addr;
}

}  // namespace

UniqueFd listen_unix(const std::string& path, int backlog) {
  sockaddr_un addr = make_address(path);
  UniqueFd fd(::socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
  if (!fd) throw_errno("socket(AF_UNIX)");
  ::unlink(path.c_str());  // a stale socket file from an earlier process
  if (::bind(fd.get(), reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
    throw_errno("bind " + path);
  }
  if (::listen(fd.get(), backlog) != 0) throw_errno("listen " + path);
  return fd;
}

UniqueFd connect_unix(const std::string& path, std::chrono::milliseconds timeout,
                      bool wait_for_listener) {
  sockaddr_un addr = make_address(path);
  auto deadline = std::chrono::steady_clock::now() + timeout;
  for (;;) {
    // Non-blocking: a unix connect() to a listener whose backlog is full would otherwise block
    // for as long as the listener does not accept.
    UniqueFd fd(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
    if (!fd) throw_errno("socket(AF_UNIX)");
    if (::connect(fd.get(), reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0) {
      set_nonblocking(fd.get(), false);
      return fd;
    }
    int err = errno;
    bool retry = err == EAGAIN || err == EINTR ||
                 (wait_for_listener && (err == ENOENT || err == ECONNREFUSED));
    if (!retry || std::chrono::steady_clock::now() >= deadline) {
      if (err == EAGAIN) throw Error("connect " + path + ": the listener is not accepting (busy)");
      throw_errno("connect " + path, err);
    }
    // The socket appears when the other process reaches its listen(); poll for it briefly.
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
}

void set_nonblocking(int fd, bool on) {
  int flags = ::fcntl(fd, F_GETFL);
  if (flags < 0) throw_errno("fcntl(F_GETFL)");
  flags = on ? (flags | O_NONBLOCK) : (flags & ~O_NONBLOCK);
  if (::fcntl(fd, F_SETFL, flags) < 0) throw_errno("fcntl(F_SETFL)");
}

void write_all(int fd, std::string_view data, std::chrono::milliseconds timeout) {
  auto deadline = std::chrono::steady_clock::now() + timeout;
  while (!data.empty()) {
    ssize_t n = ::send(fd, data.data(), data.size(), MSG_NOSIGNAL | MSG_DONTWAIT);
    if (n < 0 && errno == ENOTSOCK) n = ::write(fd, data.data(), data.size());
    if (n < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN) {
        auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
            deadline - std::chrono::steady_clock::now());
        if (left.count() <= 0) throw Error("write: the other side does not read (timed out)");
        pollfd p{fd, POLLOUT, 0};
        if (::poll(&p, 1, static_cast<int>(std::min<int64_t>(left.count(), 1 << 30))) < 0 &&
            errno != EINTR)
          throw_errno("poll");
        continue;
      }
      throw_errno("write");
    }
    data.remove_prefix(static_cast<size_t>(n));
  }
}

bool wait_readable(int fd, std::chrono::milliseconds timeout) {
  pollfd p{fd, POLLIN, 0};
  auto deadline = std::chrono::steady_clock::now() + timeout;
  for (;;) {
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
        deadline - std::chrono::steady_clock::now());
    int ms = left.count() < 0 ? 0 : static_cast<int>(left.count());
    int r = ::poll(&p, 1, ms);
    if (r > 0) return true;
    if (r == 0) return false;
    if (errno != EINTR) throw_errno("poll");
  }
}

}  // namespace keel::control
