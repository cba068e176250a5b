// Recent output kept for readers that come and go: the console of one VM (bytes) and the daemon's
// event stream (JSON lines). Writers append from the supervisor thread; each reader (an HTTP
// streaming handler on its own thread) keeps its own position and waits on a condition variable.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <mutex>
#include <string>
#include <string_view>
#include <vector>

namespace keel::manager {

// The last `capacity` bytes of a byte stream; positions count from the stream's start.
class ByteHistory {
 public:
  explicit ByteHistory(size_t capacity = 64 * 1024) : capacity_(capacity) {}

  void append(std::string_view bytes) {
    {
      std::lock_guard lock(mutex_);
      data_.append(bytes);
      end_ += bytes.size();
      if (data_.size() > capacity_) data_.erase(0, data_.size() - capacity_);
    }
    cv_.notify_all();
  }
  uint64_t end() const {
    std::lock_guard lock(mutex_);
    return end_;
  }
  // Bytes from `position` (or the oldest kept) to the end, waiting up to `timeout` for at least
  // one; advances `position`. Empty on timeout or after close().
  std::string read(uint64_t& position, std::chrono::milliseconds timeout) {
    std::unique_lock lock(mutex_);
    cv_.wait_for(lock, timeout, [&] { return end_ > position || closed_; });
    uint64_t begin = end_ - data_.size();
    if (position < begin) position = begin;
    std::string out = data_.substr(static_cast<size_t>(position - begin));
    position = end_;
    return out;
  }
  void close() {
    {
      std::lock_guard lock(mutex_);
      closed_ = true;
    }
    cv_.notify_all();
  }
  bool closed() const {
    std::lock_guard lock(mutex_);
    return closed_;
  }

 private:
  mutable std::mutex mutex_;
  std::condition_variable cv_;
  size_t capacity_;
  std::string data_;
  uint64_t end_ = 0;
  bool closed_ = false;
};

// The last `capacity` messages of a stream; sequence numbers count from 0.
class MessageHistory {
 public:
  explicit MessageHistory(size_t capacity = 1024) : capacity_(capacity) {}

  void publish(std::string message) {
    {
      std::lock_guard lock(mutex_);
      messages_.push_back(std::move(message));
      ++end_;
      if (messages_.size() > capacity_) messages_.pop_front();
    }
    cv_.notify_all();
  }
  uint64_t end() const {
    std::lock_guard lock(mutex_);
    return end_;
  }
  std::vector<std::string> read(uint64_t& position, std::chrono::milliseconds timeout) {
    std::unique_lock lock(mutex_);
    cv_.wait_for(lock, timeout, [&] { return end_ > position || closed_; });
    uint64_t begin = end_ - messages_.size();
    if (position < begin) position = begin;
    std::vector<std::string> out(messages_.begin() + static_cast<ptrdiff_t>(position - begin),
                                 messages_.end());
    position = end_;
    return out;
  }
  void close() {
    {
      std::lock_guard lock(mutex_);
      closed_ = true;
    }
    cv_.notify_all();
  }
  bool closed() const {
    std::lock_guard lock(mutex_);
    return closed_;
  }

 private:
  mutable std::mutex mutex_;
  std::condition_variable cv_;
  size_t capacity_;
  std::deque<std::string> messages_;
  uint64_t end_ = 0;
  bool closed_ = false;
};

}  // namespace keel::manager
