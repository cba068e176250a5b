// The daemon's HTTP/1.1 and WebSocket server (Boost.Beast over Asio), built for a socket that is a
// door to root:
//
//   - one I/O thread serves every connection asynchronously (the unix socket, and the TCP
//     listener of the web console when there is one), so a slow or idle client costs a file
//     descriptor, never a thread; a request must arrive within deadlines that trickling bytes
//     cannot stretch (its header within `header_timeout` of its first byte, its body within
//     `body_timeout` of its header; idle keep-alive connections close after `idle_timeout`);
//   - bodies are bounded whatever their framing (Beast's parser body_limit: Content-Length before
//     the body is read, chunked bodies as they are decoded); Content-Encoding (gzip, ...) is
//     refused (415), so nothing inflates behind the limit;
//   - handlers run on a small pool of worker threads (they may block: a start waits for its VMM);
//     a streaming response (console, events) or a WebSocket stays on the I/O thread, waiting on
//     the stream's eventfd and on the client's socket together, so a client that hangs up
//     releases it at once; streams per peer are capped (429);
//   - a unix connection's peer is identified with SO_PEERCRED/SO_PEERGROUPS when accepted and
//     authorised by the caller's policy (403 otherwise); handlers see the peer's credentials.
//     TCP connections have no credentials: the gate (set_gate) decides about each request.
//
// Before this, keel had its own epoll server and parser, and before that cpp-httplib (Debian 12's
// 0.11), which held a pool thread per connection and bounded neither chunked nor gzip bodies.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

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
  std::string route;                          // the matched route as "/v1/vms/{}/start"
  PeerCredentials peer;                       // unix connections only
  bool tcp = false;                           // came in on the TCP listener
  std::string remote;                         // "unix" or the TCP peer's address
  bool websocket = false;                     // a WebSocket upgrade request

  const std::string* header(const std::string& lower_name) const {
    auto it = headers.find(lower_name);
    return it == headers.end() ? nullptr : &it->second;
  }
};

// A response body that goes on: wait_fd() becomes readable when next() may have more; next()
// returns what is there now (possibly empty), or nullopt once the stream has ended. Called on the
// server's I/O thread: next() must not block.
class ResponseStream {
 public:
  virtual ~ResponseStream() = default;
  virtual int wait_fd() const = 0;
  virtual std::optional<std::string> next() = 0;
};

// A WebSocket a route accepted: what the stream yields goes to the client as binary messages;
// each message the client sends goes to on_message(), on a worker thread, one at a time and in
// order (the next is read once it returns).
class WebSocketSession : public ResponseStream {
 public:
  virtual void on_message(std::string_view data) = 0;
};

struct HttpReply {
  int status = 200;
  std::string content_type = "application/json";
  std::string body;
  std::vector<std::pair<std::string, std::string>> headers;  // extra ones (Set-Cookie, ...)
  std::unique_ptr<ResponseStream> stream;  // set: sent chunked until it ends or the client goes
  std::unique_ptr<WebSocketSession> websocket;  // set on an upgrade request: accepted
};

struct HttpServerOptions {
  size_t max_header_bytes = 16 * 1024;
  size_t max_body_bytes = 1 << 20;
  size_t max_websocket_message = 64 * 1024;
  std::chrono::milliseconds header_timeout{10000};
  std::chrono::milliseconds body_timeout{30000};
  std::chrono::milliseconds idle_timeout{60000};
  std::chrono::milliseconds write_timeout{10000};  // a client that does not read is dropped
  size_t workers = 4;
  size_t max_connections = 1024;
  size_t max_connections_per_peer = 256;
  size_t max_streams = 256;
  size_t max_streams_per_peer = 32;
  // Who may talk to the server over the unix socket at all; the others get 403 (after their
  // request head is read).
  std::function<bool(const PeerCredentials&)> authorize;
};

class HttpServer {
 public:
  using Handler = std::function<void(const HttpRequest&, HttpReply&)>;
  // Runs before routing for every request that passed `authorize`: false means `reply` is the
  // answer (a 401, a redirect, ...). It may fill in the request (the peer a token stands for).
  using Gate = std::function<bool(HttpRequest&, HttpReply&)>;
  // Told about every answered request (on a worker thread): its route ("" when none matched),
  // status and the time from its complete head to its answer.
  using Observer = std::function<void(const HttpRequest&, int status, double seconds)>;

  // Takes a listening unix stream socket. Routes are added before serve().
  HttpServer(UniqueFd listening, HttpServerOptions options);
  ~HttpServer();
  HttpServer(const HttpServer&) = delete;
  HttpServer& operator=(const HttpServer&) = delete;

  // Also listens on TCP `address`:`port` (0: any free port); returns the port. Before serve().
  uint16_t listen_tcp(const std::string& address, uint16_t port);

  // `pattern` is a regular expression matched against the whole path; its groups become
  // request.matches. A path that matches a route of another method gets 405.
  void route(const std::string& method, const std::string& pattern, Handler handler);
  void set_gate(Gate gate);
  void set_observer(Observer observer);

  // Runs the I/O thread's loop on the calling thread until stop(). Blocks.
  void serve();
  // Thread-safe: makes serve() return, ends every stream and closes every connection.
  void stop();

  size_t stream_count() const;

  // The JSON error body every refusal carries: {"error": {"code": ..., "message": ...}}.
  static std::string error_body(const std::string& code, const std::string& message);

  struct Impl;

 private:
  std::unique_ptr<Impl> impl_;
};

}  // namespace keel::manager
