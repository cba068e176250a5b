#include "control/control_server.h"

#include <poll.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/timerfd.h>
#include <time.h>
#include <unistd.h>

#include <cctype>
#include <cerrno>
#include <cstring>
#include <optional>

#include "base/error.h"
#include "base/log.h"
#include "base/version.h"
#include "control/unix_socket.h"

namespace keel::control {

using nlohmann::json;

namespace {

constexpr uint64_t kListenId = 0;
constexpr uint64_t kWakeId = 1;
constexpr uint64_t kTimerId = 2;

// Compares without stopping at the first difference (the token guards the daemon's slots).
bool same_token(const std::string& a, const std::string& b) {
  if (a.size() != b.size()) return false;
  unsigned char diff = 0;
  for (size_t i = 0; i < a.size(); ++i) diff |= static_cast<unsigned char>(a[i] ^ b[i]);
  return diff == 0;
}

// An error reply as QMP shapes it; thrown inside command handling.
struct CommandError {
  std::string klass;
  std::string desc;
};

json error_body(const std::string& klass, const std::string& desc) {
  return json{{"error", {{"class", klass}, {"desc", desc}}}};
}

void expect_no_arguments(const std::string& command, const json& args) {
  if (!args.empty()) {
    throw CommandError{"GenericError", "Parameter '" + args.begin().key() +
                                           "' is unexpected for '" + command + "'"};
  }
}

// Descriptors a client may have sent and not named yet, and names held at once.
constexpr size_t kMaxPassedFds = 4;
constexpr size_t kMaxNamedFds = 16;

// A descriptor name (getfd's "fdname"): what QEMU accepts, a short identifier.
bool valid_fd_name(const std::string& name) {
  if (name.empty() || name.size() > 64 || std::isdigit(static_cast<unsigned char>(name[0]))) return false;
  for (char c : name)
    if (!std::isalnum(static_cast<unsigned char>(c)) && c != '-' && c != '_' && c != '.') return false;
  return true;
}

const char* const kCommands[] = {
    "qmp_capabilities", "query-status",  "query-cpus-fast", "query-cpus", "query-commands",
    "query-version",    "query-name",    "query-kvm",       "stop",       "cont",
    "system_powerdown", "system_reset",  "quit",            "human-monitor-command",
    "console-attach",   "query-stats",   "snapshot-save",   "migrate",    "query-migrate",
    "getfd",            "closefd"};

// The QMP dialect keel speaks is a subset of QEMU 7.2's (Debian 12's) schema: the commands above
// with 7.2's names and reply shapes. Clients gate features on the greeting's version, so it
// names that dialect; "package" says the server is keel, and which.
json qemu_version() {
  return json{{"qemu", {{"major", 7}, {"minor", 2}, {"micro", 0}}},
              {"package", std::string("keel ") + kVersion}};
}

// human-monitor-command: the few HMP commands people type, answered as QEMU's monitor does.
std::string human_monitor(ControlTarget& target, const std::string& line) {
  std::string command = line.substr(0, line.find_last_not_of(" \t\r\n") + 1);
  command.erase(0, command.find_first_not_of(" \t"));
  if (command == "info registers") return target.info_registers();
  if (command == "info status") {
    RunStatus status = target.query_status();
    return std::string("VM status: ") + run_state_name(status.state) + "\r\n";
  }
  if (command == "info version") return std::string("7.2.0 (keel ") + kVersion + ")\r\n";
  if (command == "info name") return target.identity().name + "\r\n";
  if (command == "info kvm") {
    return std::string("kvm support: ") + (target.identity().kvm_enabled ? "enabled" : "disabled") +
           "\r\n";
  }
  if (command == "info cpus") {
    std::string out;
    for (const CpuInfo& cpu : target.query_cpus())
      out += (cpu.index == 0 ? "* " : "  ") + std::string("CPU #") + std::to_string(cpu.index) +
             ": thread_id=" + std::to_string(cpu.thread_id) + "\r\n";
    return out;
  }
  if (command == "help" || command == "info") {
    return "info cpus -- show infos for each CPU\r\ninfo kvm -- show KVM information\r\n"
           "info name -- show the current VM name\r\ninfo registers -- show the cpu registers\r\n"
           "info status -- show the current VM status (running|paused)\r\n"
           "info version -- show the version of QEMU\r\n";
  }
  std::string word = command.substr(0, command.find(' '));
  return "unknown command: '" + word + "'\r\n";
}

}  // namespace

const char* run_state_name(RunState state) {
  switch (state) {
    case RunState::kRunning: return "running";
    case RunState::kPaused: return "paused";
    case RunState::kShutdown: return "shutdown";
    case RunState::kGuestPanicked: return "guest-panicked";
  }
  return "unknown";
}

json qmp_timestamp() {
  timespec ts{};
  ::clock_gettime(CLOCK_REALTIME, &ts);
  return json{{"seconds", static_cast<int64_t>(ts.tv_sec)},
              {"microseconds", static_cast<int64_t>(ts.tv_nsec / 1000)}};
}

void ControlServer::Mailbox::notify() {
  uint64_t one = 1;
  // A full eventfd counter still wakes the loop, so a failed write needs no handling.
  [[maybe_unused]] ssize_t n = ::write(wake.get(), &one, sizeof(one));
}

// Only the post that finds the mailbox empty wakes the loop: the loop reads the eventfd before it
// swaps the mailbox out (dispatch), so whatever a later post adds is drained by that same swap or
// finds the mailbox empty again and wakes it anew. A guest printing byte by byte thus costs one
// eventfd write and one send per drain, not per byte.
void ControlServer::Mailbox::post_event(const std::string& name, json data) {
  json message{{"event", name}, {"timestamp", qmp_timestamp()}};
  if (!data.is_null()) message["data"] = std::move(data);
  bool wake;
  {
    std::lock_guard lock(mutex);
    wake = events.empty() && console.empty();
    events.push_back(message.dump(-1, ' ', false, json::error_handler_t::replace) + "\n");
    if (wake) ++wakeups;
  }
  if (wake) notify();
}

void ControlServer::Mailbox::post_console(std::string_view bytes) {
  if (bytes.empty()) return;
  bool wake;
  {
    std::lock_guard lock(mutex);
    wake = events.empty() && console.empty();
    console.append(bytes);
    // Nobody drained it in time: keep the newest bytes, as a serial line would lose the oldest.
    if (console.size() > console_limit) console.erase(0, console.size() - console_limit);
    if (wake) ++wakeups;
  }
  if (wake) notify();
}

uint64_t ControlServer::wakeups_posted() const {
  std::lock_guard lock(mailbox_->mutex);
  return mailbox_->wakeups;
}

ControlServer::ControlServer(const std::string& path, ControlTarget& target,
                             ControlServerOptions options)
    : path_(path), target_(target), options_(options), mailbox_(std::make_shared<Mailbox>()) {
  epoll_.reset(::epoll_create1(EPOLL_CLOEXEC));
  if (!epoll_) throw_errno("epoll_create1");
  mailbox_->wake.reset(::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC));
  if (!mailbox_->wake) throw_errno("eventfd");
  mailbox_->console_limit = options_.max_console_pending;
  listen_ = listen_unix(path);
  // Only the VMM's own user (root, when the daemon spawned it) may connect, whatever the umask.
  if (::chmod(path.c_str(), 0600) != 0) throw_errno("chmod " + path);
  timer_.reset(::timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC));
  if (!timer_) throw_errno("timerfd_create");

  epoll_event ev{};
  ev.events = EPOLLIN;
  ev.data.u64 = kListenId;
  if (::epoll_ctl(epoll_.get(), EPOLL_CTL_ADD, listen_.get(), &ev) != 0) throw_errno("epoll_ctl");
  ev.data.u64 = kWakeId;
  if (::epoll_ctl(epoll_.get(), EPOLL_CTL_ADD, mailbox_->wake.get(), &ev) != 0) {
    throw_errno("epoll_ctl");
  }
  ev.data.u64 = kTimerId;
  if (::epoll_ctl(epoll_.get(), EPOLL_CTL_ADD, timer_.get(), &ev) != 0) throw_errno("epoll_ctl");

  std::weak_ptr<Mailbox> weak = mailbox_;
  target_.set_event_callback([weak](const std::string& name, json data) {
    if (auto box = weak.lock()) box->post_event(name, std::move(data));
  });
  target_.set_console_callback([weak](std::string_view bytes) {
    if (auto box = weak.lock()) box->post_console(bytes);
  });
}

ControlServer::~ControlServer() {
  try {
    flush(std::chrono::milliseconds(200));
  } catch (const std::exception& e) {
    log::warn("control socket {}: flush on close: {}", path_, e.what());
  }
  ::unlink(path_.c_str());
}

void ControlServer::run_once(std::chrono::milliseconds timeout) {
  if (wait_readable(epoll_.get(), timeout)) dispatch();
}

void ControlServer::dispatch() {
  epoll_event events[32];
  int n = ::epoll_wait(epoll_.get(), events, 32, 0);
  if (n < 0) {
    if (errno == EINTR) return;
    throw_errno("epoll_wait");
  }
  for (int i = 0; i < n; ++i) {
    uint64_t id = events[i].data.u64;
    if (id == kListenId) {
      accept_clients();
    } else if (id == kTimerId) {
      uint64_t count;
      [[maybe_unused]] ssize_t r = ::read(timer_.get(), &count, sizeof(count));
      expire_unnegotiated();
    } else if (id == kWakeId) {
      uint64_t count;
      [[maybe_unused]] ssize_t r = ::read(mailbox_->wake.get(), &count, sizeof(count));
      drain_pending();
    } else {
      if (clients_.count(id) && (events[i].events & EPOLLOUT)) handle_writable(id);
      if (clients_.count(id) && (events[i].events & (EPOLLIN | EPOLLHUP | EPOLLERR | EPOLLRDHUP))) {
        handle_readable(id);
      }
    }
  }
}

void ControlServer::flush(std::chrono::milliseconds timeout) {
  drain_pending();
  auto deadline = std::chrono::steady_clock::now() + timeout;
  for (;;) {
    std::vector<pollfd> fds;
    for (auto& [id, client] : clients_) {
      if (!client.out.empty()) fds.push_back(pollfd{client.fd.get(), POLLOUT, 0});
    }
    if (fds.empty()) return;
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
        deadline - std::chrono::steady_clock::now());
    if (left.count() <= 0) return;
    if (::poll(fds.data(), fds.size(), static_cast<int>(left.count())) < 0 && errno != EINTR) {
      throw_errno("poll");
    }
    std::vector<uint64_t> ids;
    for (auto& [id, client] : clients_) {
      if (!client.out.empty()) ids.push_back(id);
    }
    for (uint64_t id : ids) handle_writable(id);
  }
}

void ControlServer::accept_clients() {
  for (;;) {
    UniqueFd fd(::accept4(listen_.get(), nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC));
    if (!fd) {
      if (errno == EAGAIN || errno == EINTR || errno == ECONNABORTED) return;
      log::warn("control socket {}: accept: {}", path_, std::strerror(errno));
      return;
    }
    if (clients_.size() >= options_.max_clients + options_.reserved_slots) {
      // Full: the oldest client that has not negotiated has had its chance and makes room, so
      // that idle connections cannot lock the daemon out.
      uint64_t oldest = 0;
      for (auto& [cid, c] : clients_)
        if (!c.negotiated && (oldest == 0 || c.accepted < clients_.at(oldest).accepted)) oldest = cid;
      if (oldest == 0) {
        std::string refusal = error_body("GenericError", "too many control clients").dump() + "\n";
        [[maybe_unused]] ssize_t n = ::send(fd.get(), refusal.data(), refusal.size(), MSG_NOSIGNAL);
        continue;
      }
      close_client(oldest);
    }
    uint64_t id = next_id_++;
    epoll_event ev{};
    ev.events = EPOLLIN | EPOLLRDHUP;
    ev.data.u64 = id;
    if (::epoll_ctl(epoll_.get(), EPOLL_CTL_ADD, fd.get(), &ev) != 0) throw_errno("epoll_ctl");
    Client& client = clients_[id];
    client.fd = std::move(fd);
    client.accepted = std::chrono::steady_clock::now();
    json greeting{{"QMP", {{"version", qemu_version()}, {"capabilities", json::array()}}}};
    send_line(client, greeting);
    try_write(id, client);
  }
  arm_timer();
}

void ControlServer::arm_timer() {
  std::optional<std::chrono::steady_clock::time_point> first;
  for (auto& [id, c] : clients_)
    if (!c.negotiated && (!first || c.accepted < *first)) first = c.accepted;
  itimerspec spec{};
  if (first) {
    auto left = *first + options_.negotiate_timeout - std::chrono::steady_clock::now();
    auto ns = std::max<int64_t>(
        1, std::chrono::duration_cast<std::chrono::nanoseconds>(left).count());
    spec.it_value.tv_sec = static_cast<time_t>(ns / 1'000'000'000);
    spec.it_value.tv_nsec = static_cast<long>(ns % 1'000'000'000);
  }
  ::timerfd_settime(timer_.get(), 0, &spec, nullptr);
}

void ControlServer::expire_unnegotiated() {
  auto now = std::chrono::steady_clock::now();
  std::vector<uint64_t> expired;
  for (auto& [id, c] : clients_)
    if (!c.negotiated && now >= c.accepted + options_.negotiate_timeout) expired.push_back(id);
  for (uint64_t id : expired) close_client(id);
  arm_timer();
}

void ControlServer::handle_readable(uint64_t id) {
  char buf[16384];
  for (;;) {
    auto it = clients_.find(id);
    if (it == clients_.end()) return;
    Client& client = it->second;
    // Descriptors may come with a message (getfd): at most kMaxPassedFds wait per client, more
    // are closed at once (MSG_CMSG_CLOEXEC: none leaks into a child).
    alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int) * kMaxPassedFds)];
    iovec iov{buf, sizeof(buf)};
    msghdr msg{};
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control;
    msg.msg_controllen = sizeof(control);
    ssize_t n = ::recvmsg(client.fd.get(), &msg, MSG_CMSG_CLOEXEC);
    if (n > 0) {
      for (cmsghdr* c = CMSG_FIRSTHDR(&msg); c; c = CMSG_NXTHDR(&msg, c)) {
        if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
        size_t count = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
        for (size_t i = 0; i < count; ++i) {
          int fd;
          std::memcpy(&fd, CMSG_DATA(c) + i * sizeof(int), sizeof fd);
          UniqueFd owned(fd);
          if (client.passed_fds.size() < kMaxPassedFds) client.passed_fds.push_back(std::move(owned));
        }
      }
    }
    if (n == 0) {
      close_client(id);
      return;
    }
    if (n < 0) {
      if (errno == EINTR) continue;
      if (errno != EAGAIN) close_client(id);
      return;
    }
    if (client.console) {
      try {
        target_.console_input(std::string_view(buf, static_cast<size_t>(n)));
      } catch (const std::exception& e) {
        log::warn("control socket {}: console input: {}", path_, e.what());
      }
      continue;
    }
    client.in.append(buf, static_cast<size_t>(n));
    // Split complete lines; each is one message. A client may switch to console mode mid-buffer.
    size_t start = 0;
    for (;;) {
      auto cit = clients_.find(id);
      if (cit == clients_.end()) return;
      Client& c = cit->second;
      if (c.console) {
        std::string rest = c.in.substr(start);
        c.in.clear();
        try {
          if (!rest.empty()) target_.console_input(rest);
        } catch (const std::exception& e) {
          log::warn("control socket {}: console input: {}", path_, e.what());
        }
        break;
      }
      size_t nl = c.in.find('\n', start);
      if (nl == std::string::npos) {
        c.in.erase(0, start);
        if (c.in.size() > options_.max_message) {
          bool first = !c.discarding;
          c.discarding = true;
          c.in.clear();
          if (first) {
            send_line(c, error_body("GenericError",
                                    "message longer than " + std::to_string(options_.max_message) +
                                        " bytes; discarded"));
          }
        }
        break;
      }
      std::string_view line(c.in.data() + start, nl - start);
      start = nl + 1;
      if (c.discarding) {
        c.discarding = false;  // this newline ends the oversized message
        continue;
      }
      if (line.size() > options_.max_message) {
        send_line(c, error_body("GenericError", "message longer than " +
                                                    std::to_string(options_.max_message) +
                                                    " bytes; discarded"));
        continue;
      }
      handle_line(id, std::string(line));
    }
    // Replies go out after every complete message of this read has run.
    auto wit = clients_.find(id);
    if (wit != clients_.end()) try_write(id, wit->second);
  }
}

void ControlServer::handle_line(uint64_t id, std::string_view line) {
  if (line.find_first_not_of(" \t\r") == std::string_view::npos) return;
  Client& client = clients_.at(id);
  json reply;
  json request_id;
  bool quit_after = false;
  bool console_after = false;
  try {
    json message;
    try {
      message = json::parse(line);
    } catch (const json::exception& e) {  // parse_error, or out_of_range (a number too large)
      throw CommandError{"GenericError", std::string("malformed JSON: ") + e.what()};
    }
    if (!message.is_object()) throw CommandError{"GenericError", "QMP input must be a JSON object"};
    if (message.contains("id")) request_id = message["id"];
    for (auto& [key, value] : message.items()) {
      if (key != "execute" && key != "arguments" && key != "id") {
        throw CommandError{"GenericError", "QMP input member '" + key + "' is unexpected"};
      }
    }
    if (!message.contains("execute") || !message["execute"].is_string()) {
      throw CommandError{"GenericError", "QMP input lacks member 'execute' of type string"};
    }
    json args = json::object();
    if (message.contains("arguments")) {
      args = message["arguments"];
      if (!args.is_object()) throw CommandError{"GenericError", "'arguments' must be an object"};
    }
    std::string name = message["execute"].get<std::string>();
    if (!client.negotiated && name != "qmp_capabilities") {
      throw CommandError{"CommandNotFound",
                         "Expecting capabilities negotiation with 'qmp_capabilities'"};
    }
    reply = json{{"return", run_command(client, name, args, quit_after)}};
    console_after = name == "console-attach";
  } catch (const CommandError& e) {
    reply = error_body(e.klass, e.desc);
  } catch (const std::exception& e) {
    reply = error_body("GenericError", e.what());
  }
  if (!request_id.is_null()) reply["id"] = request_id;
  send_line(client, reply);
  if (console_after) client.console = true;
  if (quit_after) {
    flush(std::chrono::milliseconds(200));
    target_.quit();
  }
}

json ControlServer::run_command(Client& client, const std::string& name, const json& args,
                                bool& quit_after) {
  if (name == "qmp_capabilities") {
    if (client.negotiated) {
      throw CommandError{"CommandNotFound", "Capabilities negotiation is already complete"};
    }
    for (auto& [key, value] : args.items()) {
      if (key == "enable") {
        if (!value.is_array() || !value.empty())
          throw CommandError{"GenericError", "no capabilities to enable"};
      } else if (key == "keel-token") {
        if (!value.is_string()) throw CommandError{"GenericError", "'keel-token' must be a string"};
        client.daemon = !options_.daemon_token.empty() &&
                        same_token(value.get<std::string>(), options_.daemon_token);
      } else {
        throw CommandError{"GenericError",
                           "Parameter '" + key + "' is unexpected for 'qmp_capabilities'"};
      }
    }
    if (!client.daemon) {
      size_t others = 0;
      for (auto& [id, c] : clients_) others += c.negotiated && !c.daemon;
      if (others >= options_.max_clients) {
        client.closing = true;
        throw CommandError{"GenericError", "too many control clients"};
      }
    }
    client.negotiated = true;
    arm_timer();
    return json::object();
  }
  if (name == "query-commands") {
    expect_no_arguments(name, args);
    json list = json::array();
    for (const char* c : kCommands) list.push_back(json{{"name", c}});
    return list;
  }
  if (name == "query-status") {
    expect_no_arguments(name, args);
    RunStatus status = target_.query_status();
    return json{{"running", status.state == RunState::kRunning},
                {"status", run_state_name(status.state)},
                {"reason", status.reason},
                {"singlestep", false}};
  }
  if (name == "query-cpus-fast" || name == "query-cpus") {  // query-cpus: QEMU's older name
    expect_no_arguments(name, args);
    json list = json::array();
    for (const CpuInfo& cpu : target_.query_cpus()) {
      list.push_back(json{{"cpu-index", cpu.index},
                          {"thread-id", cpu.thread_id},
                          {"qom-path", "/machine/unattached/device[" + std::to_string(cpu.index) + "]"},
                          {"target", "x86_64"},
                          {"props", {{"socket-id", cpu.index}, {"core-id", 0}, {"thread-id", 0}}}});
    }
    return list;
  }
  if (name == "query-version") {
    expect_no_arguments(name, args);
    return qemu_version();
  }
  if (name == "query-name") {
    expect_no_arguments(name, args);
    std::string vm = target_.identity().name;
    return vm.empty() ? json::object() : json{{"name", vm}};
  }
  if (name == "query-kvm") {
    expect_no_arguments(name, args);
    VmIdentity id = target_.identity();
    return json{{"enabled", id.kvm_enabled}, {"present", id.kvm_present}};
  }
  if (name == "human-monitor-command") {
    std::string line;
    for (auto& [key, value] : args.items()) {
      if (key == "command-line" && value.is_string()) line = value.get<std::string>();
      else if (key != "cpu-index")
        throw CommandError{"GenericError", "Parameter '" + key + "' is unexpected for '" + name + "'"};
    }
    if (!args.contains("command-line"))
      throw CommandError{"GenericError", "Parameter 'command-line' is missing"};
    return human_monitor(target_, line);
  }
  if (name == "query-stats") {  // control/query_stats.cc
    expect_no_arguments(name, args);
    return target_.query_stats();
  }
  if (name == "stop") {
    expect_no_arguments(name, args);
    target_.pause();
    return json::object();
  }
  if (name == "cont") {
    expect_no_arguments(name, args);
    target_.resume();
    return json::object();
  }
  if (name == "system_powerdown") {
    expect_no_arguments(name, args);
    target_.powerdown();
    return json::object();
  }
  if (name == "system_reset") {
    expect_no_arguments(name, args);
    target_.reset();
    return json::object();
  }
  if (name == "quit") {
    expect_no_arguments(name, args);
    quit_after = true;
    return json::object();
  }
  if (name == "snapshot-save") {
    // {"path": DIR, "resume": bool = true}, or instead of "path" the two files as descriptors
    // named with getfd: {"state-fd": NAME, "memory-fd": NAME} (a confined VMM opens nothing).
    bool resume = true;
    std::string path, state_fd, memory_fd;
    for (const auto& [key, value] : args.items()) {
      bool is_string_key = key == "path" || key == "state-fd" || key == "memory-fd";
      if (is_string_key && value.is_string())
        (key == "path" ? path : key == "state-fd" ? state_fd : memory_fd) = value.get<std::string>();
      else if (key == "resume" && value.is_boolean())
        resume = value.get<bool>();
      else if (is_string_key || key == "resume")
        throw CommandError{"GenericError", "Invalid parameter type for '" + key + "', expected: " +
                                               (is_string_key ? "string" : "boolean")};
      else
        throw CommandError{"GenericError", "Parameter '" + key + "' is unexpected for 'snapshot-save'"};
    }
    if (!state_fd.empty() || !memory_fd.empty()) {
      if (!path.empty())
        throw CommandError{"GenericError", "snapshot-save takes 'path' or 'state-fd' and 'memory-fd', not both"};
      if (state_fd.empty() || memory_fd.empty())
        throw CommandError{"GenericError", std::string("Parameter '") +
                                               (state_fd.empty() ? "state-fd" : "memory-fd") + "' is missing"};
      if (state_fd == memory_fd)
        throw CommandError{"GenericError", "'state-fd' and 'memory-fd' name the same descriptor"};
      if (!named_fds_.count(state_fd) || !named_fds_.count(memory_fd))
        throw CommandError{"GenericError", "File descriptor named '" +
                                               (named_fds_.count(state_fd) ? memory_fd : state_fd) +
                                               "' has not been found"};
      UniqueFd state = take_named_fd(state_fd), memory = take_named_fd(memory_fd);
      target_.snapshot_save_to(state.get(), memory.get(), resume);
      return json::object();
    }
    if (path.empty()) throw CommandError{"GenericError", "Parameter 'path' is missing"};
    target_.snapshot_save(path, resume);
    return json::object();
  }
  if (name == "migrate") {
    // {"uri": "unix:PATH" | "tcp:HOST:PORT" | "fd:NAME", "downtime-limit": ms = 300}
    std::string uri;
    uint64_t downtime = 300;
    for (const auto& [key, value] : args.items()) {
      if (key == "uri" && value.is_string())
        uri = value.get<std::string>();
      else if (key == "downtime-limit" && value.is_number_unsigned())
        downtime = value.get<uint64_t>();
      else
        throw CommandError{"GenericError", "Parameter '" + key + "' is unexpected or of the wrong type for 'migrate'"};
    }
    if (uri.empty()) throw CommandError{"GenericError", "Parameter 'uri' is missing"};
    if (uri.rfind("fd:", 0) == 0) {
      // A connected stream socket the client passed with getfd (QEMU's "fd:" migration).
      target_.migrate_to_fd(take_named_fd(uri.substr(3)), downtime);
      return json::object();
    }
    target_.migrate(uri, downtime);
    return json::object();
  }
  if (name == "getfd") {
    // {"fdname": NAME}: names the descriptor sent with this message (SCM_RIGHTS).
    if (!args.contains("fdname") || !args["fdname"].is_string())
      throw CommandError{"GenericError", "Parameter 'fdname' is missing or not a string"};
    for (const auto& [key, value] : args.items())
      if (key != "fdname") throw CommandError{"GenericError", "Parameter '" + key + "' is unexpected for 'getfd'"};
    std::string fdname = args["fdname"].get<std::string>();
    if (!valid_fd_name(fdname))
      throw CommandError{"GenericError", "Parameter 'fdname' expects an identifier (letters, digits, '-', '_', '.'; "
                                         "not starting with a digit; at most 64 characters)"};
    if (client.passed_fds.empty())
      throw CommandError{"GenericError", "No file descriptor supplied via SCM_RIGHTS"};
    UniqueFd fd = std::move(client.passed_fds.front());
    client.passed_fds.pop_front();
    if (!named_fds_.count(fdname) && named_fds_.size() >= kMaxNamedFds)
      throw CommandError{"GenericError", "too many named file descriptors (" + std::to_string(kMaxNamedFds) +
                                             "); close some with closefd"};
    named_fds_[fdname] = std::move(fd);  // a name given again refers to the new descriptor
    return json::object();
  }
  if (name == "closefd") {
    if (!args.contains("fdname") || !args["fdname"].is_string() || args.size() != 1)
      throw CommandError{"GenericError", "closefd takes one parameter, 'fdname' (a string)"};
    take_named_fd(args["fdname"].get<std::string>());
    return json::object();
  }
  if (name == "query-migrate") {
    expect_no_arguments(name, args);
    return target_.query_migrate();
  }
  if (name == "console-attach") {
    expect_no_arguments(name, args);
    return json::object();
  }
  throw CommandError{"CommandNotFound", "The command " + name + " has not been found"};
}

void ControlServer::send_line(Client& client, const json& message) {
  // Replace invalid UTF-8 (echoed back from a malformed message) instead of throwing.
  client.out += message.dump(-1, ' ', false, json::error_handler_t::replace);
  client.out += '\n';
}

void ControlServer::queue_bytes(uint64_t id, Client& client, std::string_view bytes) {
  if (client.out.size() + bytes.size() > options_.max_client_backlog) {
    if (client.console) return;  // a console reader that does not keep up loses output
    log::warn("control socket {}: client does not read its events; closing it", path_);
    close_client(id);
    return;
  }
  client.out.append(bytes);
  try_write(id, client);
}

void ControlServer::try_write(uint64_t id, Client& client) {
  while (!client.out.empty()) {
    ssize_t n = ::send(client.fd.get(), client.out.data(), client.out.size(), MSG_NOSIGNAL);
    if (n < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN) break;
      close_client(id);
      return;
    }
    client.out.erase(0, static_cast<size_t>(n));
  }
  if (client.out.empty() && client.closing) {
    close_client(id);
    return;
  }
  update_interest(id, client);
}

void ControlServer::handle_writable(uint64_t id) {
  auto it = clients_.find(id);
  if (it != clients_.end()) try_write(id, it->second);
}

void ControlServer::update_interest(uint64_t id, Client& client) {
  bool want = !client.out.empty();
  if (want == client.want_out) return;
  epoll_event ev{};
  ev.events = EPOLLIN | EPOLLRDHUP | (want ? EPOLLOUT : 0u);
  ev.data.u64 = id;
  if (::epoll_ctl(epoll_.get(), EPOLL_CTL_MOD, client.fd.get(), &ev) == 0) client.want_out = want;
}

UniqueFd ControlServer::take_named_fd(const std::string& name) {
  auto it = named_fds_.find(name);
  if (it == named_fds_.end())
    throw CommandError{"GenericError", "File descriptor named '" + name + "' has not been found"};
  UniqueFd fd = std::move(it->second);
  named_fds_.erase(it);
  return fd;
}

void ControlServer::close_client(uint64_t id) {
  auto it = clients_.find(id);
  if (it == clients_.end()) return;
  ::epoll_ctl(epoll_.get(), EPOLL_CTL_DEL, it->second.fd.get(), nullptr);
  clients_.erase(it);
}

void ControlServer::drain_pending() {
  std::deque<std::string> events;
  std::string console;
  {
    std::lock_guard lock(mailbox_->mutex);
    events.swap(mailbox_->events);
    console.swap(mailbox_->console);
  }
  std::vector<uint64_t> ids;
  for (auto& [id, client] : clients_) ids.push_back(id);
  for (uint64_t id : ids) {
    auto it = clients_.find(id);
    if (it == clients_.end()) continue;
    Client& client = it->second;
    if (client.console) {
      if (!console.empty()) queue_bytes(id, client, console);
    } else if (client.negotiated) {
      for (const std::string& line : events) {
        if (!clients_.count(id)) break;
        queue_bytes(id, client, line);
      }
    }
  }
}

sandbox::AllowList ControlServer::syscalls() {
  return {
      {"accept4"}, {"recvfrom"}, {"recvmsg"}, {"sendto"}, {"shutdown"},
      {"epoll_wait"}, {"epoll_ctl"}, {"read"}, {"poll"}, {"timerfd_settime"},
      // Removing the socket file when it closes: a confined VMM's root does not hold it (the
      // daemon removes it), so the call fails harmlessly.
      {"unlink", {}, ENOENT},
  };
}

}  // namespace keel::control
