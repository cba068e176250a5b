#include "manager/http_server.h"

#include <poll.h>
#include <sys/epoll.h>
#include <fcntl.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include <nlohmann/json.hpp>

#include "base/error.h"
#include "base/log.h"

namespace keel::manager {

using Clock = std::chrono::steady_clock;

namespace {

constexpr size_t kMaxChunkLine = 1024;  // a chunk-size line with its extensions

const char* reason_phrase(int status) {
  switch (status) {
    case 100: return "Continue";
    case 200: return "OK";
    case 201: return "Created";
    case 400: return "Bad Request";
    case 403: return "Forbidden";
    case 404: return "Not Found";
    case 405: return "Method Not Allowed";
    case 408: return "Request Timeout";
    case 409: return "Conflict";
    case 413: return "Content Too Large";
    case 415: return "Unsupported Media Type";
    case 422: return "Unprocessable Content";
    case 429: return "Too Many Requests";
    case 431: return "Request Header Fields Too Large";
    case 500: return "Internal Server Error";
    case 501: return "Not Implemented";
    case 503: return "Service Unavailable";
  }
  return status < 300 ? "OK" : status < 500 ? "Client Error" : "Server Error";
}

std::string lower(std::string s) {
  std::transform(s.begin(), s.end(), s.begin(), [](unsigned char c) { return std::tolower(c); });
  return s;
}

std::string trim(std::string_view s) {
  size_t b = s.find_first_not_of(" \t");
  if (b == std::string_view::npos) return {};
  size_t e = s.find_last_not_of(" \t");
  return std::string(s.substr(b, e - b + 1));
}

bool is_token(std::string_view s) {
  if (s.empty()) return false;
  for (unsigned char c : s)
    if (c <= 32 || c >= 127 || std::strchr("()<>@,;:\\\"/[]?={}", c)) return false;
  return true;
}

// A request the server refuses before any handler sees it.
struct Refusal {
  int status;
  std::string code;
  std::string message;
};

std::string response_head(int status, const std::string& content_type, size_t length,
                          bool keep_alive) {
  return "HTTP/1.1 " + std::to_string(status) + " " + reason_phrase(status) +
         "\r\nContent-Type: " + content_type + "\r\nContent-Length: " + std::to_string(length) +
         "\r\nConnection: " + (keep_alive ? "keep-alive" : "close") + "\r\n\r\n";
}

int ms_until(Clock::time_point deadline) {
  auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now());
  return static_cast<int>(std::clamp<int64_t>(left.count(), 0, 1 << 30));
}

}  // namespace

std::string HttpServer::error_body(const std::string& code, const std::string& message) {
  nlohmann::json body{{"error", {{"code", code}, {"message", message}}}};
  return body.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) + "\n";
}

// One client connection. It is owned by exactly one place at a time: the I/O thread's table while
// a request is read, the ready queue, a worker, or a stream thread. Its peer's counts are given
// back when it is destroyed.
struct HttpServer::Connection {
  enum Phase { kIdle, kHead, kBody, kChunkSize, kChunkData, kChunkTrailer, kDone };

  Connection(HttpServer& s, UniqueFd f, PeerCredentials p, bool ok)
      : server(s), fd(std::move(f)), peer(std::move(p)), authorized(ok) {}
  ~Connection() { server.release(*this); }

  void next_request(Clock::time_point now) {
    phase = kIdle;
    request = HttpRequest{};
    request.peer = peer;
    body_left = 0;
    trailer_bytes = 0;
    keep_alive = true;
    deadline = now + server.options_.idle_timeout;
  }

  HttpServer& server;
  UniqueFd fd;
  PeerCredentials peer;
  bool authorized;
  std::string in;  // received, not yet parsed
  Phase phase = kIdle;
  HttpRequest request;
  size_t body_left = 0;  // kBody: bytes still to come; kChunkData: bytes of this chunk
  size_t trailer_bytes = 0;
  bool keep_alive = true;
  Clock::time_point deadline;
  std::optional<Refusal> refusal;  // set by parse(): answer this and close
};

HttpServer::HttpServer(UniqueFd listening, HttpServerOptions options)
    : options_(std::move(options)), listen_(std::move(listening)) {
  epoll_.reset(::epoll_create1(EPOLL_CLOEXEC));
  if (!epoll_) throw_errno("epoll_create1");
  for (int fd : {listen_.get(), wake_.fd()}) {
    epoll_event ev{};
    ev.events = EPOLLIN;
    ev.data.fd = fd;
    if (::epoll_ctl(epoll_.get(), EPOLL_CTL_ADD, fd, &ev) != 0) throw_errno("epoll_ctl");
  }
  int flags = ::fcntl(listen_.get(), F_GETFL);
  ::fcntl(listen_.get(), F_SETFL, flags | O_NONBLOCK);
}

HttpServer::~HttpServer() {
  stop();
  for (auto& t : workers_)
    if (t.joinable()) t.join();
  std::deque<ConnPtr> ready;
  std::vector<ConnPtr> returned;
  {
    std::unique_lock lock(mutex_);
    stream_done_.wait(lock, [&] { return stream_threads_ == 0; });
    ready.swap(ready_);
    returned.swap(returned_);
  }
  // Connections give their counts back under mutex_ as they close: closed outside it.
  ready.clear();
  returned.clear();
  reading_.clear();
}

void HttpServer::route(const std::string& method, const std::string& pattern, Handler handler) {
  routes_.push_back(Route{method, std::regex(pattern), std::move(handler)});
}

size_t HttpServer::stream_count() const {
  std::lock_guard lock(mutex_);
  return streams_;
}

void HttpServer::stop() {
  {
    std::lock_guard lock(mutex_);
    if (stopping_) return;
    stopping_ = true;
  }
  stop_.signal();
  wake_.signal();
  work_cv_.notify_all();
}

void HttpServer::release(const Connection& conn) {
  std::lock_guard lock(mutex_);
  --connections_;
  auto it = connections_per_uid_.find(conn.peer.uid);
  if (it != connections_per_uid_.end() && --it->second == 0) connections_per_uid_.erase(it);
}

void HttpServer::serve() {
  {
    std::lock_guard lock(mutex_);
    if (stopping_) return;
    for (size_t i = 0; i < std::max<size_t>(options_.workers, 1); ++i)
      workers_.emplace_back([this] { worker(); });
  }
  epoll_event events[64];
  for (;;) {
    // Sleep until the nearest deadline of a connection that is reading a request.
    int timeout = -1;
    for (auto& [fd, conn] : reading_) {
      int ms = ms_until(conn->deadline);
      if (timeout < 0 || ms < timeout) timeout = ms;
    }
    int n = ::epoll_wait(epoll_.get(), events, 64, timeout < 0 ? -1 : timeout + 1);
    if (n < 0 && errno != EINTR) {
      log::error("api: epoll_wait: {}", std::strerror(errno));
      return;
    }
    for (int i = 0; i < n; ++i) {
      int fd = events[i].data.fd;
      if (fd == listen_.get()) {
        accept_connections();
      } else if (fd == wake_.fd()) {
        wake_.consume();
        std::vector<ConnPtr> back;
        {
          std::lock_guard lock(mutex_);
          if (stopping_) return;
          back.swap(returned_);
        }
        for (auto& conn : back) watch(std::move(conn));
      } else if (auto it = reading_.find(fd); it != reading_.end()) {
        on_readable(it->second);
      }
    }
    expire(Clock::now());
  }
}

void HttpServer::accept_connections() {
  for (;;) {
    UniqueFd fd(::accept4(listen_.get(), nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC));
    if (!fd) {
      if (errno == EINTR || errno == ECONNABORTED) continue;
      if (errno != EAGAIN && errno != EWOULDBLOCK)
        log::warn("api: accept: {}", std::strerror(errno));
      return;
    }
    PeerCredentials peer;
    try {
      peer = peer_credentials(fd.get());
    } catch (const Error& e) {
      log::warn("api: refusing a client: {}", e.what());
      continue;
    }
    bool ok = !options_.authorize || options_.authorize(peer);
    std::optional<Refusal> refusal;
    {
      std::lock_guard lock(mutex_);
      size_t& mine = connections_per_uid_[peer.uid];
      if (connections_ >= options_.max_connections) {
        refusal = Refusal{503, "busy", "the daemon has " + std::to_string(connections_) +
                                           " connections open; try again later"};
      } else if (mine >= options_.max_connections_per_peer) {
        refusal = Refusal{429, "too_many_connections",
                          "uid " + std::to_string(peer.uid) + " has " + std::to_string(mine) +
                              " connections open, the most one user may have"};
      }
      ++connections_;
      ++mine;
    }
    auto conn = std::make_unique<Connection>(*this, std::move(fd), std::move(peer), ok);
    if (refusal) {
      refuse(std::move(conn), refusal->status, refusal->code, refusal->message);
      continue;
    }
    watch(std::move(conn));
  }
}

void HttpServer::watch(ConnPtr conn) {
  conn->next_request(Clock::now());
  epoll_event ev{};
  ev.events = EPOLLIN | EPOLLRDHUP;
  ev.data.fd = conn->fd.get();
  if (::epoll_ctl(epoll_.get(), EPOLL_CTL_ADD, conn->fd.get(), &ev) != 0) {
    log::warn("api: epoll_ctl: {}", std::strerror(errno));
    return;
  }
  int fd = conn->fd.get();
  auto& slot = reading_[fd];
  slot = std::move(conn);
  // A pipelined request may be buffered already.
  if (!slot->in.empty()) on_readable(slot);
}

void HttpServer::on_readable(ConnPtr& slot) {
  Connection& conn = *slot;
  int fd = conn.fd.get();
  bool complete = parse(conn);
  char buf[65536];
  while (!complete && !conn.refusal) {
    ssize_t n = ::recv(fd, buf, sizeof buf, 0);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return;
    if (n <= 0) {  // the client went away (mid-request or between requests)
      ::epoll_ctl(epoll_.get(), EPOLL_CTL_DEL, fd, nullptr);
      reading_.erase(fd);
      return;
    }
    if (conn.phase == Connection::kIdle) {
      conn.phase = Connection::kHead;
      conn.deadline = Clock::now() + options_.header_timeout;
    }
    conn.in.append(buf, static_cast<size_t>(n));
    complete = parse(conn);
  }
  ::epoll_ctl(epoll_.get(), EPOLL_CTL_DEL, fd, nullptr);
  ConnPtr owned = std::move(slot);
  reading_.erase(fd);
  if (owned->refusal) {
    Refusal r = *owned->refusal;
    refuse(std::move(owned), r.status, r.code, r.message);
    return;
  }
  {
    std::lock_guard lock(mutex_);
    ready_.push_back(std::move(owned));
  }
  work_cv_.notify_one();
}

bool HttpServer::parse(Connection& c) {
  auto refuse_with = [&](int status, std::string code, std::string message) {
    c.refusal = Refusal{status, std::move(code), std::move(message)};
    return false;
  };
  HttpRequest& req = c.request;
  for (;;) {
    switch (c.phase) {
      case Connection::kIdle:
        if (c.in.empty()) return false;
        c.phase = Connection::kHead;
        c.deadline = Clock::now() + options_.header_timeout;
        [[fallthrough]];
      case Connection::kHead: {
        size_t end = c.in.find("\r\n\r\n");
        if (end == std::string::npos) {
          if (c.in.size() > options_.max_header_bytes)
            return refuse_with(431, "header_too_large",
                               "request header longer than " +
                                   std::to_string(options_.max_header_bytes) + " bytes");
          return false;
        }
        if (end + 4 > options_.max_header_bytes)
          return refuse_with(431, "header_too_large",
                             "request header longer than " +
                                 std::to_string(options_.max_header_bytes) + " bytes");
        std::string head = c.in.substr(0, end);
        c.in.erase(0, end + 4);
        size_t line_end = head.find("\r\n");
        std::string line = head.substr(0, line_end);
        size_t sp1 = line.find(' '), sp2 = line.rfind(' ');
        if (sp1 == std::string::npos || sp2 == sp1)
          return refuse_with(400, "bad_request", "malformed request line");
        req.method = line.substr(0, sp1);
        std::string target = line.substr(sp1 + 1, sp2 - sp1 - 1);
        std::string version = line.substr(sp2 + 1);
        if (!is_token(req.method) || target.empty() || target[0] != '/' ||
            target.find(' ') != std::string::npos)
          return refuse_with(400, "bad_request", "malformed request line");
        if (version != "HTTP/1.1" && version != "HTTP/1.0")
          return refuse_with(400, "bad_request", "unsupported protocol '" + version + "'");
        size_t q = target.find('?');
        req.path = target.substr(0, q);
        if (q != std::string::npos) {
          std::string query = target.substr(q + 1);
          for (size_t pos = 0; pos <= query.size();) {
            size_t amp = query.find('&', pos);
            if (amp == std::string::npos) amp = query.size();
            std::string pair = query.substr(pos, amp - pos);
            size_t eq = pair.find('=');
            if (!pair.empty())
              req.query[pair.substr(0, eq)] = eq == std::string::npos ? "" : pair.substr(eq + 1);
            pos = amp + 1;
          }
        }
        size_t pos = line_end == std::string::npos ? head.size() : line_end + 2;
        std::map<std::string, int> seen;
        while (pos < head.size()) {
          size_t next = head.find("\r\n", pos);
          if (next == std::string::npos) next = head.size();
          std::string_view h(head.data() + pos, next - pos);
          pos = next + 2;
          size_t colon = h.find(':');
          if (colon == std::string_view::npos || !is_token(h.substr(0, colon)))
            return refuse_with(400, "bad_request", "malformed header line");
          std::string name = lower(std::string(h.substr(0, colon)));
          std::string value = trim(h.substr(colon + 1));
          if (++seen[name] > 1 && (name == "content-length" || name == "transfer-encoding" ||
                                   name == "content-encoding"))
            return refuse_with(400, "bad_request", "repeated " + name + " header");
          req.headers[name] = value;
        }
        auto header = [&](const char* name) -> const std::string* {
          auto it = req.headers.find(name);
          return it == req.headers.end() ? nullptr : &it->second;
        };
        std::string connection = header("connection") ? lower(*header("connection")) : "";
        c.keep_alive = version == "HTTP/1.1" ? connection.find("close") == std::string::npos
                                             : connection.find("keep-alive") != std::string::npos;
        if (auto* ce = header("content-encoding"); ce && lower(*ce) != "identity")
          return refuse_with(415, "unsupported_encoding",
                             "Content-Encoding '" + *ce + "' is not accepted; send the body as it is");
        const std::string* te = header("transfer-encoding");
        const std::string* cl = header("content-length");
        if (te && cl)
          return refuse_with(400, "bad_request", "both Transfer-Encoding and Content-Length");
        c.deadline = Clock::now() + options_.body_timeout;
        if (te) {
          if (lower(*te) != "chunked")
            return refuse_with(501, "not_implemented",
                               "Transfer-Encoding '" + *te + "' is not supported (only chunked)");
          c.phase = Connection::kChunkSize;
        } else if (cl) {
          if (cl->empty() || cl->size() > 18 ||
              !std::all_of(cl->begin(), cl->end(), [](char ch) { return ch >= '0' && ch <= '9'; }))
            return refuse_with(400, "bad_request", "malformed Content-Length");
          c.body_left = std::stoull(*cl);
          if (c.body_left > options_.max_body_bytes)
            return refuse_with(413, "too_large",
                               "request body of " + *cl + " bytes is larger than the " +
                                   std::to_string(options_.max_body_bytes) + " allowed");
          c.phase = c.body_left ? Connection::kBody : Connection::kDone;
        } else {
          c.phase = Connection::kDone;
        }
        if (c.phase != Connection::kDone) {
          if (auto* ex = header("expect"); ex && lower(*ex) == "100-continue") {
            const char cont[] = "HTTP/1.1 100 Continue\r\n\r\n";
            [[maybe_unused]] ssize_t n =
                ::send(c.fd.get(), cont, sizeof cont - 1, MSG_NOSIGNAL | MSG_DONTWAIT);
          }
        }
        break;
      }
      case Connection::kBody: {
        size_t take = std::min(c.body_left, c.in.size());
        req.body.append(c.in, 0, take);
        c.in.erase(0, take);
        c.body_left -= take;
        if (c.body_left) return false;
        c.phase = Connection::kDone;
        break;
      }
      case Connection::kChunkSize: {
        size_t end = c.in.find("\r\n");
        if (end == std::string::npos) {
          if (c.in.size() > kMaxChunkLine)
            return refuse_with(400, "bad_request", "malformed chunk size line");
          return false;
        }
        std::string line = c.in.substr(0, std::min(end, c.in.find(';')));
        c.in.erase(0, end + 2);
        line = trim(line);
        if (line.empty() || line.size() > 15 || !std::all_of(line.begin(), line.end(), ::isxdigit))
          return refuse_with(400, "bad_request", "malformed chunk size '" + line + "'");
        size_t size = std::stoull(line, nullptr, 16);
        if (size > options_.max_body_bytes - std::min(req.body.size(), options_.max_body_bytes))
          return refuse_with(413, "too_large",
                             "chunked request body larger than the " +
                                 std::to_string(options_.max_body_bytes) + " bytes allowed");
        c.body_left = size;
        c.phase = size ? Connection::kChunkData : Connection::kChunkTrailer;
        break;
      }
      case Connection::kChunkData: {
        size_t take = std::min(c.body_left, c.in.size());
        req.body.append(c.in, 0, take);
        c.in.erase(0, take);
        c.body_left -= take;
        if (c.body_left || c.in.size() < 2) return false;
        if (c.in.compare(0, 2, "\r\n") != 0)
          return refuse_with(400, "bad_request", "chunk not followed by CRLF");
        c.in.erase(0, 2);
        c.phase = Connection::kChunkSize;
        break;
      }
      case Connection::kChunkTrailer: {
        size_t end = c.in.find("\r\n");
        if (end == std::string::npos) {
          if (c.trailer_bytes + c.in.size() > options_.max_header_bytes)
            return refuse_with(431, "header_too_large", "chunked trailer too long");
          return false;
        }
        c.trailer_bytes += end + 2;
        if (c.trailer_bytes > options_.max_header_bytes)
          return refuse_with(431, "header_too_large", "chunked trailer too long");
        c.in.erase(0, end + 2);
        if (end == 0) c.phase = Connection::kDone;
        break;
      }
      case Connection::kDone:
        return true;
    }
  }
}

void HttpServer::expire(Clock::time_point now) {
  std::vector<int> due;
  for (auto& [fd, conn] : reading_)
    if (now >= conn->deadline) due.push_back(fd);
  for (int fd : due) {
    ::epoll_ctl(epoll_.get(), EPOLL_CTL_DEL, fd, nullptr);
    ConnPtr conn = std::move(reading_[fd]);
    reading_.erase(fd);
    if (conn->phase == Connection::kIdle) continue;  // an idle keep-alive connection: just close
    bool head = conn->phase == Connection::kHead;
    refuse(std::move(conn), 408, "timeout",
           std::string("the request's ") + (head ? "header" : "body") + " did not arrive within " +
               std::to_string((head ? options_.header_timeout : options_.body_timeout).count()) +
               " ms");
  }
}

void HttpServer::refuse(ConnPtr conn, int status, const std::string& code,
                        const std::string& message) {
  // Best effort and never blocking: the I/O thread must not wait for one client.
  std::string body = error_body(code, message);
  std::string out = response_head(status, "application/json", body.size(), false) + body;
  [[maybe_unused]] ssize_t n =
      ::send(conn->fd.get(), out.data(), out.size(), MSG_NOSIGNAL | MSG_DONTWAIT);
  ::shutdown(conn->fd.get(), SHUT_WR);
}

void HttpServer::worker() {
  for (;;) {
    ConnPtr conn;
    {
      std::unique_lock lock(mutex_);
      work_cv_.wait(lock, [&] { return stopping_ || !ready_.empty(); });
      if (stopping_) return;
      conn = std::move(ready_.front());
      ready_.pop_front();
    }
    handle(std::move(conn));
  }
}

bool HttpServer::send_all(Connection& conn, std::string_view bytes) {
  auto deadline = Clock::now() + options_.write_timeout;
  while (!bytes.empty()) {
    ssize_t n = ::send(conn.fd.get(), bytes.data(), bytes.size(), MSG_NOSIGNAL | MSG_DONTWAIT);
    if (n > 0) {
      bytes.remove_prefix(static_cast<size_t>(n));
      continue;
    }
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
      pollfd p[2] = {{conn.fd.get(), POLLOUT, 0}, {stop_.fd(), POLLIN, 0}};
      int r = ::poll(p, 2, ms_until(deadline));
      if (r < 0 && errno == EINTR) continue;
      if (r <= 0 || p[1].revents) return false;  // timed out, failed or stopping
      continue;
    }
    return false;
  }
  return true;
}

void HttpServer::handle(ConnPtr conn) {
  HttpRequest& req = conn->request;
  HttpReply res;
  if (!conn->authorized) {
    res.status = 403;
    res.body = error_body("forbidden", "uid " + std::to_string(conn->peer.uid) +
                                           " may not use the keel daemon (root or the daemon's "
                                           "group only)");
  } else {
    const Route* found = nullptr;
    bool other_method = false;
    for (const Route& r : routes_) {
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
      res.body = other_method ? error_body("method_not_allowed",
                                           req.method + " is not allowed on " + req.path)
                              : error_body("no_route", "no such API path: " + req.method + " " +
                                                           req.path);
    } else {
      try {
        found->handler(req, res);
      } catch (const std::exception& e) {
        res = HttpReply{};
        res.status = 500;
        res.body = error_body("failed", e.what());
      }
    }
  }

  if (res.stream) {
    std::optional<Refusal> refusal;
    {
      std::lock_guard lock(mutex_);
      size_t& mine = streams_per_uid_[conn->peer.uid];
      if (stopping_) {
        refusal = Refusal{503, "stopping", "the daemon is stopping"};
      } else if (streams_ >= options_.max_streams) {
        refusal = Refusal{429, "too_many_streams",
                          "the daemon serves " + std::to_string(streams_) + " streams already"};
      } else if (mine >= options_.max_streams_per_peer) {
        refusal = Refusal{429, "too_many_streams",
                          "uid " + std::to_string(conn->peer.uid) + " has " +
                              std::to_string(mine) + " streams open, the most one user may have"};
      } else {
        ++mine;
        ++streams_;
        ++stream_threads_;
      }
      if (refusal && mine == 0) streams_per_uid_.erase(conn->peer.uid);
    }
    if (refusal) {
      res = HttpReply{};
      res.status = refusal->status;
      res.body = error_body(refusal->code, refusal->message);
      conn->keep_alive = false;
    } else {
      std::thread([this, c = std::move(conn), s = std::move(res.stream),
                   type = res.content_type]() mutable {
        run_stream(std::move(c), std::move(s), type);
      }).detach();
      return;
    }
  }

  std::string out = response_head(res.status, res.content_type, res.body.size(), conn->keep_alive);
  out += res.body;
  if (!send_all(*conn, out) || !conn->keep_alive) return;  // closes it
  {
    std::lock_guard lock(mutex_);
    if (!stopping_) returned_.push_back(std::move(conn));
  }
  wake_.signal();  // (a connection left over when stopping closes here, outside the lock)
}

void HttpServer::run_stream(ConnPtr conn, std::unique_ptr<ResponseStream> stream,
                            const std::string& content_type) {
  const uid_t uid = conn->peer.uid;
  auto send_chunk = [&](std::string_view bytes) {
    char size[32];
    int n = std::snprintf(size, sizeof size, "%zx\r\n", bytes.size());
    std::string chunk(size, static_cast<size_t>(n));
    chunk.append(bytes);
    chunk += "\r\n";
    return send_all(*conn, chunk);
  };
  try {
    bool open = send_all(*conn, "HTTP/1.1 200 OK\r\nContent-Type: " + content_type +
                                    "\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n");
    // The client's socket is polled for hang-up together with the stream: a client that goes
    // away releases this thread at once, whether or not the stream has anything to say.
    short client_events = POLLIN | POLLRDHUP;
    while (open) {
      std::optional<std::string> data = stream->next();
      if (!data) {
        send_all(*conn, "0\r\n\r\n");
        break;
      }
      if (!data->empty() && !send_chunk(*data)) break;
      pollfd p[3] = {{conn->fd.get(), client_events, 0},
                     {stream->wait_fd(), POLLIN, 0},
                     {stop_.fd(), POLLIN, 0}};
      int r = ::poll(p, 3, -1);
      if (r < 0 && errno == EINTR) continue;
      if (r < 0 || p[2].revents) break;
      if (p[0].revents & (POLLHUP | POLLERR | POLLNVAL)) break;
      if (p[0].revents & (POLLIN | POLLRDHUP)) {
        // A client sends nothing on a stream; whatever comes is dropped. End of its input alone
        // (a half-close) is no hang-up: it may still read, so only POLLHUP is watched from then.
        char buf[4096];
        ssize_t n = ::recv(conn->fd.get(), buf, sizeof buf, MSG_DONTWAIT);
        if (n == 0) client_events = 0;
        if (n < 0 && errno != EAGAIN && errno != EINTR) break;
      }
    }
  } catch (const std::exception& e) {
    log::warn("api: stream: {}", e.what());
  }
  stream.reset();
  conn.reset();
  std::lock_guard lock(mutex_);
  --streams_;
  if (--streams_per_uid_[uid] == 0) streams_per_uid_.erase(uid);
  --stream_threads_;
  stream_done_.notify_all();
}

}  // namespace keel::manager
