#include "control/control_client.h"

#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "control/unix_socket.h"

namespace keel::control {

using nlohmann::json;
using Clock = std::chrono::steady_clock;

namespace {

constexpr size_t kMaxLine = 16 << 20;

std::chrono::milliseconds left_until(Clock::time_point deadline) {
  auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now());
  return left.count() < 0 ? std::chrono::milliseconds(0) : left;
}

// Reads one line and nothing after it (the console stream follows the reply to console-attach on
// the same connection): peeks at what has arrived, then consumes up to the newline only.
std::string read_line_exact(int fd, Clock::time_point deadline) {
  std::string line;
  char buf[4096];
  for (;;) {
    if (!wait_readable(fd, left_until(deadline))) throw Error("control socket: no reply in time");
    ssize_t n = ::recv(fd, buf, sizeof(buf), MSG_PEEK);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) throw_errno("control socket read");
    if (n == 0) throw Error("control socket closed by the VMM");
    const char* nl = static_cast<const char*>(std::memchr(buf, '\n', static_cast<size_t>(n)));
    size_t take = nl ? static_cast<size_t>(nl - buf) + 1 : static_cast<size_t>(n);
    ssize_t got;
    do {
      got = ::recv(fd, buf, take, 0);  // what the peek saw is there: this does not block
    } while (got < 0 && errno == EINTR);
    if (got != static_cast<ssize_t>(take)) throw_errno("control socket read");
    line.append(buf, nl ? take - 1 : take);
    if (nl) return line;
    if (line.size() > kMaxLine) throw Error("control socket: reply line too long");
  }
}

void check_reply(const json& reply) {
  if (reply.contains("error")) {
    const json& err = reply["error"];
    throw ControlError(err.value("class", "GenericError"), err.value("desc", "unknown error"));
  }
}

}  // namespace

namespace {
json capabilities_arguments(const std::string& token) {
  return token.empty() ? json::object() : json{{"keel-token", token}};
}
}  // namespace

ControlClient ControlClient::connect(const std::string& path, std::chrono::milliseconds timeout,
                                     const std::string& token) {
  auto deadline = Clock::now() + timeout;
  ControlClient client(connect_unix(path, timeout));
  client.greeting_ = client.read_one(deadline);
  if (!client.greeting_.contains("QMP")) {
    throw Error("control socket " + path + ": unexpected greeting " + client.greeting_.dump());
  }
  client.execute("qmp_capabilities", capabilities_arguments(token), left_until(deadline));
  return client;
}

UniqueFd ControlClient::attach_console(const std::string& path, std::chrono::milliseconds timeout,
                                       const std::string& token) {
  auto deadline = Clock::now() + timeout;
  UniqueFd fd = connect_unix(path, timeout);
  // Both commands at once, without waiting for the greeting: the server greets on accept and runs
  // what it reads in order; nothing follows them on this connection.
  json negotiate{{"execute", "qmp_capabilities"}};
  if (!token.empty()) negotiate["arguments"] = capabilities_arguments(token);
  write_all(fd.get(), negotiate.dump() + "\n" + json{{"execute", "console-attach"}}.dump() + "\n",
            left_until(deadline));
  json greeting = json::parse(read_line_exact(fd.get(), deadline), nullptr, false);
  if (!greeting.is_object() || !greeting.contains("QMP")) {
    throw Error("control socket " + path + ": unexpected greeting");
  }
  for (int replies = 0; replies < 2; ++replies) {
    // Events may come before the second reply (they are only sent after negotiation).
    for (;;) {
      json reply = json::parse(read_line_exact(fd.get(), deadline), nullptr, false);
      if (reply.is_object() && reply.contains("event")) continue;
      check_reply(reply);
      break;
    }
  }
  return fd;
}

void ControlClient::send(const json& message) { write_all(fd_.get(), message.dump() + "\n"); }

void send_with_fd(int socket, std::string_view bytes, int fd) {
  // The descriptor rides on the message's first byte; the rest follows as a plain write.
  alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int))] = {};
  iovec iov{const_cast<char*>(bytes.data()), bytes.size()};
  msghdr msg{};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  msg.msg_control = control;
  msg.msg_controllen = sizeof control;
  cmsghdr* c = CMSG_FIRSTHDR(&msg);
  c->cmsg_level = SOL_SOCKET;
  c->cmsg_type = SCM_RIGHTS;
  c->cmsg_len = CMSG_LEN(sizeof(int));
  std::memcpy(CMSG_DATA(c), &fd, sizeof fd);
  ssize_t n;
  do n = ::sendmsg(socket, &msg, MSG_NOSIGNAL);
  while (n < 0 && errno == EINTR);
  if (n < 0) throw_errno("control socket: sending a file descriptor");
  if (static_cast<size_t>(n) < bytes.size()) write_all(socket, bytes.substr(static_cast<size_t>(n)));
}

std::vector<json> ControlClient::read_messages() {
  char buf[16384];
  ssize_t n;
  do {
    n = ::recv(fd_.get(), buf, sizeof(buf), MSG_DONTWAIT);
  } while (n < 0 && errno == EINTR);
  if (n == 0) throw Error("control socket closed by the VMM");
  if (n < 0) {
    if (errno == EAGAIN) return {};
    throw_errno("control socket read");
  }
  in_.append(buf, static_cast<size_t>(n));
  std::vector<json> out;
  size_t start = 0;
  for (size_t nl; (nl = in_.find('\n', start)) != std::string::npos; start = nl + 1) {
    std::string_view line(in_.data() + start, nl - start);
    if (line.find_first_not_of(" \t\r") == std::string_view::npos) continue;
    json message = json::parse(line, nullptr, false);
    if (message.is_discarded() || !message.is_object()) {
      throw Error("control socket: malformed message from the VMM");
    }
    out.push_back(std::move(message));
  }
  in_.erase(0, start);
  if (in_.size() > kMaxLine) throw Error("control socket: message from the VMM too long");
  return out;
}

json ControlClient::read_one(Clock::time_point deadline) {
  while (messages_.empty()) {
    if (!wait_readable(fd_.get(), left_until(deadline))) {
      throw Error("control socket: no reply in time");
    }
    for (json& m : read_messages()) messages_.push_back(std::move(m));
  }
  json m = std::move(messages_.front());
  messages_.pop_front();
  return m;
}

json ControlClient::execute(const std::string& command, json arguments,
                            std::chrono::milliseconds timeout) {
  return execute_passing(command, std::move(arguments), -1, timeout);
}

json ControlClient::execute_passing(const std::string& command, json arguments, int fd,
                                    std::chrono::milliseconds timeout) {
  auto deadline = Clock::now() + timeout;
  uint64_t id = next_id_++;
  json request{{"execute", command}, {"id", id}};
  if (!arguments.empty()) request["arguments"] = std::move(arguments);
  if (fd >= 0)
    send_with_fd(fd_.get(), request.dump() + "\n", fd);
  else
    send(request);
  for (;;) {
    json message = read_one(deadline);
    if (message.contains("event")) {
      events_.push_back(std::move(message));
      continue;
    }
    if (message.value("id", json()) != json(id)) continue;  // a stray reply: not ours
    check_reply(message);
    return message.value("return", json::object());
  }
}

std::optional<json> ControlClient::next_event(std::chrono::milliseconds timeout) {
  auto deadline = Clock::now() + timeout;
  for (;;) {
    if (!events_.empty()) {
      json e = std::move(events_.front());
      events_.pop_front();
      return e;
    }
    while (!messages_.empty()) {
      json m = std::move(messages_.front());
      messages_.pop_front();
      if (m.contains("event")) events_.push_back(std::move(m));
    }
    if (!events_.empty()) continue;
    if (!wait_readable(fd_.get(), left_until(deadline))) return std::nullopt;
    for (json& m : read_messages()) messages_.push_back(std::move(m));
  }
}

}  // namespace keel::control
