// Unix stream sockets: listening, connecting and small blocking/non-blocking I/O helpers shared by
// the control socket (VMM side and client side) and the manager's API client.
#pragma once

#include <chrono>
#include <string>
#include <string_view>

#include "base/fd.h"

namespace keel::control {

// Binds and listens on `path` (an existing socket file there is replaced). Non-blocking, cloexec.
// Throws Error naming the path when the path is too long or bind/listen fails.
UniqueFd listen_unix(const std::string& path, int backlog = 64);

// Connects to `path` until `timeout`, retrying while the listener's backlog is full and, when
// `wait_for_listener`, while the socket does not exist yet or refuses. Never blocks past the
// timeout. The returned fd is blocking and cloexec. Throws Error naming the path on failure.
UniqueFd connect_unix(const std::string& path,
                      std::chrono::milliseconds timeout = std::chrono::milliseconds(0),
                      bool wait_for_listener = true);

void set_nonblocking(int fd, bool on);

// Writes all of `data` to a socket or pipe (blocking or not), waiting at most `timeout` for
// room; throws Error on failure or timeout.
void write_all(int fd, std::string_view data,
               std::chrono::milliseconds timeout = std::chrono::hours(24));

// Waits until `fd` is readable or `timeout` passes; true if readable (or hung up).
bool wait_readable(int fd, std::chrono::milliseconds timeout);

}  // namespace keel::control
