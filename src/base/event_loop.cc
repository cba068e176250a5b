#include "base/event_loop.h"

#include <sys/epoll.h>
#include <sys/timerfd.h>
#include <unistd.h>

#include <cerrno>

#include "base/error.h"

namespace keel {
namespace {

constexpr uint64_t kWakeKey = 0;

timespec to_timespec(std::chrono::nanoseconds ns) {
  if (ns.count() < 0) ns = std::chrono::nanoseconds(0);
  return timespec{static_cast<time_t>(ns.count() / 1'000'000'000),
                  static_cast<long>(ns.count() % 1'000'000'000)};
}

}  // namespace

EventLoop::EventLoop() : epoll_(::epoll_create1(EPOLL_CLOEXEC)) {
  if (!epoll_) throw_errno("epoll_create1");
  epoll_event ev{};
  ev.events = EPOLLIN;
  ev.data.u64 = kWakeKey;
  if (::epoll_ctl(epoll_.get(), EPOLL_CTL_ADD, wake_.fd(), &ev) < 0)
    throw_errno("epoll_ctl(ADD eventfd)");
}

EventLoop::~EventLoop() = default;

void EventLoop::add_fd(int fd, uint32_t events, FdCallback callback) {
  if (keys_.count(fd)) throw Error("event loop: fd " + std::to_string(fd) + " is already watched");
  uint64_t key = next_key_++;
  epoll_event ev{};
  ev.events = events;
  ev.data.u64 = key;
  if (::epoll_ctl(epoll_.get(), EPOLL_CTL_ADD, fd, &ev) < 0)
    throw_errno("epoll_ctl(ADD fd " + std::to_string(fd) + ")");
  watches_[key] = std::make_shared<Watch>(Watch{fd, std::move(callback)});
  keys_[fd] = key;
}

void EventLoop::modify_fd(int fd, uint32_t events) {
  auto it = keys_.find(fd);
  if (it == keys_.end()) throw Error("event loop: fd " + std::to_string(fd) + " is not watched");
  epoll_event ev{};
  ev.events = events;
  ev.data.u64 = it->second;
  if (::epoll_ctl(epoll_.get(), EPOLL_CTL_MOD, fd, &ev) < 0)
    throw_errno("epoll_ctl(MOD fd " + std::to_string(fd) + ")");
}

void EventLoop::remove_fd(int fd) {
  auto it = keys_.find(fd);
  if (it == keys_.end()) return;
  // The fd may already be closed by its owner; epoll then dropped it itself.
  ::epoll_ctl(epoll_.get(), EPOLL_CTL_DEL, fd, nullptr);
  watches_.erase(it->second);
  keys_.erase(it);
}

EventLoop::TimerId EventLoop::add_timer(std::chrono::nanoseconds delay,
                                        std::chrono::nanoseconds interval,
                                        std::function<void()> callback) {
  UniqueFd tfd(::timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC));
  if (!tfd) throw_errno("timerfd_create");
  itimerspec spec{};
  spec.it_value = to_timespec(delay);
  // A zero it_value disarms a timerfd: fire "now" as 1 ns instead.
  if (spec.it_value.tv_sec == 0 && spec.it_value.tv_nsec == 0) spec.it_value.tv_nsec = 1;
  spec.it_interval = to_timespec(interval);
  if (::timerfd_settime(tfd.get(), 0, &spec, nullptr) < 0) throw_errno("timerfd_settime");
  int fd = tfd.get();
  bool periodic = interval.count() > 0;
  add_fd(fd, EPOLLIN, [this, fd, cb = std::move(callback)](uint32_t) {
    uint64_t expirations = 0;
    if (::read(fd, &expirations, sizeof expirations) != sizeof expirations) return;
    TimerId id = keys_.at(fd);
    // Copy first: a one-shot timer's removal destroys this lambda.
    auto fn = cb;
    if (!timers_.at(id).periodic) cancel_timer(id);
    fn();
  });
  TimerId id = keys_.at(fd);
  timers_.emplace(id, Timer{std::move(tfd), periodic});
  return id;
}

void EventLoop::cancel_timer(TimerId id) {
  auto it = timers_.find(id);
  if (it == timers_.end()) return;
  remove_fd(it->second.fd.get());
  timers_.erase(it);
}

void EventLoop::post(std::function<void()> fn) {
  {
    std::lock_guard lock(posted_mutex_);
    posted_.push_back(std::move(fn));
  }
  wake_.signal();
}

void EventLoop::stop() {
  {
    std::lock_guard lock(posted_mutex_);
    stop_requested_ = true;
  }
  wake_.signal();
}

bool EventLoop::stopping() const {
  std::lock_guard lock(posted_mutex_);
  return stop_requested_;
}

int EventLoop::run_posted() {
  std::vector<std::function<void()>> batch;
  {
    std::lock_guard lock(posted_mutex_);
    batch.swap(posted_);
  }
  for (auto& fn : batch) fn();
  return static_cast<int>(batch.size());
}

int EventLoop::run_once(std::chrono::milliseconds timeout) {
  epoll_event events[32];
  int n = ::epoll_wait(epoll_.get(), events, 32, static_cast<int>(timeout.count()));
  if (n < 0) {
    if (errno == EINTR) return 0;
    throw_errno("epoll_wait");
  }
  int ran = 0;
  for (int i = 0; i < n; ++i) {
    uint64_t key = events[i].data.u64;
    if (key == kWakeKey) {
      wake_.consume();
      ran += run_posted();
      continue;
    }
    auto it = watches_.find(key);
    if (it == watches_.end()) continue;  // removed by an earlier callback in this batch
    auto watch = it->second;             // keeps the callback alive while it runs
    watch->callback(events[i].events);
    ++ran;
  }
  return ran;
}

void EventLoop::run() {
  while (true) {
    {
      std::lock_guard lock(posted_mutex_);
      if (stop_requested_) {
        stop_requested_ = false;
        break;
      }
    }
    run_once(std::chrono::milliseconds(-1));
  }
  // Work posted before stop() still runs, so a handoff is never silently dropped.
  run_posted();
}

}  // namespace keel
