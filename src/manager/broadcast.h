// Recent output kept for readers that come and go: the console of one VM (bytes) and the daemon's
// event stream (JSON lines). Writers append from the supervisor thread; each reader keeps its own
// position and either waits on a condition variable (read() with a timeout) or holds a
// Subscription, an eventfd the history signals on every append and on close(), so that an HTTP
// stream can poll it together with its client's socket and notice a hang-up at once.
#pragma once

#include <algorithm>
#include <memory>

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <iterator>
#include <mutex>
#include <string>
#include <string_view>
#include <vector>

#include "base/eventfd.h"

namespace keel::manager {

// The last `capacity` elements of a stream held in `Buffer` (a string of bytes, a deque of
// messages); positions count elements from the stream's start. read() returns them as `Out`.
template <typename Buffer, typename Out = Buffer>
class History {
 public:
  explicit History(size_t capacity) : capacity_(capacity) {}

  // An eventfd signalled on every append and on close() for as long as this lives.
  class Subscription {
   public:
    explicit Subscription(History& history) : history_(history) {
      std::lock_guard lock(history_.mutex_);
      history_.subscribers_.push_back(&wake_);
      if (history_.closed_) wake_.signal();
    }
    ~Subscription() {
      std::lock_guard lock(history_.mutex_);
      auto& s = history_.subscribers_;
      s.erase(std::remove(s.begin(), s.end(), &wake_), s.end());
    }
    Subscription(const Subscription&) = delete;
    Subscription& operator=(const Subscription&) = delete;
    int fd() const { return wake_.fd(); }
    void consume() const { wake_.consume(); }

   private:
    History& history_;
    EventFd wake_;
  };

  uint64_t end() const {
    std::lock_guard lock(mutex_);
    return end_;
  }
  // Elements from `position` (or the oldest kept) to the end, waiting up to `timeout` for at
  // least one; advances `position`. Empty on timeout or after close().
  Out read(uint64_t& position, std::chrono::milliseconds timeout) {
    std::unique_lock lock(mutex_);
    cv_.wait_for(lock, timeout, [&] { return end_ > position || closed_; });
    uint64_t begin = end_ - buffer_.size();
    if (position < begin) position = begin;
    Out out(buffer_.begin() + static_cast<ptrdiff_t>(position - begin), buffer_.end());
    position = end_;
    return out;
  }
  // Wakes every reader; they see what is left, then empty reads.
  void close() {
    {
      std::lock_guard lock(mutex_);
      closed_ = true;
      for (const EventFd* s : subscribers_) s->signal();
    }
    cv_.notify_all();
  }
  bool closed() const {
    std::lock_guard lock(mutex_);
    return closed_;
  }

 protected:
  // Appends [first, last) and forgets what exceeds the capacity.
  template <typename It>
  void add(It first, It last) {
    {
      std::lock_guard lock(mutex_);
      size_t before = buffer_.size();
      buffer_.insert(buffer_.end(), first, last);
      end_ += buffer_.size() - before;
      if (buffer_.size() > capacity_)
        buffer_.erase(buffer_.begin(),
                      buffer_.begin() + static_cast<ptrdiff_t>(buffer_.size() - capacity_));
      for (const EventFd* s : subscribers_) s->signal();
    }
    cv_.notify_all();
  }

 private:
  mutable std::mutex mutex_;
  std::condition_variable cv_;
  size_t capacity_;
  Buffer buffer_;
  uint64_t end_ = 0;
  bool closed_ = false;
  std::vector<const EventFd*> subscribers_;
};

// The last `capacity` bytes of a byte stream (a VM's console).
class ByteHistory : public History<std::string> {
 public:
  explicit ByteHistory(size_t capacity = 64 * 1024) : History(capacity) {}
  void append(std::string_view bytes) { add(bytes.begin(), bytes.end()); }
};

// The last `capacity` messages of a stream (lifecycle events); sequence numbers count from 0.
class MessageHistory : public History<std::deque<std::string>, std::vector<std::string>> {
 public:
  explicit MessageHistory(size_t capacity = 1024) : History(capacity) {}
  void publish(std::string message) {
    add(std::make_move_iterator(&message), std::make_move_iterator(&message + 1));
  }
};

}  // namespace keel::manager
