// EventLoop: the main thread's epoll loop (console input, control socket, timers, ioeventfds).
//
// Threading: run() runs on one thread, "the loop thread". add_fd/modify_fd/remove_fd/add_timer/
// cancel_timer are called on the loop thread (from callbacks) or before run() starts. post() and
// stop() are thread-safe: post() hands a function to the loop thread through a queue and an
// eventfd wake-up; that is the only way other threads (vCPUs, the control socket's clients) get
// work done on the loop thread.
//
// Callbacks may add or remove any fd, including their own; a removed fd gets no further callbacks,
// even for events already collected in the same epoll_wait batch.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <unordered_map>
#include <vector>

#include "base/eventfd.h"
#include "base/fd.h"

namespace keel {

class EventLoop {
 public:
  using FdCallback = std::function<void(uint32_t events)>;  // EPOLLIN, EPOLLOUT, EPOLLHUP, ...
  using TimerId = uint64_t;

  EventLoop();
  ~EventLoop();
  EventLoop(const EventLoop&) = delete;
  EventLoop& operator=(const EventLoop&) = delete;

  // Watches `fd` (not owned) for `events` (level-triggered). Throws Error if it is already watched.
  void add_fd(int fd, uint32_t events, FdCallback callback);
  void modify_fd(int fd, uint32_t events);
  // Stops watching `fd`; no-op if it is not watched.
  void remove_fd(int fd);

  // Calls `callback` once after `delay`, then every `interval` if it is non-zero (timerfd, on
  // CLOCK_MONOTONIC). Returns an id for cancel_timer; a one-shot timer is removed after it fires.
  TimerId add_timer(std::chrono::nanoseconds delay, std::chrono::nanoseconds interval,
                    std::function<void()> callback);
  void cancel_timer(TimerId id);

  // Thread-safe: runs `fn` on the loop thread, in posting order.
  void post(std::function<void()> fn);

  // Runs until stop(). Exceptions thrown by callbacks propagate out of run().
  void run();
  // Waits up to `timeout` (negative: forever) for events and dispatches one batch; returns the
  // number of callbacks run (posted functions included).
  int run_once(std::chrono::milliseconds timeout);
  // Thread-safe: makes run() return after the current batch. Sticky until run() returns.
  void stop();
  bool stopping() const;

 private:
  struct Watch {
    int fd;
    FdCallback callback;
  };
  struct Timer {
    UniqueFd fd;
    bool periodic;
  };
  int run_posted();

  UniqueFd epoll_;
  EventFd wake_;
  uint64_t next_key_ = 1;
  std::unordered_map<uint64_t, std::shared_ptr<Watch>> watches_;  // epoll key -> watch
  std::unordered_map<int, uint64_t> keys_;                          // fd -> epoll key
  std::unordered_map<TimerId, Timer> timers_;                       // id = epoll key of its fd

  mutable std::mutex posted_mutex_;
  std::vector<std::function<void()>> posted_;
  bool stop_requested_ = false;  // guarded by posted_mutex_
};

}  // namespace keel
