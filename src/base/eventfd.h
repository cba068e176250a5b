// RAII eventfd: a counter one thread signals and another waits on (through epoll or read()).
#pragma once

#include <cstdint>

#include "base/fd.h"

namespace keel {

class EventFd {
 public:
  // Non-blocking, close-on-exec. Throws Error on failure.
  EventFd();

  int fd() const { return fd_.get(); }
  // Thread-safe: adds `n` to the counter, waking any waiter.
  void signal(uint64_t n = 1) const;
  // Returns the counter and resets it to zero; 0 if it was not signalled.
  uint64_t consume() const;

 private:
  UniqueFd fd_;
};

}  // namespace keel
