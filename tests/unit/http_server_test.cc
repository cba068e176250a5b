// HttpServer (manager/http_server.h) against clients that misbehave: bodies over the limit in
// every framing, compressed bodies, slow and idle clients, streams whose clients hang up, more
// streams than a peer may have, peers the policy refuses; and its WebSockets and TCP listener.
#include "manager/http_server.h"

#include <dirent.h>
#include <sys/socket.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <filesystem>
#include <mutex>
#include <thread>

#include <boost/asio.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/websocket.hpp>

#include "base/error.h"
#include "base/eventfd.h"
#include "control/unix_socket.h"
#include "keel_process.h"
#include "manager/api_client.h"

namespace keel::manager {
namespace {

using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

// A stream that says nothing until it is told to end.
class SilentStream : public ResponseStream {
 public:
  explicit SilentStream(std::atomic<int>& live) : live_(live) { ++live_; }
  ~SilentStream() override { --live_; }
  int wait_fd() const override { return wake_.fd(); }
  std::optional<std::string> next() override { return std::string(); }

 private:
  std::atomic<int>& live_;
  EventFd wake_;
};

// A WebSocket session that sends what it is given and answers each message with "echo:" + it.
class EchoSession : public WebSocketSession {
 public:
  explicit EchoSession(std::atomic<int>& live) : live_(live) { ++live_; }
  ~EchoSession() override { --live_; }
  int wait_fd() const override { return wake_.fd(); }
  std::optional<std::string> next() override {
    wake_.consume();
    std::lock_guard lock(mutex_);
    if (ended_ && out_.empty()) return std::nullopt;
    return std::exchange(out_, std::string());
  }
  void on_message(std::string_view data) override {
    if (data == "fail") throw Error("this session refuses 'fail'");
    if (data == "end") {
      std::lock_guard lock(mutex_);
      ended_ = true;
    } else {
      std::lock_guard lock(mutex_);
      out_ += "echo:" + std::string(data);
    }
    wake_.signal();
  }

 private:
  std::atomic<int>& live_;
  EventFd wake_;
  std::mutex mutex_;
  std::string out_;
  bool ended_ = false;
};

// Threads of this process now.
size_t thread_count() {
  size_t n = 0;
  DIR* dir = ::opendir("/proc/self/task");
  while (dirent* e = ::readdir(dir)) n += e->d_name[0] != '.';
  ::closedir(dir);
  return n;
}

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace websocket = beast::websocket;

class HttpServerTest : public ::testing::Test {
 protected:
  void start(HttpServerOptions options = {}) {
    char tmpl[] = "/tmp/keel-http-XXXXXX";
    dir_ = ::mkdtemp(tmpl);
    path_ = dir_ + "/api.sock";
    server_ = std::make_unique<HttpServer>(control::listen_unix(path_), std::move(options));
    server_->route("GET", "/hello", [](const HttpRequest& req, HttpReply& res) {
      res.body = "hello uid " + std::to_string(req.peer.uid);
    });
    server_->route("POST", "/echo", [](const HttpRequest& req, HttpReply& res) {
      res.body = std::to_string(req.body.size()) + ":" + req.body.substr(0, 16);
    });
    server_->route("GET", "/stream", [this](const HttpRequest&, HttpReply& res) {
      res.stream = std::make_unique<SilentStream>(live_streams_);
    });
    server_->route("GET", "/ws", [this](const HttpRequest&, HttpReply& res) {
      res.websocket = std::make_unique<EchoSession>(live_streams_);
    });
    server_->route("GET", "/slow", [this](const HttpRequest&, HttpReply& res) {
      std::unique_lock lock(slow_mutex_);
      slow_cv_.wait(lock, [&] { return slow_released_; });
      res.body = "slow";
    });
    if (tcp_) tcp_port_ = server_->listen_tcp("127.0.0.1", 0);
    if (gate_) server_->set_gate(gate_);
    thread_ = std::thread([this] { server_->serve(); });
  }
  void release_slow() {
    std::lock_guard lock(slow_mutex_);
    slow_released_ = true;
    slow_cv_.notify_all();
  }
  void TearDown() override {
    release_slow();
    if (server_) server_->stop();
    if (thread_.joinable()) thread_.join();
    server_.reset();
    std::filesystem::remove_all(dir_);
  }

  UniqueFd connect() { return control::connect_unix(path_, 2000ms); }

  // Reads until the peer closes or `timeout`; returns what came.
  static std::string read_all(int fd, std::chrono::milliseconds timeout = 5s) {
    std::string out;
    char buf[4096];
    auto deadline = Clock::now() + timeout;
    while (Clock::now() < deadline) {
      if (!control::wait_readable(fd, 50ms)) continue;
      ssize_t n = ::recv(fd, buf, sizeof buf, 0);
      if (n <= 0) break;
      out.append(buf, static_cast<size_t>(n));
    }
    return out;
  }
  static int status_of(const std::string& response) {
    return response.size() > 12 ? std::atoi(response.c_str() + 9) : 0;
  }

  // Waits (bounded) until `cond` holds; the server releases streams on its own threads.
  static bool eventually(const std::function<bool()>& cond, std::chrono::milliseconds limit = 5s) {
    auto deadline = Clock::now() + limit;
    while (Clock::now() < deadline) {
      if (cond()) return true;
      std::this_thread::sleep_for(2ms);
    }
    return cond();
  }

  // A WebSocket client on the unix socket, handshaken on `target`.
  std::unique_ptr<websocket::stream<asio::local::stream_protocol::socket>> ws_connect(
      const std::string& target = "/ws") {
    auto ws = std::make_unique<websocket::stream<asio::local::stream_protocol::socket>>(ioc_);
    ws->next_layer().connect(asio::local::stream_protocol::endpoint(path_));
    ws->handshake("keel", target);
    return ws;
  }

  std::string dir_, path_;
  std::unique_ptr<HttpServer> server_;
  std::thread thread_;
  std::atomic<int> live_streams_{0};
  bool tcp_ = false;
  uint16_t tcp_port_ = 0;
  HttpServer::Gate gate_;
  std::mutex slow_mutex_;
  std::condition_variable slow_cv_;
  bool slow_released_ = false;
  asio::io_context ioc_;
};

TEST_F(HttpServerTest, HandlersSeeThePeersCredentials) {
  start();
  ApiClient client(path_, 5s);
  auto r = client.request("GET", "/hello");
  EXPECT_EQ(r.status, 200);
  EXPECT_EQ(r.body, "hello uid " + std::to_string(::getuid()));
}

TEST_F(HttpServerTest, AChunkedBodyOverTheLimitIs413) {
  start();
  UniqueFd fd = connect();
  control::write_all(fd.get(), "POST /echo HTTP/1.1\r\nHost: k\r\nTransfer-Encoding: chunked\r\n\r\n");
  // 2 MiB in 64 KiB chunks, from a thread: the server answers before it has read it all.
  std::thread writer([&] {
    std::string chunk(64 * 1024, 'x');
    char size[16];
    std::snprintf(size, sizeof size, "%zx\r\n", chunk.size());
    for (int i = 0; i < 32; ++i) {
      std::string piece = size + chunk + "\r\n";
      if (::send(fd.get(), piece.data(), piece.size(), MSG_NOSIGNAL) < 0) return;
    }
    ::send(fd.get(), "0\r\n\r\n", 5, MSG_NOSIGNAL);
  });
  std::string response = read_all(fd.get());
  writer.join();
  EXPECT_EQ(status_of(response), 413) << response;
  EXPECT_NE(response.find("chunked request body larger than the 1048576 bytes allowed"),
            std::string::npos) << response;
}

TEST_F(HttpServerTest, AChunkedBodyUnderTheLimitArrivesWhole) {
  start();
  UniqueFd fd = connect();
  control::write_all(fd.get(),
                     "POST /echo HTTP/1.1\r\nConnection: close\r\nTransfer-Encoding: chunked\r\n\r\n"
                     "5\r\nhello\r\n7;ext=1\r\n, world\r\n0\r\nTrailer: x\r\n\r\n");
  std::string response = read_all(fd.get());
  EXPECT_EQ(status_of(response), 200) << response;
  EXPECT_NE(response.find("12:hello, world"), std::string::npos) << response;
}

TEST_F(HttpServerTest, ContentLengthOverTheLimitIsRefusedBeforeTheBody) {
  start();
  UniqueFd fd = connect();
  control::write_all(fd.get(), "POST /echo HTTP/1.1\r\nContent-Length: 2097152\r\n\r\n");
  std::string response = read_all(fd.get());
  EXPECT_EQ(status_of(response), 413) << response;
}

TEST_F(HttpServerTest, CompressedBodiesAreRefused) {
  start();
  for (const char* encoding : {"gzip", "deflate", "br", "x-gzip"}) {
    UniqueFd fd = connect();
    control::write_all(fd.get(), std::string("POST /echo HTTP/1.1\r\nContent-Encoding: ") +
                                     encoding + "\r\nContent-Length: 4\r\n\r\nabcd");
    std::string response = read_all(fd.get());
    EXPECT_EQ(status_of(response), 415) << encoding << ": " << response;
  }
  // Smuggling shapes: both framings at once, an unknown transfer coding.
  UniqueFd fd = connect();
  control::write_all(fd.get(), "POST /echo HTTP/1.1\r\nContent-Length: 4\r\n"
                               "Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n");
  EXPECT_EQ(status_of(read_all(fd.get())), 400);
  fd = connect();
  control::write_all(fd.get(), "POST /echo HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n");
  EXPECT_EQ(status_of(read_all(fd.get())), 501);
}

TEST_F(HttpServerTest, AnOversizedHeaderIs431) {
  start();
  UniqueFd fd = connect();
  control::write_all(fd.get(), "GET /hello HTTP/1.1\r\nX-Junk: " + std::string(20000, 'a') + "\r\n\r\n");
  EXPECT_EQ(status_of(read_all(fd.get())), 431);
}

TEST_F(HttpServerTest, TricklingClientsAreCutAtTheHeaderDeadlineAndBlockNobody) {
  HttpServerOptions options;
  options.header_timeout = 600ms;
  options.body_timeout = 600ms;
  options.idle_timeout = 600ms;
  start(options);
  // 200 slow clients (more than the 128 threads of the server before this one, each of which a
  // slow client held): one byte every 100 ms.
  std::vector<UniqueFd> slow;
  for (int i = 0; i < 200; ++i) {
    slow.push_back(connect());
    control::write_all(slow.back().get(), "G");
  }
  // Everyone else is served at once.
  ApiClient client(path_, 2s);
  auto before = Clock::now();
  EXPECT_EQ(client.request("GET", "/hello").status, 200);
  EXPECT_LT(Clock::now() - before, 1s);

  // Trickling does not extend the deadline: the slow ones get 408 by ~600 ms after their first
  // byte, although each sent a byte in the last 100 ms.
  auto started = Clock::now();
  bool all_cut = false;
  std::vector<bool> cut(slow.size(), false);
  while (!all_cut && Clock::now() - started < 5s) {
    all_cut = true;
    for (size_t i = 0; i < slow.size(); ++i) {
      if (cut[i]) continue;
      if (::send(slow[i].get(), "E", 1, MSG_NOSIGNAL | MSG_DONTWAIT) < 0 ||
          control::wait_readable(slow[i].get(), 0ms))
        cut[i] = true;
      else
        all_cut = false;
    }
    std::this_thread::sleep_for(100ms);
  }
  EXPECT_TRUE(all_cut);
  EXPECT_LT(Clock::now() - started, 3s);
  std::string response = read_all(slow[0].get(), 1s);
  EXPECT_EQ(status_of(response), 408) << response;
  // A body that trickles is cut the same way.
  UniqueFd fd = connect();
  control::write_all(fd.get(), "POST /echo HTTP/1.1\r\nContent-Length: 100\r\n\r\nab");
  EXPECT_EQ(status_of(read_all(fd.get(), 3s)), 408);
}

TEST_F(HttpServerTest, AStreamWhoseClientHangsUpIsReleasedAtOnce) {
  HttpServerOptions options;
  options.max_streams_per_peer = 4;
  start(options);
  // 200 streams opened and abandoned one after the other, with at most 4 allowed at a time:
  // each must be released before the next can open.
  for (int i = 0; i < 200; ++i) {
    UniqueFd fd = connect();
    std::string head = testing::http_head(fd.get(), "GET /stream HTTP/1.1\r\n\r\n");
    ASSERT_EQ(status_of(head), 200) << "stream " << i << ": " << head;
    fd.reset();  // hang up
    ASSERT_TRUE(eventually([&] { return server_->stream_count() < 4; })) << "stream " << i;
  }
  EXPECT_TRUE(eventually([&] { return server_->stream_count() == 0 && live_streams_ == 0; }));
}

TEST_F(HttpServerTest, StreamsPerPeerAreCappedWith429) {
  HttpServerOptions options;
  options.max_streams_per_peer = 3;
  start(options);
  std::vector<UniqueFd> open;
  for (int i = 0; i < 3; ++i) {
    open.push_back(connect());
    control::write_all(open.back().get(), "GET /stream HTTP/1.1\r\n\r\n");
  }
  ASSERT_TRUE(eventually([&] { return server_->stream_count() == 3; }));
  ApiClient client(path_, 2s);
  auto r = client.request("GET", "/stream");
  EXPECT_EQ(r.status, 429);
  EXPECT_NE(r.body.find("streams open, the most one user may have"), std::string::npos) << r.body;
  // Other requests still work, and a hang-up frees a slot.
  EXPECT_EQ(client.request("GET", "/hello").status, 200);
  open.pop_back();
  ASSERT_TRUE(eventually([&] { return server_->stream_count() == 2; }));
}

TEST_F(HttpServerTest, ConnectionsPerPeerAreCapped) {
  HttpServerOptions options;
  options.max_connections_per_peer = 5;
  start(options);
  std::vector<UniqueFd> idle;
  for (int i = 0; i < 5; ++i) idle.push_back(connect());
  ApiClient client(path_, 2s);
  auto r = client.request("GET", "/hello");
  EXPECT_EQ(r.status, 429);
  EXPECT_NE(r.body.find("connections open, the most one user may have"), std::string::npos);
  idle.pop_back();
  EXPECT_TRUE(eventually([&] { return client.request("GET", "/hello").status == 200; }));
}

TEST_F(HttpServerTest, PeersThePolicyRefusesGet403) {
  HttpServerOptions options;
  options.authorize = [](const PeerCredentials& peer) { return peer.uid == 12345; };
  start(options);
  ApiClient client(path_, 2s);
  auto r = client.request("GET", "/hello");
  EXPECT_EQ(r.status, 403);
  EXPECT_NE(r.body.find("may not use the keel daemon"), std::string::npos) << r.body;
}

TEST_F(HttpServerTest, KeepAliveServesSeveralRequestsOnOneConnection) {
  start();
  UniqueFd fd = connect();
  control::write_all(fd.get(), "GET /hello HTTP/1.1\r\n\r\nGET /hello HTTP/1.1\r\n\r\n"
                               "GET /nope HTTP/1.1\r\nConnection: close\r\n\r\n");
  std::string all = read_all(fd.get());
  size_t first = all.find("HTTP/1.1 200");
  ASSERT_NE(first, std::string::npos) << all;
  EXPECT_NE(all.find("HTTP/1.1 200", first + 1), std::string::npos) << all;
  EXPECT_NE(all.find("HTTP/1.1 404"), std::string::npos) << all;
}

TEST_F(HttpServerTest, IdleClientsCostAFileDescriptorNotAThread) {
  start();
  ApiClient client(path_, 5s);
  ASSERT_EQ(client.request("GET", "/hello").status, 200);  // every worker has started
  size_t before = thread_count();
  std::vector<UniqueFd> idle;
  for (int i = 0; i < 200; ++i) {
    idle.push_back(connect());
    control::write_all(idle.back().get(), "GET /hel");  // a request that never completes
  }
  std::vector<UniqueFd> streams;
  for (int i = 0; i < 20; ++i) {
    streams.push_back(connect());
    ASSERT_EQ(status_of(testing::http_head(streams.back().get(), "GET /stream HTTP/1.1\r\n\r\n")), 200);
  }
  EXPECT_EQ(client.request("GET", "/hello").status, 200);
  EXPECT_EQ(server_->stream_count(), 20u);
  EXPECT_EQ(thread_count(), before);
}

TEST_F(HttpServerTest, ASlowHandlerHoldsUpNoOtherRequest) {
  start();
  std::thread slow([&] { EXPECT_EQ(ApiClient(path_, 10s).request("GET", "/slow").body, "slow"); });
  ApiClient client(path_, 2s);
  for (int i = 0; i < 20; ++i) EXPECT_EQ(client.request("GET", "/hello").status, 200);
  release_slow();
  slow.join();
}

TEST_F(HttpServerTest, AWebSocketCarriesMessagesBothWays) {
  start();
  auto ws = ws_connect();
  ws->write(asio::buffer(std::string("one")));
  ws->write(asio::buffer(std::string("two")));
  std::string got;
  beast::flat_buffer buffer;
  while (got.size() < std::string("echo:oneecho:two").size()) {
    ws->read(buffer);
    EXPECT_TRUE(ws->got_binary());
    got += beast::buffers_to_string(buffer.data());
    buffer.consume(buffer.size());
  }
  EXPECT_EQ(got, "echo:oneecho:two");  // in order
  EXPECT_EQ(server_->stream_count(), 1u);
  // The session ends its stream: the server closes the WebSocket normally.
  ws->write(asio::buffer(std::string("end")));
  boost::system::error_code ec;
  ws->read(buffer, ec);
  EXPECT_EQ(ec, websocket::error::closed);
  EXPECT_TRUE(eventually([&] { return server_->stream_count() == 0 && live_streams_ == 0; }));
}

TEST_F(HttpServerTest, AWebSocketSessionThatThrowsClosesWithItsReason) {
  start();
  auto ws = ws_connect();
  ws->write(asio::buffer(std::string("fail")));
  beast::flat_buffer buffer;
  boost::system::error_code ec;
  ws->read(buffer, ec);
  EXPECT_EQ(ec, websocket::error::closed);
  EXPECT_EQ(ws->reason().code, websocket::close_code::policy_error);
  EXPECT_EQ(std::string(ws->reason().reason.c_str()), "this session refuses 'fail'");
}

TEST_F(HttpServerTest, AWebSocketWhoseClientVanishesIsReleasedAtOnce) {
  HttpServerOptions options;
  options.max_streams_per_peer = 2;
  start(options);
  for (int i = 0; i < 50; ++i) {
    auto ws = ws_connect();
    ASSERT_TRUE(eventually([&] { return server_->stream_count() >= 1; }));
    ws.reset();  // no close frame: the socket just goes
    ASSERT_TRUE(eventually([&] { return server_->stream_count() == 0; })) << "socket " << i;
  }
  EXPECT_TRUE(eventually([&] { return live_streams_ == 0; }));
}

TEST_F(HttpServerTest, WebSocketsCountAsStreamsAndAPlainRequestForOneIs426) {
  HttpServerOptions options;
  options.max_streams_per_peer = 2;
  start(options);
  auto a = ws_connect(), b = ws_connect();
  ASSERT_TRUE(eventually([&] { return server_->stream_count() == 2; }));
  auto c = std::make_unique<websocket::stream<asio::local::stream_protocol::socket>>(ioc_);
  c->next_layer().connect(asio::local::stream_protocol::endpoint(path_));
  websocket::response_type refusal;
  boost::system::error_code ec;
  c->handshake(refusal, "keel", "/ws", ec);
  EXPECT_TRUE(ec);
  EXPECT_EQ(refusal.result_int(), 429u);
  ApiClient client(path_, 2s);
  auto r = client.request("GET", "/ws");
  EXPECT_EQ(r.status, 426);
}

TEST_F(HttpServerTest, TheTcpListenerServesTheRoutesBehindTheGate) {
  tcp_ = true;
  gate_ = [](HttpRequest& req, HttpReply& res) {
    if (!req.tcp) return true;
    if (req.header("x-pass")) return true;
    res.status = 401;
    res.body = "no pass from " + req.remote;
    return false;
  };
  start();
  ASSERT_NE(tcp_port_, 0);
  auto exchange = [&](const std::string& request) {
    asio::ip::tcp::socket s(ioc_);
    s.connect(asio::ip::tcp::endpoint(asio::ip::make_address("127.0.0.1"), tcp_port_));
    asio::write(s, asio::buffer(request));
    std::string out;
    boost::system::error_code ec;
    char buf[4096];
    for (size_t n; (n = s.read_some(asio::buffer(buf), ec)) > 0 || !ec;) out.append(buf, n);
    return out;
  };
  std::string refused = exchange("GET /hello HTTP/1.1\r\nConnection: close\r\n\r\n");
  EXPECT_EQ(status_of(refused), 401) << refused;
  EXPECT_NE(refused.find("no pass from 127.0.0.1"), std::string::npos) << refused;
  std::string ok = exchange("GET /hello HTTP/1.1\r\nX-Pass: 1\r\nConnection: close\r\n\r\n");
  EXPECT_EQ(status_of(ok), 200) << ok;
  // A TCP peer has no credentials: not root.
  EXPECT_NE(ok.find("hello uid 4294967295"), std::string::npos) << ok;
  // The unix socket does not go through the gate's TCP rule.
  EXPECT_EQ(ApiClient(path_, 2s).request("GET", "/hello").status, 200);
}

}  // namespace
}  // namespace keel::manager
