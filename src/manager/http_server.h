// The daemon's HTTP/1.1 server on its unix socket, built for a socket that is a door to root:
//
//   - one I/O thread reads every request (epoll, non-blocking), so a slow or idle client costs a
//     file descriptor, never a thread; a request must arrive within deadlines that trickling bytes
//     cannot stretch (its header within `header_timeout` of its first byte, its body within
//     `body_timeout` of its header; idle keep-alive connections close after `idle_timeout`);
//   - bodies are bounded whatever their framing: Content-Length, or chunked (counted as decoded);
//     Content-Encoding (gzip, ...) is refused (415), so nothing inflates behind the limit;
//   - complete requests run on a small worker pool; a streaming response (console, events) moves
//     to a thread of its own that polls the client's socket together with the stream's eventfd,
//     so a client that hangs up releases it at once, and streams per peer uid are capped (429);
//   - every connection's peer is identified with SO_PEERCRED/SO_PEERGROUPS when accepted and
//     authorised by the caller's policy (403 otherwise); handlers see the peer's credentials.
//
// cpp-httplib (Debian 12's 0.11) was the first server here; it holds a pool thread per connection,
// gives handlers no access to the socket, and bounds neither chunked nor compressed bodies.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <condition_variable>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <regex>
#include <string>
#include <thread>
#include <vector>

#include "base/eventfd.h"
#include "base/fd.h"
#include "manager/peer.h"

namespace keel::manager {

struct HttpRequest {
  std::string method;
  std::string path;                           // without the query
  std::map<std::string, std::string> query;   // ?a=b&c=d (not percent-decoded)
  std::map<std::string, std::string> headers; // names lower-cased; the last of repeated ones
  std::string body;
  std::vector<std::string> matches;           // the route pattern's capture groups
  PeerCredentials peer;
};

// A response body that goes on: wait_fd() becomes readable when next() may have more; next()
// returns what is there now (possibly empty), or nullopt once the stream has ended.
class ResponseStream {
 public:
  virtual ~ResponseStream() = default;
  virtual int wait_fd() const = 0;
  virtual std::optional<std::string> next() = 0;
};

struct HttpReply {
  int status = 200;
  std::string content_type = "application/json";
  std::string body;
  std::unique_ptr<ResponseStream> stream;  // set: sent chunked until it ends or the client goes
};

struct HttpServerOptions {
  size_t max_header_bytes = 16 * 1024;
  size_t max_body_bytes = 1 << 20;
  std::chrono::milliseconds header_timeout{10000};
  std::chrono::milliseconds body_timeout{30000};
  std::chrono::milliseconds idle_timeout{60000};
  std::chrono::milliseconds write_timeout{10000};  // a client that does not read is dropped
  size_t workers = 8;
  size_t max_connections = 1024;
  size_t max_connections_per_peer = 256;
  size_t max_streams = 256;
  size_t max_streams_per_peer = 32;
  // Who may talk to the server at all; the others get 403 (after their request head is read).
  std::function<bool(const PeerCredentials&)> authorize;
};

class HttpServer {
 public:
  using Handler = std::function<void(const HttpRequest&, HttpReply&)>;

  // Takes a listening stream socket. Routes are added before serve().
  HttpServer(UniqueFd listening, HttpServerOptions options);
  ~HttpServer();
  HttpServer(const HttpServer&) = delete;
  HttpServer& operator=(const HttpServer&) = delete;

  // `pattern` is a regular expression matched against the whole path; its groups become
  // request.matches. A path that matches a route of another method gets 405.
  void route(const std::string& method, const std::string& pattern, Handler handler);

  // Runs the I/O thread's loop on the calling thread until stop(). Blocks.
  void serve();
  // Thread-safe: makes serve() return, ends every stream and closes every connection.
  void stop();

  size_t stream_count() const;

  // The JSON error body every refusal carries: {"error": {"code": ..., "message": ...}}.
  static std::string error_body(const std::string& code, const std::string& message);

 private:
  struct Connection;
  struct Route {
    std::string method;
    std::regex pattern;
    Handler handler;
  };
  using ConnPtr = std::unique_ptr<Connection>;

  void accept_connections();
  void on_readable(ConnPtr& conn);
  // Parses what the connection has buffered; true when a whole request is ready.
  bool parse(Connection& conn);
  void expire(std::chrono::steady_clock::time_point now);
  void refuse(ConnPtr conn, int status, const std::string& code, const std::string& message);
  void watch(ConnPtr conn);
  void worker();
  void handle(ConnPtr conn);
  void run_stream(ConnPtr conn, std::unique_ptr<ResponseStream> stream,
                  const std::string& content_type);
  bool send_all(Connection& conn, std::string_view bytes);
  void release(const Connection& conn);

  HttpServerOptions options_;
  UniqueFd listen_;
  UniqueFd epoll_;
  EventFd wake_;  // the I/O thread: stop, or connections handed back by workers
  EventFd stop_;  // signalled once by stop(), never consumed: workers' and streams' polls see it
  std::vector<Route> routes_;

  std::map<int, ConnPtr> reading_;  // I/O thread only: connections reading a request, by fd

  mutable std::mutex mutex_;  // guards everything below
  std::condition_variable work_cv_;
  std::deque<ConnPtr> ready_;      // complete requests for the workers
  std::vector<ConnPtr> returned_;  // keep-alive connections back to the I/O thread
  std::map<uid_t, size_t> connections_per_uid_;
  size_t connections_ = 0;
  std::map<uid_t, size_t> streams_per_uid_;
  size_t streams_ = 0;
  bool stopping_ = false;
  size_t stream_threads_ = 0;  // detached; stop() waits for them on stream_done_
  std::condition_variable stream_done_;
  std::vector<std::thread> workers_;
};

}  // namespace keel::manager
