#include "engine/emu/platform/deadline_watcher.h"

#include <algorithm>
#include <chrono>

#include "engine/emu/platform/guest_clock.h"

namespace keel::emu {

DeadlineWatcher::DeadlineWatcher(const GuestClock& clock) : clock_(clock) {}

DeadlineWatcher::~DeadlineWatcher() {
  {
    std::lock_guard lock(mutex_);
    stop_ = true;
  }
  cv_.notify_one();
  if (thread_.joinable()) thread_.join();
}

void DeadlineWatcher::add(DeadlineClient* client) {
  clients_.push_back(client);
  signaled_.push_back(kNever);
}

void DeadlineWatcher::start() { thread_ = std::thread([this] { run(); }); }

void DeadlineWatcher::rearm(uint64_t deadline_ns) {
  // seq_cst pairs with the watcher's store of kNever before it reads the clients' deadlines:
  // either it sees our new deadline, or we see that it is (re)evaluating and take the lock.
  if (deadline_ns >= waiting_until_.load()) return;
  {
    std::lock_guard lock(mutex_);
    changed_ = true;
  }
  cv_.notify_one();
}

void DeadlineWatcher::run() {
  std::unique_lock lock(mutex_);
  while (!stop_) {
    changed_ = false;
    waiting_until_.store(kNever);  // evaluating: every rearm() takes the lock meanwhile
    uint64_t now = clock_.now_ns();
    uint64_t next = kNever;
    for (size_t i = 0; i < clients_.size(); ++i) {
      uint64_t d = clients_[i]->next_deadline_ns();
      if (d <= now) {
        // Report each deadline once; the client moves it when it handles it.
        if (d != signaled_[i]) clients_[i]->deadline_reached();
        signaled_[i] = d;
      } else {
        next = std::min(next, d);
      }
    }
    waiting_until_.store(next);
    auto woken = [this] { return stop_ || changed_; };
    if (next == kNever)
      cv_.wait(lock, woken);
    else
      cv_.wait_for(lock, std::chrono::nanoseconds(next - now), woken);
  }
}

}  // namespace keel::emu
