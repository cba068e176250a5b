#include "manager/api_client.h"

#include <sys/socket.h>

#include <algorithm>
#include <cerrno>

#include "control/unix_socket.h"

namespace keel::manager {

using nlohmann::json;

namespace {

constexpr size_t kMaxHeader = 64 * 1024;

// Reads from a connected socket until a deadline (none once it is lifted for a stream's body).
class Reader {
 public:
  Reader(int fd, std::chrono::milliseconds timeout)
      : fd_(fd), deadline_(std::chrono::steady_clock::now() + timeout) {}
  void lift_deadline() { deadline_ = std::chrono::steady_clock::time_point::max(); }

  // Appends what arrives to buffer_; false at end of stream.
  bool fill(const std::function<bool()>& stop = nullptr) {
    char buf[16384];
    for (;;) {
      if (stop) {
        // Wake up now and then to let the caller stop a stream that has nothing to say.
        while (!control::wait_readable(fd_, std::chrono::milliseconds(200))) {
          if (stop()) return false;
        }
      } else if (!control::wait_readable(fd_, left())) {
        throw Error("the daemon did not answer in time");
      }
      ssize_t n = ::recv(fd_, buf, sizeof(buf), 0);
      if (n < 0 && errno == EINTR) continue;
      if (n < 0) throw_errno("read from the daemon");
      if (n == 0) return false;
      buffer_.append(buf, static_cast<size_t>(n));
      return true;
    }
  }
  std::string& buffer() { return buffer_; }

 private:
  std::chrono::milliseconds left() const {
    if (deadline_ == std::chrono::steady_clock::time_point::max()) return std::chrono::hours(24);
    auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(
        deadline_ - std::chrono::steady_clock::now());
    return std::max(ms, std::chrono::milliseconds(0));
  }

  int fd_;
  std::chrono::steady_clock::time_point deadline_;
  std::string buffer_;
};

std::string lower(std::string s) {
  std::transform(s.begin(), s.end(), s.begin(), [](unsigned char c) { return std::tolower(c); });
  return s;
}

// Sends the request and parses the status line and headers; the body is left in the reader.
HttpResponse start_exchange(int fd, Reader& reader, const std::string& method,
                            const std::string& path, std::string_view body,
                            const std::string& content_type, std::chrono::milliseconds timeout) {
  std::string request = method + " " + path + " HTTP/1.1\r\nHost: keel\r\nConnection: close\r\n";
  if (!body.empty() || method == "POST" || method == "PUT") {
    request += "Content-Type: " + content_type + "\r\n";
    request += "Content-Length: " + std::to_string(body.size()) + "\r\n";
  }
  request += "\r\n";
  request.append(body);
  // A daemon that refuses the request early (a body over its limit) answers and closes before
  // the body is sent: the answer is still there to read after the write fails.
  std::exception_ptr write_error;
  try {
    control::write_all(fd, request, timeout);
  } catch (const Error&) {
    write_error = std::current_exception();
  }

  size_t end;
  while ((end = reader.buffer().find("\r\n\r\n")) == std::string::npos) {
    if (reader.buffer().size() > kMaxHeader) throw Error("the daemon sent an oversized header");
    bool more = false;
    try {
      more = reader.fill();
    } catch (const Error&) {
      if (write_error) std::rethrow_exception(write_error);
      throw;
    }
    if (!more) {
      if (write_error) std::rethrow_exception(write_error);
      throw Error("the daemon closed the connection without an answer");
    }
  }
  std::string head = reader.buffer().substr(0, end);
  reader.buffer().erase(0, end + 4);

  HttpResponse response;
  size_t line_end = head.find("\r\n");
  std::string status_line = head.substr(0, line_end);
  if (status_line.rfind("HTTP/1.", 0) != 0 || status_line.size() < 12) {
    throw Error("the daemon sent a malformed status line");
  }
  response.status = std::atoi(status_line.c_str() + 9);
  size_t pos = line_end == std::string::npos ? head.size() : line_end + 2;
  while (pos < head.size()) {
    size_t next = head.find("\r\n", pos);
    if (next == std::string::npos) next = head.size();
    std::string line = head.substr(pos, next - pos);
    size_t colon = line.find(':');
    if (colon != std::string::npos) {
      std::string value = line.substr(colon + 1);
      value.erase(0, value.find_first_not_of(" \t"));
      response.headers[lower(line.substr(0, colon))] = value;
    }
    pos = next + 2;
  }
  return response;
}

// Reads the body, handing it to `sink` piece by piece.
void read_body(Reader& reader, const HttpResponse& response,
               const std::function<bool(std::string_view)>& sink,
               const std::function<bool()>& stop) {
  auto te = response.headers.find("transfer-encoding");
  if (te != response.headers.end() && lower(te->second).find("chunked") != std::string::npos) {
    for (;;) {
      size_t line_end;
      while ((line_end = reader.buffer().find("\r\n")) == std::string::npos) {
        if (!reader.fill(stop)) return;
      }
      size_t size = std::stoul(reader.buffer().substr(0, line_end), nullptr, 16);
      reader.buffer().erase(0, line_end + 2);
      if (size == 0) return;
      while (reader.buffer().size() < size + 2) {
        if (!reader.fill(stop)) throw Error("the daemon ended a chunked body early");
      }
      if (!sink(std::string_view(reader.buffer().data(), size))) return;
      reader.buffer().erase(0, size + 2);
    }
  }
  auto cl = response.headers.find("content-length");
  if (cl != response.headers.end()) {
    size_t length = std::stoul(cl->second);
    while (reader.buffer().size() < length) {
      if (!reader.fill(stop)) throw Error("the daemon ended the body early");
    }
    sink(std::string_view(reader.buffer().data(), length));
    return;
  }
  for (;;) {
    if (!reader.buffer().empty()) {
      if (!sink(reader.buffer())) return;
      reader.buffer().clear();
    }
    if (!reader.fill(stop)) return;
  }
}

[[noreturn]] void throw_api_error(const HttpResponse& response) {
  json body = json::parse(response.body, nullptr, false);
  if (body.is_object() && body.contains("error") && body["error"].is_object()) {
    throw ApiError(response.status, body["error"].value("code", "error"),
                   body["error"].value("message", "error " + std::to_string(response.status)));
  }
  throw ApiError(response.status, "error",
                 "the daemon answered " + std::to_string(response.status));
}

}  // namespace

HttpResponse ApiClient::request(const std::string& method, const std::string& path,
                                std::string_view body, const std::string& content_type) {
  UniqueFd fd;
  try {
    fd = control::connect_unix(socket_path_, timeout_, false);
  } catch (const Error& e) {
    throw Error(std::string("cannot reach the keel daemon: ") + e.what());
  }
  Reader reader(fd.get(), timeout_);
  HttpResponse response = start_exchange(fd.get(), reader, method, path, body, content_type, timeout_);
  read_body(reader, response, [&](std::string_view piece) {
    response.body.append(piece);
    return true;
  }, nullptr);
  return response;
}

json ApiClient::call(const std::string& method, const std::string& path, const json& body) {
  std::string text = body.is_null() ? std::string() : body.dump();
  HttpResponse response = request(method, path, text);
  if (response.status < 200 || response.status >= 300) throw_api_error(response);
  json parsed = json::parse(response.body, nullptr, false);
  if (parsed.is_discarded()) throw Error("the daemon sent malformed JSON");
  return parsed;
}

void ApiClient::stream(const std::string& path,
                       const std::function<bool(std::string_view)>& on_data,
                       const std::function<bool()>& stop, const std::function<void()>& on_open) {
  UniqueFd fd;
  try {
    fd = control::connect_unix(socket_path_, timeout_, false);
  } catch (const Error& e) {
    throw Error(std::string("cannot reach the keel daemon: ") + e.what());
  }
  Reader reader(fd.get(), timeout_);
  HttpResponse response = start_exchange(fd.get(), reader, "GET", path, {}, {}, timeout_);
  if (response.status < 200 || response.status >= 300) {
    read_body(reader, response, [&](std::string_view piece) {
      response.body.append(piece);
      return true;
    }, nullptr);
    throw_api_error(response);
  }
  if (on_open) on_open();
  reader.lift_deadline();  // a stream lasts as long as its reader wants
  read_body(reader, response, on_data, stop ? stop : [] { return false; });
}

}  // namespace keel::manager
