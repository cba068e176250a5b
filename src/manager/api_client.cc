#include "manager/api_client.h"

#include <algorithm>

#include <boost/asio.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>

#include "control/unix_socket.h"

namespace keel::manager {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
using nlohmann::json;
using Clock = std::chrono::steady_clock;
using error_code = boost::system::error_code;

namespace {

constexpr uint32_t kMaxHeader = 64 * 1024;
constexpr uint64_t kMaxBody = 64u << 20;  // a whole answer held in memory (streams: no limit)

// One exchange with the daemon on its own io_context: each asynchronous step runs until it
// completes, the deadline passes (the socket is cancelled: "did not answer in time") or `stop`
// says so (checked every 200 ms).
class Exchange {
 public:
  Exchange(UniqueFd fd, std::chrono::milliseconds timeout)
      : socket_(ioc_, asio::local::stream_protocol(), fd.release()),
        deadline_(Clock::now() + timeout) {}

  void lift_deadline() { deadline_ = Clock::time_point::max(); }

  void write(const http::request<http::string_body>& req, error_code& ec) {
    run([&](auto done) { http::async_write(socket_, req, done); }, nullptr, ec);
  }
  void read_header(http::response_parser<http::buffer_body>& p) {
    error_code ec;
    run([&](auto done) { http::async_read_header(socket_, buffer_, p, done); }, nullptr, ec);
    if (ec) throw Error(describe(ec));
  }
  // Reads the next piece of the body into `buf`; returns its size. false at the end.
  bool read_some(http::response_parser<http::buffer_body>& p, char* buf, size_t size,
                 size_t& got, const std::function<bool()>& stop) {
    got = 0;
    if (p.is_done()) return false;
    p.get().body().data = buf;
    p.get().body().size = size;
    error_code ec;
    bool stopped = !run([&](auto done) { http::async_read_some(socket_, buffer_, p, done); }, stop,
                        ec);
    got = size - p.get().body().size;
    if (stopped) return false;
    if (ec == http::error::need_buffer) ec = {};
    if (ec == http::error::end_of_stream && got == 0) return false;
    if (ec) throw Error(describe(ec));
    return true;
  }

 private:
  static std::string describe(error_code ec) {
    if (ec == asio::error::timed_out) return "the daemon did not answer in time";
    if (ec == http::error::end_of_stream || ec == asio::error::eof)
      return "the daemon closed the connection without an answer";
    if (ec == http::error::partial_message) return "the daemon ended its answer early";
    return "the daemon's answer: " + ec.message();
  }

  // Starts `op` with a completion handler and runs the context until it completes. false if
  // `stop` ended it; `ec` is its result (timed_out past the deadline).
  template <typename Op>
  bool run(Op op, const std::function<bool()>& stop, error_code& ec) {
    bool done = false;
    op([&](error_code e, size_t) {
      done = true;
      ec = e;
    });
    bool expired = false, stopped = false;
    ioc_.restart();
    while (!done) {
      auto now = Clock::now();
      if (!expired && !stopped && (now >= deadline_ || (stop && stop()))) {
        (now >= deadline_ ? expired : stopped) = true;
        error_code ignored;
        socket_.cancel(ignored);  // the operation completes, aborted
      }
      auto slice = std::chrono::milliseconds(200);
      if (!expired && !stopped && deadline_ != Clock::time_point::max())
        slice = std::min(slice, std::chrono::duration_cast<std::chrono::milliseconds>(
                                    deadline_ - now) + std::chrono::milliseconds(1));
      ioc_.run_one_for(slice);
    }
    if (expired) ec = asio::error::timed_out;
    return !stopped;
  }

  asio::io_context ioc_{1};
  asio::local::stream_protocol::socket socket_;
  beast::flat_buffer buffer_;
  Clock::time_point deadline_;
};

UniqueFd connect(const std::string& socket_path, std::chrono::milliseconds timeout) {
  try {
    return control::connect_unix(socket_path, timeout, false);
  } catch (const Error& e) {
    throw Error(std::string("cannot reach the keel daemon: ") + e.what());
  }
}

// Sends the request and reads the status line and headers; the body is left to read.
HttpResponse start_exchange(Exchange& ex, http::response_parser<http::buffer_body>& parser,
                            const std::string& method, const std::string& path,
                            std::string_view body, const std::string& content_type) {
  http::request<http::string_body> req(http::string_to_verb(method), path, 11);
  if (req.method() == http::verb::unknown) req.method_string(method);
  req.set(http::field::host, "keel");
  req.keep_alive(false);
  if (!body.empty() || method == "POST" || method == "PUT") {
    req.set(http::field::content_type, content_type);
    req.body() = std::string(body);
    req.prepare_payload();
  }
  // A daemon that refuses the request early (a body over its limit) answers and closes before
  // the body is sent: the answer is still there to read after the write fails.
  error_code write_error;
  ex.write(req, write_error);
  parser.header_limit(kMaxHeader);
  try {
    ex.read_header(parser);
  } catch (const Error&) {
    if (write_error) throw Error("cannot send to the keel daemon: " + write_error.message());
    throw;
  }
  HttpResponse response;
  response.status = static_cast<int>(parser.get().result_int());
  for (const auto& field : parser.get()) {
    std::string name(field.name_string());
    std::transform(name.begin(), name.end(), name.begin(),
                   [](unsigned char c) { return std::tolower(c); });
    response.headers[name] = std::string(field.value());
  }
  return response;
}

// Reads the body, handing it to `sink` piece by piece until it returns false or it ends.
void read_body(Exchange& ex, http::response_parser<http::buffer_body>& parser,
               const std::function<bool(std::string_view)>& sink,
               const std::function<bool()>& stop) {
  char buf[16384];
  size_t got = 0;
  for (;;) {
    bool more = ex.read_some(parser, buf, sizeof buf, got, stop);
    if (got && !sink(std::string_view(buf, got))) return;
    if (!more) return;
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
  Exchange ex(connect(socket_path_, timeout_), timeout_);
  http::response_parser<http::buffer_body> parser;
  parser.body_limit(kMaxBody);
  HttpResponse response = start_exchange(ex, parser, method, path, body, content_type);
  read_body(ex, parser, [&](std::string_view piece) {
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
  Exchange ex(connect(socket_path_, timeout_), timeout_);
  http::response_parser<http::buffer_body> parser;
  parser.body_limit(boost::none);  // a stream lasts as long as its reader wants
  HttpResponse response = start_exchange(ex, parser, "GET", path, {}, {});
  if (response.status < 200 || response.status >= 300) {
    parser.body_limit(kMaxBody);
    read_body(ex, parser, [&](std::string_view piece) {
      response.body.append(piece);
      return true;
    }, nullptr);
    throw_api_error(response);
  }
  if (on_open) on_open();
  ex.lift_deadline();
  read_body(ex, parser, on_data, stop ? stop : [] { return false; });
}

}  // namespace keel::manager
