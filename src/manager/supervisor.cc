#include "manager/supervisor.h"

#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>

#include "base/error.h"
#include "base/log.h"
#include "control/unix_socket.h"

namespace keel::manager {

namespace {
// epoll keys: 0 is the wake eventfd; a watched VMM `id` uses id*4 + kind.
enum Kind : uint64_t { kControl = 1, kConsole = 2, kPid = 3 };
}  // namespace

Supervisor::Supervisor() {
  epoll_.reset(::epoll_create1(EPOLL_CLOEXEC));
  if (!epoll_) throw_errno("epoll_create1");
  wake_.reset(::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC));
  if (!wake_) throw_errno("eventfd");
  epoll_event ev{};
  ev.events = EPOLLIN;
  ev.data.u64 = 0;
  if (::epoll_ctl(epoll_.get(), EPOLL_CTL_ADD, wake_.get(), &ev) != 0) throw_errno("epoll_ctl");
  thread_ = std::thread([this] { run(); });
}

Supervisor::~Supervisor() {
  {
    std::lock_guard lock(mutex_);
    stop_ = true;
  }
  uint64_t one = 1;
  [[maybe_unused]] ssize_t n = ::write(wake_.get(), &one, sizeof(one));
  thread_.join();
}

void Supervisor::watch(std::shared_ptr<VmmLink> link, Callbacks callbacks) {
  {
    std::lock_guard lock(mutex_);
    incoming_.emplace_back(next_id_++, Watched{std::move(link), std::move(callbacks)});
  }
  uint64_t one = 1;
  [[maybe_unused]] ssize_t n = ::write(wake_.get(), &one, sizeof(one));
}

void Supervisor::add(uint64_t id, Watched w) {
  auto add_fd = [&](int fd, uint64_t kind) {
    epoll_event ev{};
    ev.events = EPOLLIN;
    ev.data.u64 = id * 4 + kind;
    if (::epoll_ctl(epoll_.get(), EPOLL_CTL_ADD, fd, &ev) != 0) throw_errno("epoll_ctl");
  };
  add_fd(w.link->control_fd(), kControl);
  add_fd(w.link->console_fd(), kConsole);
  add_fd(w.link->pidfd(), kPid);
  watched_.emplace(id, std::move(w));
}

void Supervisor::run() {
  epoll_event events[64];
  for (;;) {
    int n = ::epoll_wait(epoll_.get(), events, 64, -1);
    if (n < 0) {
      if (errno == EINTR) continue;
      log::error("supervisor: epoll_wait: {}", std::strerror(errno));
      return;
    }
    for (int i = 0; i < n; ++i) {
      uint64_t key = events[i].data.u64;
      if (key == 0) {
        uint64_t count;
        [[maybe_unused]] ssize_t r = ::read(wake_.get(), &count, sizeof(count));
        std::vector<std::pair<uint64_t, Watched>> incoming;
        {
          std::lock_guard lock(mutex_);
          if (stop_) return;
          incoming.swap(incoming_);
        }
        for (auto& [id, w] : incoming) {
          try {
            add(id, std::move(w));
          } catch (const std::exception& e) {
            log::error("supervisor: cannot watch a VMM: {}", e.what());
          }
        }
        continue;
      }
      uint64_t id = key / 4;
      auto it = watched_.find(id);
      if (it == watched_.end()) continue;  // finished earlier in this batch
      Watched& w = it->second;
      try {
        switch (key % 4) {
          case kControl: drain_control(w, id); break;
          case kConsole: drain_console(w, id); break;
          case kPid: finish(id); break;
        }
      } catch (const std::exception& e) {
        log::error("supervisor: {}", e.what());
      }
    }
  }
}

void Supervisor::drain_control(Watched& w, uint64_t id) {
  while (w.control_open && control::wait_readable(w.link->control_fd(), std::chrono::milliseconds(0))) {
    std::vector<nlohmann::json> events;
    try {
      events = w.link->read_control();
    } catch (const Error& e) {
      // The VMM closed its side (it is exiting) or sent garbage: stop reading; the pidfd tells
      // when the process is gone.
      w.control_open = false;
      ::epoll_ctl(epoll_.get(), EPOLL_CTL_DEL, w.link->control_fd(), nullptr);
      w.link->fail_pending(e.what());
    }
    for (const auto& event : events) {
      if (w.callbacks.on_event) w.callbacks.on_event(event);
    }
  }
}

void Supervisor::drain_console(Watched& w, uint64_t id) {
  char buf[16384];
  while (w.console_open) {
    ssize_t n = ::recv(w.link->console_fd(), buf, sizeof(buf), MSG_DONTWAIT);
    if (n > 0) {
      if (w.callbacks.on_console) w.callbacks.on_console(std::string_view(buf, static_cast<size_t>(n)));
      continue;
    }
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && errno == EAGAIN) return;
    w.console_open = false;
    ::epoll_ctl(epoll_.get(), EPOLL_CTL_DEL, w.link->console_fd(), nullptr);
  }
}

void Supervisor::finish(uint64_t id) {
  Watched w = std::move(watched_.at(id));
  watched_.erase(id);
  // What the VMM said before it went (SHUTDOWN, the last console lines) is still buffered.
  drain_control(w, id);
  drain_console(w, id);
  for (int fd : {w.link->control_fd(), w.link->console_fd(), w.link->pidfd()}) {
    ::epoll_ctl(epoll_.get(), EPOLL_CTL_DEL, fd, nullptr);
  }
  int status = -1;
  if (w.link->is_child()) {
    int s = 0;
    pid_t r;
    do {
      r = ::waitpid(w.link->pid(), &s, 0);
    } while (r < 0 && errno == EINTR);
    if (r == w.link->pid()) status = s;
  }
  w.link->fail_pending("the VMM process exited");
  if (w.callbacks.on_exit) w.callbacks.on_exit(status);
}

}  // namespace keel::manager
