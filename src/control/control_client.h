// Client side of the per-VM control socket (see control_server.h for the protocol). Used by the
// daemon's VMM supervisor, by tests and by benchmarks.
#pragma once

#include <chrono>
#include <deque>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "base/error.h"
#include "base/fd.h"

namespace keel::control {

// The VMM answered a command with {"error": {"class": ..., "desc": ...}}.
class ControlError : public Error {
 public:
  ControlError(std::string klass, const std::string& desc)
      : Error(desc), klass_(std::move(klass)) {}
  const std::string& error_class() const { return klass_; }

 private:
  std::string klass_;
};

// Writes `bytes` to a connected unix socket with `fd` attached to them (SCM_RIGHTS).
void send_with_fd(int socket, std::string_view bytes, int fd);

class ControlClient {
 public:
  static constexpr std::chrono::milliseconds kDefaultTimeout{10000};

  // Connects (retrying until `timeout` while the socket is not there yet), reads the greeting and
  // negotiates capabilities. `token`: the daemon's, which a VMM keeps slots for.
  static ControlClient connect(const std::string& path,
                               std::chrono::milliseconds timeout = kDefaultTimeout,
                               const std::string& token = {});
  // Connects, negotiates and switches the connection to the raw console stream; the returned fd
  // carries the guest's serial output (read) and input (write).
  static UniqueFd attach_console(const std::string& path,
                                 std::chrono::milliseconds timeout = kDefaultTimeout,
                                 const std::string& token = {});

  explicit ControlClient(UniqueFd fd) : fd_(std::move(fd)) {}

  // Sends a command and waits for its reply (messages without our id are events: queued).
  // Throws ControlError for an error reply, Error on timeout or when the VMM hangs up.
  nlohmann::json execute(const std::string& command,
                         nlohmann::json arguments = nlohmann::json::object(),
                         std::chrono::milliseconds timeout = kDefaultTimeout);
  // The same with descriptor `fd` sent along (SCM_RIGHTS), as `getfd` expects it.
  nlohmann::json execute_passing(const std::string& command, nlohmann::json arguments, int fd,
                                 std::chrono::milliseconds timeout = kDefaultTimeout);
  // The next asynchronous event, waiting up to `timeout`; nullopt if none came.
  std::optional<nlohmann::json> next_event(std::chrono::milliseconds timeout);

  // Lower level, for callers that poll fd() themselves.
  int fd() const { return fd_.get(); }
  const nlohmann::json& greeting() const { return greeting_; }
  void send(const nlohmann::json& message);
  // Reads once (the fd must be readable) and returns the complete messages received. Throws Error
  // when the peer has closed the connection or sends a line longer than the limit.
  std::vector<nlohmann::json> read_messages();

 private:
  nlohmann::json read_one(std::chrono::steady_clock::time_point deadline);

  UniqueFd fd_;
  std::string in_;
  std::deque<nlohmann::json> messages_;  // read but not yet consumed
  std::deque<nlohmann::json> events_;
  nlohmann::json greeting_;
  uint64_t next_id_ = 1;
};

}  // namespace keel::control
