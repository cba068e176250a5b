// HttpServer (manager/http_server.h) against clients that misbehave: bodies over the limit in
// every framing, compressed bodies, slow and idle clients, streams whose clients hang up, more
// streams than a peer may have, peers the policy refuses.
#include "manager/http_server.h"

#include <sys/socket.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <filesystem>
#include <thread>

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
    thread_ = std::thread([this] { server_->serve(); });
  }
  void TearDown() override {
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

  std::string dir_, path_;
  std::unique_ptr<HttpServer> server_;
  std::thread thread_;
  std::atomic<int> live_streams_{0};
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

}  // namespace
}  // namespace keel::manager
