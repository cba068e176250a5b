#include "base/eventfd.h"

#include <sys/eventfd.h>
#include <unistd.h>

#include <cerrno>

#include "base/error.h"

namespace keel {

EventFd::EventFd() : fd_(::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC)) {
  if (!fd_) throw_errno("eventfd");
}

void EventFd::signal(uint64_t n) const {
  // A write only fails with EAGAIN when the counter would overflow, and then the fd is already
  // readable, which is all a waiter needs.
  while (::write(fd_.get(), &n, sizeof n) < 0 && errno == EINTR) {
  }
}

uint64_t EventFd::consume() const {
  uint64_t value = 0;
  ssize_t r;
  do {
    r = ::read(fd_.get(), &value, sizeof value);
  } while (r < 0 && errno == EINTR);
  return r == sizeof value ? value : 0;
}

}  // namespace keel
