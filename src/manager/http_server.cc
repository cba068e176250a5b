#include "manager/http_server.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <mutex>
#include <regex>

#include <boost/asio.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <boost/beast/websocket.hpp>
#include <nlohmann/json.hpp>

#include "base/error.h"
#include "base/log.h"

namespace keel::manager {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
namespace websocket = beast::websocket;
using Clock = std::chrono::steady_clock;
using error_code = boost::system::error_code;
// One socket type for both listeners: unix and TCP connections are served by the same code.
using Protocol = asio::generic::stream_protocol;
using Socket = Protocol::socket;
using Acceptor = asio::basic_socket_acceptor<Protocol>;

namespace {

std::string lower(std::string_view s) {
  std::string out(s);
  std::transform(out.begin(), out.end(), out.begin(),
                 [](unsigned char c) { return std::tolower(c); });
  return out;
}

std::string trim(std::string_view s) {
  size_t b = s.find_first_not_of(" \t");
  if (b == std::string_view::npos) return {};
  size_t e = s.find_last_not_of(" \t");
  return std::string(s.substr(b, e - b + 1));
}

// "/v1/vms/([^/]+)/start" -> "/v1/vms/{}/start": a route's name in logs and metrics.
std::string route_name(const std::string& pattern) {
  return std::regex_replace(pattern, std::regex(R"(\([^)]*\))"), "{}");
}

std::map<std::string, std::string> parse_query(std::string_view query) {
  std::map<std::string, std::string> out;
  for (size_t pos = 0; pos <= query.size();) {
    size_t amp = query.find('&', pos);
    if (amp == std::string_view::npos) amp = query.size();
    std::string_view pair = query.substr(pos, amp - pos);
    size_t eq = pair.find('=');
    if (!pair.empty())
      out[std::string(pair.substr(0, eq))] =
          eq == std::string_view::npos ? "" : std::string(pair.substr(eq + 1));
    pos = amp + 1;
  }
  return out;
}

std::string tcp_peer_address(int fd) {
  sockaddr_storage addr{};
  socklen_t len = sizeof addr;
  if (::getpeername(fd, reinterpret_cast<sockaddr*>(&addr), &len) != 0) return "?";
  char text[INET6_ADDRSTRLEN] = "?";
  if (addr.ss_family == AF_INET)
    ::inet_ntop(AF_INET, &reinterpret_cast<sockaddr_in*>(&addr)->sin_addr, text, sizeof text);
  else if (addr.ss_family == AF_INET6)
    ::inet_ntop(AF_INET6, &reinterpret_cast<sockaddr_in6*>(&addr)->sin6_addr, text, sizeof text);
  return text;
}

// Whether the peer of a socket whose input has ended has hung up completely (POLLHUP).
bool hung_up(int fd) {
  pollfd p{fd, 0, 0};
  return ::poll(&p, 1, 0) > 0 && (p.revents & (POLLHUP | POLLERR | POLLNVAL));
}

}  // namespace

std::string HttpServer::error_body(const std::string& code, const std::string& message) {
  nlohmann::json body{{"error", {{"code", code}, {"message", message}}}};
  return body.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) + "\n";
}

class Connection;

struct HttpServer::Impl {
  struct Route {
    std::string method;
    std::regex pattern;
    std::string name;
    Handler handler;
  };
  struct Refusal {
    int status;
    std::string code;
    std::string message;
  };

  explicit Impl(HttpServerOptions o)
      : options(std::move(o)),
        pool(std::make_unique<asio::thread_pool>(std::max<size_t>(options.workers, 1))) {}
  ~Impl();

  void accept(Acceptor& acceptor, bool tcp);
  void on_accept(Socket socket, bool tcp);
  void handle(HttpRequest& req, HttpReply& res, bool authorized);
  void stop();

  // Counts, taken and given back under `mutex`. `who` names the peer ("uid 1000").
  std::optional<Refusal> admit(const std::string& who);
  void release(const std::string& who);
  std::optional<Refusal> take_stream(const std::string& who);
  void release_stream(const std::string& who);

  const HttpServerOptions options;
  std::vector<Route> routes;
  Gate gate;
  Observer observer;

  mutable std::mutex mutex;  // guards everything below up to ioc
  size_t connections = 0;
  std::map<std::string, size_t> connections_per_peer;
  size_t streams = 0;
  std::map<std::string, size_t> streams_per_peer;
  bool stopping = false;
  uint64_t next_id = 1;
  std::map<uint64_t, std::weak_ptr<Connection>> live;  // to close them all on stop()

  // Destroyed before the members above: pending handlers hold connections, which give their
  // counts back as they go.
  asio::io_context ioc{1};
  std::vector<std::unique_ptr<Acceptor>> listeners;
  std::unique_ptr<asio::thread_pool> pool;  // handlers (they may block)
};

// One client connection, from accept to close. Its I/O runs on the I/O thread; handlers run on
// the pool, holding a reference, and post their reply back. A connection reads a request, hands
// it to a handler, writes the reply, and then reads the next (keep-alive), streams (until the
// stream ends or the client goes) or speaks WebSocket.
class Connection : public std::enable_shared_from_this<Connection> {
 public:
  Connection(HttpServer::Impl& server, Socket socket, bool tcp, PeerCredentials peer,
             std::string who, std::string remote, bool authorized, uint64_t id)
      : server_(server), socket_(std::move(socket)), timer_(server.ioc), tcp_(tcp),
        peer_(std::move(peer)), who_(std::move(who)), remote_(std::move(remote)),
        authorized_(authorized), id_(id) {}
  ~Connection() {
    if (stream_slot_) server_.release_stream(who_);
    server_.release(who_);
    std::lock_guard lock(server_.mutex);
    server_.live.erase(id_);
  }

  void start() { next_request(); }

  // Answers with an error and closes (a refusal before or instead of any handler).
  void refuse(int status, const std::string& code, const std::string& message) {
    HttpReply reply;
    reply.status = status;
    reply.body = HttpServer::error_body(code, message);
    keep_alive_ = false;
    write_reply(std::move(reply));
  }

  // Closes at once; every pending operation completes and the connection goes.
  void close() {
    if (closed_) return;
    closed_ = true;
    error_code ignored;
    timer_.cancel();
    if (wait_) wait_->close(ignored);
    if (ws_) {
      ws_->next_layer().shutdown(Socket::shutdown_both, ignored);
      ws_->next_layer().close(ignored);
    } else {
      socket_.shutdown(Socket::shutdown_both, ignored);
      socket_.close(ignored);
    }
    stream_.reset();
    if (stream_slot_) {
      stream_slot_ = false;
      server_.release_stream(who_);
    }
  }

 private:
  enum class Phase { kIdle, kHead, kBody, kHandling, kWriting, kStreaming };

  Socket& socket() { return ws_ ? ws_->next_layer() : socket_; }

  // One deadline per phase; trickling bytes do not move it.
  void arm(Phase phase, std::chrono::milliseconds timeout) {
    phase_ = phase;
    timed_out_ = false;
    timer_.expires_after(timeout);
    timer_.async_wait([self = shared_from_this()](error_code ec) {
      if (ec || self->closed_ || self->timer_.expiry() > Clock::now()) return;
      self->timed_out_ = true;
      error_code ignored;
      self->socket().cancel(ignored);  // the pending read or write completes, aborted
    });
  }

  void next_request() {
    parser_.emplace();
    parser_->header_limit(static_cast<uint32_t>(server_.options.max_header_bytes));
    parser_->body_limit(server_.options.max_body_bytes);
    if (buffer_.size() > 0) return read_head();  // a pipelined request is here already
    arm(Phase::kIdle, server_.options.idle_timeout);
    socket_.async_wait(Socket::wait_read, [self = shared_from_this()](error_code ec) {
      if (self->closed_) return;
      if (ec || self->timed_out_) return self->close();  // idle keep-alive: just close
      self->read_head();
    });
  }

  void read_head() {
    arm(Phase::kHead, server_.options.header_timeout);
    http::async_read_header(socket_, buffer_, *parser_,
                            [self = shared_from_this()](error_code ec, size_t) {
                              self->on_head(ec);
                            });
  }

  std::string limit_text() const { return std::to_string(server_.options.max_body_bytes); }

  void on_head(error_code ec) {
    if (closed_) return;
    const auto& o = server_.options;
    if (timed_out_)
      return refuse(408, "timeout", "the request's header did not arrive within " +
                                        std::to_string(o.header_timeout.count()) + " ms");
    if (ec == http::error::end_of_stream || ec == asio::error::eof ||
        ec == asio::error::connection_reset || ec == asio::error::operation_aborted)
      return close();
    if (ec == http::error::header_limit)
      return refuse(431, "header_too_large", "request header longer than " +
                                                 std::to_string(o.max_header_bytes) + " bytes");
    if (ec == http::error::body_limit)
      return refuse(413, "too_large",
                    "request body of " +
                        (parser_->content_length() ? std::to_string(*parser_->content_length())
                                                   : std::string("more")) +
                        " bytes is larger than the " + limit_text() + " allowed");
    if (ec) return refuse(400, "bad_request", "malformed request: " + ec.message());

    const auto& msg = parser_->get();
    if (msg.version() != 10 && msg.version() != 11)
      return refuse(400, "bad_request", "unsupported protocol version");
    if (msg.target().empty() || msg.target()[0] != '/')
      return refuse(400, "bad_request", "malformed request line");
    if (msg.count(http::field::content_encoding) > 1)
      return refuse(400, "bad_request", "repeated content-encoding header");
    if (auto ce = msg.find(http::field::content_encoding); ce != msg.end()) {
      std::string value = trim(ce->value());
      if (lower(value) != "identity")
        return refuse(415, "unsupported_encoding",
                      "Content-Encoding '" + value + "' is not accepted; send the body as it is");
    }
    if (auto te = msg.find(http::field::transfer_encoding); te != msg.end()) {
      std::string value = trim(te->value());
      if (lower(value) != "chunked")
        return refuse(501, "not_implemented",
                      "Transfer-Encoding '" + value + "' is not supported (only chunked)");
    }
    if (parser_->is_done()) return dispatch();
    if (auto ex = msg.find(http::field::expect);
        ex != msg.end() && lower(trim(ex->value())) == "100-continue") {
      auto cont = std::make_shared<std::string>("HTTP/1.1 100 Continue\r\n\r\n");
      asio::async_write(socket_, asio::buffer(*cont),
                        [self = shared_from_this(), cont](error_code ec, size_t) {
                          if (ec || self->closed_) return self->close();
                          self->read_body();
                        });
      return;
    }
    read_body();
  }

  void read_body() {
    arm(Phase::kBody, server_.options.body_timeout);
    http::async_read(socket_, buffer_, *parser_, [self = shared_from_this()](error_code ec, size_t) {
      self->on_body(ec);
    });
  }

  void on_body(error_code ec) {
    if (closed_) return;
    if (timed_out_)
      return refuse(408, "timeout", "the request's body did not arrive within " +
                                        std::to_string(server_.options.body_timeout.count()) +
                                        " ms");
    if (ec == http::error::body_limit)
      return refuse(413, "too_large",
                    std::string(parser_->chunked() ? "chunked request body" : "request body") +
                        " larger than the " + limit_text() + " bytes allowed");
    if (ec == http::error::end_of_stream || ec == http::error::partial_message ||
        ec == asio::error::eof || ec == asio::error::connection_reset ||
        ec == asio::error::operation_aborted)
      return close();
    if (ec) return refuse(400, "bad_request", "malformed request body: " + ec.message());
    dispatch();
  }

  // A whole request: the handler runs on the pool, the reply comes back to the I/O thread.
  void dispatch() {
    timer_.cancel();
    phase_ = Phase::kHandling;
    auto& msg = parser_->get();
    auto req = std::make_shared<HttpRequest>();
    req->method = std::string(msg.method_string());
    std::string_view target = msg.target();
    size_t q = target.find('?');
    req->path = std::string(target.substr(0, q));
    if (q != std::string_view::npos) req->query = parse_query(target.substr(q + 1));
    for (const auto& field : msg) req->headers[lower(field.name_string())] = std::string(field.value());
    req->body = std::move(msg.body());
    req->peer = peer_;
    req->tcp = tcp_;
    req->remote = remote_;
    req->websocket = websocket::is_upgrade(msg);
    keep_alive_ = msg.keep_alive();
    if (req->websocket) upgrade_ = parser_->release();
    parser_.reset();
    asio::post(*server_.pool, [self = shared_from_this(), req] {
      auto reply = std::make_shared<HttpReply>();
      auto started = Clock::now();
      self->server_.handle(*req, *reply, self->authorized_);
      if (self->server_.observer) {
        try {
          self->server_.observer(*req, reply->status,
                                 std::chrono::duration<double>(Clock::now() - started).count());
        } catch (const std::exception& e) {
          log::warn("api: request observer: {}", e.what());
        }
      }
      asio::post(self->server_.ioc, [self, req, reply] { self->respond(*req, std::move(*reply)); });
    });
  }

  void respond(const HttpRequest& req, HttpReply reply) {
    if (closed_) return;
    if (reply.websocket && !req.websocket) {
      reply = HttpReply{};
      reply.status = 426;
      reply.body = HttpServer::error_body("upgrade_required", req.path + " speaks WebSocket only");
    }
    if (reply.stream || reply.websocket) {
      if (auto refusal = server_.take_stream(who_)) {
        reply = HttpReply{};
        reply.status = refusal->status;
        reply.body = HttpServer::error_body(refusal->code, refusal->message);
        keep_alive_ = false;
      } else {
        stream_slot_ = true;
        if (reply.websocket) return accept_websocket(std::move(reply.websocket));
        return start_stream(std::move(reply.stream), reply.content_type);
      }
    }
    write_reply(std::move(reply));
  }

  void write_reply(HttpReply reply) {
    auto res = std::make_shared<http::response<http::string_body>>();
    res->result(static_cast<unsigned>(reply.status));
    res->version(11);
    res->set(http::field::content_type, reply.content_type);
    for (const auto& [name, value] : reply.headers) res->insert(name, value);
    res->body() = std::move(reply.body);
    res->keep_alive(keep_alive_);
    res->prepare_payload();
    arm(Phase::kWriting, server_.options.write_timeout);
    http::async_write(socket_, *res, [self = shared_from_this(), res](error_code ec, size_t) {
      if (self->closed_) return;
      self->timer_.cancel();
      if (ec || self->timed_out_) return self->close();
      if (self->keep_alive_) return self->next_request();
      self->linger();
    });
  }

  // After a last answer: no more output, and what the client still sends is read and dropped
  // for a moment (bounded), so that closing with unread input does not reset the connection
  // before the client has read the answer.
  void linger() {
    error_code ignored;
    socket_.shutdown(Socket::shutdown_send, ignored);
    arm(Phase::kWriting, std::chrono::milliseconds(1000));
    drain();
  }
  void drain() {
    socket_.async_read_some(asio::buffer(scratch_), [self = shared_from_this()](error_code ec,
                                                                                size_t n) {
      self->drained_ += n;
      if (ec || self->closed_ || self->timed_out_ || self->drained_ > (4u << 20))
        return self->close();
      self->drain();
    });
  }

  // ---- Streams: chunked HTTP (console, events) or WebSocket messages.

  void start_stream(std::unique_ptr<ResponseStream> stream, const std::string& content_type) {
    stream_ = std::move(stream);
    if (!watch_stream()) return;
    phase_ = Phase::kStreaming;
    auto head = std::make_shared<std::string>("HTTP/1.1 200 OK\r\nContent-Type: " + content_type +
                                              "\r\nTransfer-Encoding: chunked\r\n"
                                              "Connection: close\r\n\r\n");
    send_raw(head, [](Connection& self) { self.pump(); });
    watch_client();
  }

  void accept_websocket(std::unique_ptr<WebSocketSession> session) {
    session_ = std::shared_ptr<WebSocketSession>(std::move(session));
    stream_ = nullptr;
    ws_.emplace(std::move(socket_));
    websocket::stream_base::timeout timeouts{};
    timeouts.handshake_timeout = server_.options.write_timeout;
    // A client that answers no ping for this long is gone (a TCP peer that vanished says nothing).
    timeouts.idle_timeout = std::chrono::seconds(30);
    timeouts.keep_alive_pings = true;
    ws_->set_option(timeouts);
    ws_->read_message_max(server_.options.max_websocket_message);
    ws_->binary(true);
    ws_->set_option(websocket::stream_base::decorator(
        [](websocket::response_type& res) { res.set(http::field::server, "keel"); }));
    phase_ = Phase::kStreaming;
    ws_->async_accept(*upgrade_, [self = shared_from_this()](error_code ec) {
      if (ec || self->closed_) return self->close();
      self->upgrade_.reset();
      if (!self->watch_stream()) return;
      self->ws_read();
      self->pump();
    });
  }

  ResponseStream& source() { return session_ ? *session_ : *stream_; }

  // The stream's eventfd, watched by the I/O thread (a duplicate, closed with the watcher).
  bool watch_stream() {
    int fd = ::fcntl(source().wait_fd(), F_DUPFD_CLOEXEC, 0);
    if (fd < 0) {
      log::warn("api: stream: dup: {}", std::strerror(errno));
      close();
      return false;
    }
    wait_.emplace(server_.ioc, fd);
    return true;
  }

  // Sends what the stream has, then waits for more. next() is always asked before waiting (it
  // consumes the eventfd), so a wake-up that came while a write was going on is not lost.
  void pump() {
    if (closed_) return;
    std::optional<std::string> data;
    try {
      data = source().next();
    } catch (const std::exception& e) {
      log::warn("api: stream: {}", e.what());
      return close();
    }
    if (!data) return finish_stream();
    if (!data->empty()) {
      auto bytes = std::make_shared<std::string>(std::move(*data));
      if (ws_) {
        arm(Phase::kStreaming, server_.options.write_timeout);
        ws_->async_write(asio::buffer(*bytes), [self = shared_from_this(), bytes](error_code ec,
                                                                                 size_t) {
          if (self->closed_) return;
          self->timer_.cancel();
          if (ec || self->timed_out_) return self->close();
          self->pump();
        });
        return;
      }
      char size[32];
      int n = std::snprintf(size, sizeof size, "%zx\r\n", bytes->size());
      bytes->insert(0, size, static_cast<size_t>(n));
      bytes->append("\r\n");
      return send_raw(bytes, [](Connection& self) { self.pump(); });
    }
    wait_->async_wait(asio::posix::stream_descriptor::wait_read,
                      [self = shared_from_this()](error_code ec) {
                        if (ec || self->closed_) return;
                        self->pump();
                      });
  }

  void finish_stream() {
    if (ws_) {
      ws_->async_close(websocket::close_code::normal,
                       [self = shared_from_this()](error_code) { self->close(); });
      return;
    }
    send_raw(std::make_shared<std::string>("0\r\n\r\n"), [](Connection& self) { self.close(); });
  }

  void send_raw(std::shared_ptr<std::string> bytes, void (*then)(Connection&)) {
    arm(Phase::kStreaming, server_.options.write_timeout);
    asio::async_write(socket_, asio::buffer(*bytes),
                      [self = shared_from_this(), bytes, then](error_code ec, size_t) {
                        if (self->closed_) return;
                        self->timer_.cancel();
                        if (ec || self->timed_out_) return self->close();
                        then(*self);
                      });
  }

  // A client sends nothing on a stream; whatever comes is dropped. End of its input alone (a
  // half-close on the unix socket) is no hang-up: it may still read, so from then on only a
  // hang-up (POLLHUP) ends the stream. A TCP client that ends its input has gone.
  void watch_client() {
    socket_.async_read_some(asio::buffer(scratch_), [self = shared_from_this()](error_code ec,
                                                                                size_t) {
      if (self->closed_) return;
      if (!ec) return self->watch_client();
      if (ec == asio::error::eof && !self->tcp_ && !hung_up(self->socket_.native_handle())) {
        self->socket_.async_wait(Socket::wait_error, [self](error_code) { self->close(); });
        return;
      }
      self->close();
    });
  }

  void ws_read() {
    ws_->async_read(in_, [self = shared_from_this()](error_code ec, size_t) {
      if (ec || self->closed_) return self->close();
      auto message = std::make_shared<std::string>(beast::buffers_to_string(self->in_.data()));
      self->in_.consume(self->in_.size());
      asio::post(*self->server_.pool, [self, message, session = self->session_] {
        std::string failure;
        try {
          session->on_message(*message);
        } catch (const std::exception& e) {
          failure = e.what();
        }
        asio::post(self->server_.ioc, [self, failure] {
          if (self->closed_) return;
          if (failure.empty()) return self->ws_read();
          // The reason goes to the client in the close frame (at most 123 bytes).
          websocket::close_reason reason(websocket::close_code::policy_error,
                                         failure.substr(0, 120));
          self->ws_->async_close(reason, [self](error_code) { self->close(); });
        });
      });
    });
  }

  HttpServer::Impl& server_;
  Socket socket_;
  asio::steady_timer timer_;
  const bool tcp_;
  const PeerCredentials peer_;
  const std::string who_;
  const std::string remote_;
  const bool authorized_;
  const uint64_t id_;

  Phase phase_ = Phase::kIdle;
  bool timed_out_ = false;
  bool closed_ = false;
  bool keep_alive_ = true;
  bool stream_slot_ = false;
  size_t drained_ = 0;
  beast::flat_buffer buffer_;
  std::optional<http::request_parser<http::string_body>> parser_;
  std::optional<http::request<http::string_body>> upgrade_;
  std::unique_ptr<ResponseStream> stream_;
  std::shared_ptr<WebSocketSession> session_;
  std::optional<websocket::stream<Socket>> ws_;
  beast::flat_buffer in_;
  std::optional<asio::posix::stream_descriptor> wait_;
  char scratch_[4096];
};

// ---- The server.

HttpServer::Impl::~Impl() {
  stop();
  pool->join();  // handlers still running finish; their replies are dropped with the context
}

void HttpServer::Impl::stop() {
  {
    std::lock_guard lock(mutex);
    if (stopping) return;
    stopping = true;
  }
  asio::post(ioc, [this] {
    error_code ignored;
    for (auto& l : listeners) l->close(ignored);
    std::vector<std::shared_ptr<Connection>> all;
    {
      std::lock_guard lock(mutex);
      for (auto& [id, weak] : live)
        if (auto c = weak.lock()) all.push_back(std::move(c));
    }
    for (auto& c : all) c->close();
    ioc.stop();
  });
}

std::optional<HttpServer::Impl::Refusal> HttpServer::Impl::admit(const std::string& who) {
  std::lock_guard lock(mutex);
  size_t& mine = connections_per_peer[who];
  std::optional<Refusal> refusal;
  if (connections >= options.max_connections)
    refusal = Refusal{503, "busy", "the daemon has " + std::to_string(connections) +
                                       " connections open; try again later"};
  else if (mine >= options.max_connections_per_peer)
    refusal = Refusal{429, "too_many_connections",
                      who + " has " + std::to_string(mine) +
                          " connections open, the most one user may have"};
  // Counted even when refused: the refusal is answered on the connection, which gives it back.
  ++connections;
  ++mine;
  return refusal;
}

void HttpServer::Impl::release(const std::string& who) {
  std::lock_guard lock(mutex);
  --connections;
  auto it = connections_per_peer.find(who);
  if (it != connections_per_peer.end() && --it->second == 0) connections_per_peer.erase(it);
}

std::optional<HttpServer::Impl::Refusal> HttpServer::Impl::take_stream(const std::string& who) {
  std::lock_guard lock(mutex);
  size_t mine = streams_per_peer.count(who) ? streams_per_peer[who] : 0;
  if (stopping) return Refusal{503, "stopping", "the daemon is stopping"};
  if (streams >= options.max_streams)
    return Refusal{429, "too_many_streams",
                   "the daemon serves " + std::to_string(streams) + " streams already"};
  if (mine >= options.max_streams_per_peer)
    return Refusal{429, "too_many_streams",
                   who + " has " + std::to_string(mine) +
                       " streams open, the most one user may have"};
  ++streams;
  ++streams_per_peer[who];
  return std::nullopt;
}

void HttpServer::Impl::release_stream(const std::string& who) {
  std::lock_guard lock(mutex);
  --streams;
  auto it = streams_per_peer.find(who);
  if (it != streams_per_peer.end() && --it->second == 0) streams_per_peer.erase(it);
}

void HttpServer::Impl::accept(Acceptor& acceptor, bool tcp) {
  acceptor.async_accept([this, &acceptor, tcp](error_code ec, Socket socket) {
    if (ec == asio::error::operation_aborted || !acceptor.is_open()) return;
    if (!ec) {
      on_accept(std::move(socket), tcp);
      return accept(acceptor, tcp);
    }
    // Out of file descriptors, say: try again a little later rather than spin.
    log::warn("api: accept: {}", ec.message());
    auto timer = std::make_shared<asio::steady_timer>(ioc, std::chrono::milliseconds(100));
    timer->async_wait([this, &acceptor, tcp, timer](error_code ec) {
      if (!ec) accept(acceptor, tcp);
    });
  });
}

void HttpServer::Impl::on_accept(Socket socket, bool tcp) {
  PeerCredentials peer;
  std::string who, remote;
  bool authorized = true;
  if (tcp) {
    // No credentials on TCP: nobody until the gate says whom the request's token stands for.
    peer.uid = static_cast<uid_t>(-1);
    peer.gid = static_cast<gid_t>(-1);
    remote = tcp_peer_address(socket.native_handle());
    who = "address " + remote;
    error_code ignored;
    socket.set_option(asio::ip::tcp::no_delay(true), ignored);
  } else {
    try {
      peer = peer_credentials(socket.native_handle());
    } catch (const Error& e) {
      log::warn("api: refusing a client: {}", e.what());
      return;
    }
    remote = "unix";
    who = "uid " + std::to_string(peer.uid);
    authorized = !options.authorize || options.authorize(peer);
  }
  std::optional<Refusal> refusal = admit(who);
  uint64_t id;
  {
    std::lock_guard lock(mutex);
    id = next_id++;
  }
  auto conn = std::make_shared<Connection>(*this, std::move(socket), tcp, std::move(peer), who,
                                           std::move(remote), authorized, id);
  {
    std::lock_guard lock(mutex);
    live[id] = conn;
  }
  if (refusal) return conn->refuse(refusal->status, refusal->code, refusal->message);
  conn->start();
}

void HttpServer::Impl::handle(HttpRequest& req, HttpReply& res, bool authorized) {
  if (!authorized) {
    res.status = 403;
    res.body = error_body("forbidden", "uid " + std::to_string(req.peer.uid) +
                                           " may not use the keel daemon (root or the daemon's "
                                           "group only)");
    return;
  }
  try {
    if (gate && !gate(req, res)) return;
    const Route* found = nullptr;
    bool other_method = false;
    for (const Route& r : routes) {
      std::smatch m;
      if (!std::regex_match(req.path, m, r.pattern)) continue;
      if (r.method != req.method) {
        other_method = true;
        continue;
      }
      found = &r;
      for (size_t i = 1; i < m.size(); ++i) req.matches.push_back(m[i].str());
      break;
    }
    if (!found) {
      res.status = other_method ? 405 : 404;
      res.body = other_method
                     ? error_body("method_not_allowed", req.method + " is not allowed on " + req.path)
                     : error_body("no_route", "no such API path: " + req.method + " " + req.path);
      return;
    }
    req.route = found->name;
    found->handler(req, res);
  } catch (const std::exception& e) {
    res = HttpReply{};
    res.status = 500;
    res.body = error_body("failed", e.what());
  }
}

HttpServer::HttpServer(UniqueFd listening, HttpServerOptions options)
    : impl_(std::make_unique<Impl>(std::move(options))) {
  auto acceptor = std::make_unique<Acceptor>(impl_->ioc);
  error_code ec;
  acceptor->assign(Protocol(AF_UNIX, SOCK_STREAM), listening.get(), ec);
  if (ec) throw Error("api: cannot serve the socket: " + ec.message());
  listening.release();
  impl_->listeners.push_back(std::move(acceptor));
}

HttpServer::~HttpServer() = default;

uint16_t HttpServer::listen_tcp(const std::string& address, uint16_t port) {
  error_code ec;
  asio::ip::address ip = asio::ip::make_address(address, ec);
  if (ec) throw UsageError("'" + address + "' is not an IP address");
  asio::ip::tcp::acceptor tcp(impl_->ioc);
  asio::ip::tcp::endpoint endpoint(ip, port);
  tcp.open(endpoint.protocol(), ec);
  if (!ec) tcp.set_option(asio::socket_base::reuse_address(true), ec);
  if (!ec) tcp.bind(endpoint, ec);
  if (!ec) tcp.listen(128, ec);
  if (ec)
    throw Error("cannot listen on " + address + ":" + std::to_string(port) + ": " + ec.message());
  uint16_t bound = tcp.local_endpoint().port();
  int family = endpoint.protocol().family();
  auto acceptor = std::make_unique<Acceptor>(impl_->ioc);
  acceptor->assign(Protocol(family, SOCK_STREAM), tcp.release(), ec);
  if (ec) throw Error("cannot listen on " + address + ": " + ec.message());
  impl_->listeners.push_back(std::move(acceptor));
  return bound;
}

void HttpServer::route(const std::string& method, const std::string& pattern, Handler handler) {
  impl_->routes.push_back(
      Impl::Route{method, std::regex(pattern), route_name(pattern), std::move(handler)});
}

void HttpServer::set_gate(Gate gate) { impl_->gate = std::move(gate); }
void HttpServer::set_observer(Observer observer) { impl_->observer = std::move(observer); }

size_t HttpServer::stream_count() const {
  std::lock_guard lock(impl_->mutex);
  return impl_->streams;
}

void HttpServer::serve() {
  {
    std::lock_guard lock(impl_->mutex);
    if (impl_->stopping) return;
  }
  // The first listener is the unix socket; the others TCP.
  for (size_t i = 0; i < impl_->listeners.size(); ++i) impl_->accept(*impl_->listeners[i], i > 0);
  auto work = asio::make_work_guard(impl_->ioc);
  impl_->ioc.run();
}

void HttpServer::stop() { impl_->stop(); }

}  // namespace keel::manager
