// "console keystroke to echo": us from a byte typed into a VM's console to its echo coming back,
// through the web console's WebSocket (TCP listener of `keel daemon --http`, the token as Bearer:
// the path the browser's terminal takes, without the browser) against what `keel console` does
// on the unix socket (POST /v1/vms/NAME/console, the echo read from the console stream). The
// guest is tests/guests/serial_irq_echo.asm on emu; each sample is the median of 50 keystrokes,
// 50 ms apart. "browser console keystroke to echo" is the same through chromium and xterm.js
// (web/bench/keystroke.mjs: from the keydown in the page to the WebSocket message with the echo).
#include <fcntl.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdlib>
#include <condition_variable>
#include <mutex>
#include <filesystem>
#include <fstream>
#include <regex>
#include <thread>

#include <boost/asio/ip/tcp.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/websocket.hpp>

#include "base/error.h"
#include "bench.h"
#include "control/unix_socket.h"
#include "manager/api_client.h"

namespace keel::bench {
namespace {

using Clock = std::chrono::steady_clock;
using namespace std::chrono_literals;
namespace asio = boost::asio;
namespace beast = boost::beast;

constexpr int kKeystrokes = 50;
// Keys come at a person's pace: the guest is idle (halted) when each arrives.
constexpr auto kTypingGap = std::chrono::milliseconds(50);

double us_since(Clock::time_point t) {
  return std::chrono::duration<double, std::micro>(Clock::now() - t).count();
}

// A daemon with the web console on a free loopback port and one echo guest running.
class WebDaemon {
 public:
  WebDaemon() {
    char tmpl[] = "/tmp/keel-bench-web-XXXXXX";
    dir_ = ::mkdtemp(tmpl);
    socket_ = dir_ + "/api.sock";
    std::string log = dir_ + "/daemon.log";
    pid_ = ::fork();
    if (pid_ == 0) {
      int fd = ::open(log.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0600);
      ::dup2(fd, 1);
      ::dup2(fd, 2);
      ::execl(KEEL_BINARY, KEEL_BINARY, "daemon", "--state-dir", (dir_ + "/state").c_str(),
              "--socket", socket_.c_str(), "--http", "127.0.0.1:0", nullptr);
      ::_exit(127);
    }
    std::regex url(R"(web console at http://127\.0\.0\.1:([0-9]+)/\?token=([0-9a-f]+))");
    std::smatch m;
    auto deadline = Clock::now() + 20s;
    for (std::string text;; std::this_thread::sleep_for(10ms)) {
      std::ifstream in(log);
      text.assign(std::istreambuf_iterator<char>(in), {});
      if (std::regex_search(text, m, url)) break;
      if (Clock::now() > deadline) throw Error("the bench daemon did not print its URL: " + text);
    }
    port_ = static_cast<uint16_t>(std::stoi(m[1]));
    token_ = m[2];
    api().call("POST", "/v1/vms", {{"name", "echo"}, {"vcpus", 1}, {"memory_mib", 16},
                                   {"accel", "emu"},
                                   {"test_guest", std::string(KEEL_TEST_GUEST_DIR) +
                                                      "/serial_irq_echo.bin"}});
    api().call("POST", "/v1/vms/echo/start");
  }
  ~WebDaemon() {
    try {
      api().call("POST", "/v1/vms/echo/destroy");
    } catch (...) {
    }
    ::kill(pid_, SIGTERM);
    int status;
    ::waitpid(pid_, &status, 0);
    std::filesystem::remove_all(dir_);
  }
  manager::ApiClient api() const { return manager::ApiClient(socket_, 30s); }

  // The median us per keystroke over the WebSocket.
  double websocket_echo() const {
    asio::io_context ioc;
    beast::websocket::stream<asio::ip::tcp::socket> ws(ioc);
    ws.next_layer().connect({asio::ip::make_address("127.0.0.1"), port_});
    ws.set_option(beast::websocket::stream_base::decorator(
        [this](beast::websocket::request_type& req) {
          req.set(beast::http::field::authorization, "Bearer " + token_);
        }));
    ws.handshake("127.0.0.1", "/v1/vms/echo/console/ws");
    ws.binary(true);
    std::vector<double> times;
    beast::flat_buffer buffer;
    std::string seen;
    for (int i = 0; i < kKeystrokes; ++i) {
      std::this_thread::sleep_for(kTypingGap);
      char key = static_cast<char>('a' + i % 16);  // never 'q', which ends the guest
      seen.clear();
      auto t0 = Clock::now();
      ws.write(asio::buffer(&key, 1));
      while (seen.find(key) == std::string::npos) {
        buffer.clear();
        ws.read(buffer);
        seen = beast::buffers_to_string(buffer.data());
      }
      times.push_back(us_since(t0));
    }
    ws.close(beast::websocket::close_code::normal);
    return median(times);
  }

  // The median us per keystroke as `keel console` does it on the unix socket.
  double unix_echo() const {
    std::vector<double> times;
    std::mutex mutex;
    std::condition_variable changed;
    char want = 0;
    bool open = false, got = false;
    std::atomic<bool> stop{false};
    std::thread reader([&] {
      api().stream("/v1/vms/echo/console", [&](std::string_view bytes) {
        std::lock_guard lock(mutex);
        if (bytes.find(want) != std::string_view::npos) got = true;
        changed.notify_all();
        return !stop;
      }, [&] { return stop.load(); }, [&] {
        std::lock_guard lock(mutex);
        open = true;
        changed.notify_all();
      });
    });
    std::string failure;
    {
      std::unique_lock lock(mutex);
      if (!changed.wait_for(lock, 10s, [&] { return open; })) failure = "the stream did not open";
    }
    for (int i = 0; i < kKeystrokes && failure.empty(); ++i) {
      std::this_thread::sleep_for(kTypingGap);
      {
        std::lock_guard lock(mutex);
        want = static_cast<char>('a' + i % 16);
        got = false;
      }
      auto t0 = Clock::now();
      api().request("POST", "/v1/vms/echo/console", std::string(1, 'a' + i % 16), "text/plain");
      std::unique_lock lock(mutex);
      if (!changed.wait_for(lock, 10s, [&] { return got; })) failure = "no echo";
      else times.push_back(us_since(t0));
    }
    stop = true;
    reader.join();
    if (!failure.empty()) throw Error("console bench, unix socket: " + failure);
    return median(times);
  }

 private:
  std::string dir_, socket_, token_;
  uint16_t port_ = 0;
  pid_t pid_ = -1;
};

const WebDaemon& daemon() {
  static WebDaemon d;
  return d;
}

// web/bench/keystroke.mjs in headless chromium: its median in us (it starts its own daemon).
double browser_echo() {
  std::string out = std::filesystem::temp_directory_path() /
                    ("keel-bench-keystroke-" + std::to_string(::getpid()) + ".out");
  std::string cmd = std::string("KEEL_BINARY='") + KEEL_BINARY + "' KEEL_TEST_GUEST_DIR='" +
                    KEEL_TEST_GUEST_DIR + "' node '" + KEEL_SOURCE_DIR +
                    "/web/bench/keystroke.mjs' 50 >'" + out + "' 2>&1";
  int status = std::system(cmd.c_str());
  std::ifstream in(out);
  std::string text(std::istreambuf_iterator<char>(in), {});
  std::filesystem::remove(out);
  std::smatch m;
  if (status != 0 || !std::regex_search(text, m, std::regex(R"(median_us ([0-9.]+))")))
    throw Error("web/bench/keystroke.mjs failed: " + text);
  return std::stod(m[1]);
}

KEEL_BENCH_ROW(Row{
    .name = "browser console keystroke to echo",
    .unit = "us",
    .baseline = "keel console's path: POST + console stream on the unix socket",
    .sample = [] { return Sample{browser_echo(), daemon().unix_echo()}; },
});

KEEL_BENCH_ROW(Row{
    .name = "console keystroke to echo",
    .unit = "us",
    .baseline = "keel console's path: POST + console stream on the unix socket",
    .sample = [] { return Sample{daemon().websocket_echo(), daemon().unix_echo()}; },
});

}  // namespace
}  // namespace keel::bench
