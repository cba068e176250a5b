// The client of the daemon's API on its unix socket (Boost.Beast): one connection per request
// ("Connection: close"); bodies by Content-Length, chunked transfer encoding or end of stream.
#pragma once

#include <chrono>
#include <functional>
#include <map>
#include <string>
#include <string_view>

#include <nlohmann/json.hpp>

#include "base/error.h"

namespace keel::manager {

// The daemon answered with an error status; the message is its error.message.
class ApiError : public Error {
 public:
  ApiError(int status, std::string code, const std::string& message)
      : Error(message), status_(status), code_(std::move(code)) {}
  int status() const { return status_; }
  const std::string& code() const { return code_; }

 private:
  int status_;
  std::string code_;
};

struct HttpResponse {
  int status = 0;
  std::map<std::string, std::string> headers;  // names lower-cased
  std::string body;
};

class ApiClient {
 public:
  // `timeout` bounds each request as a whole (connect, send, the whole answer) and the opening
  // of a stream (until its headers came); a daemon that is busy, stuck or gone cannot hang a
  // client longer.
  explicit ApiClient(std::string socket_path,
                     std::chrono::milliseconds timeout = std::chrono::seconds(60))
      : socket_path_(std::move(socket_path)), timeout_(timeout) {}

  // One request; the whole response. Throws Error if the daemon cannot be reached or does not
  // answer within the timeout.
  HttpResponse request(const std::string& method, const std::string& path,
                       std::string_view body = {},
                       const std::string& content_type = "application/json");
  // A JSON request: the parsed JSON response for a 2xx status, ApiError otherwise.
  nlohmann::json call(const std::string& method, const std::string& path,
                      const nlohmann::json& body = nullptr);
  // A streaming GET: `on_data` gets each piece of the body as it arrives until it returns false,
  // the stream ends or `stop` (checked between reads) says so. `on_open` runs once the daemon
  // accepted the stream (its headers came), before any data: from then on nothing is missed.
  // Throws ApiError for an error status.
  void stream(const std::string& path, const std::function<bool(std::string_view)>& on_data,
              const std::function<bool()>& stop = nullptr,
              const std::function<void()>& on_open = nullptr);

  const std::string& socket_path() const { return socket_path_; }

 private:
  std::string socket_path_;
  std::chrono::milliseconds timeout_;
};

}  // namespace keel::manager
