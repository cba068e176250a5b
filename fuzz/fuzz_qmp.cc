// libFuzzer target: the VMM's control socket (QMP-shaped JSON lines) as a client would speak to
// it, through a real unix socket: any bytes, malformed and oversized lines, commands in any
// order, console-attach switching the connection to raw bytes, descriptors sent along with the
// bytes (getfd, closefd, snapshot-save's "state-fd", migrate "fd:NAME"). The target behind it
// does nothing.
#include <fcntl.h>
#include <sys/socket.h>
#include <unistd.h>

#include <string>

#include "control/control_client.h"
#include "control/control_server.h"
#include "control/unix_socket.h"

namespace {

using namespace std::chrono_literals;

class NullTarget : public keel::control::ControlTarget {
 public:
  keel::control::RunStatus query_status() override {
    return {keel::control::RunState::kRunning, "booted"};
  }
  void pause() override {}
  void resume() override {}
  void powerdown() override {}
  void reset() override {}
  void quit() override {}
  std::vector<keel::control::CpuInfo> query_cpus() override { return {{0, 1, false}}; }
  void set_event_callback(EventCallback) override {}
  void set_console_callback(ConsoleCallback) override {}
  void console_input(std::string_view) override {}
};

struct Server {
  NullTarget target;
  std::string path = "/tmp/keel-fuzz-qmp-" + std::to_string(::getpid()) + ".sock";
  keel::control::ControlServer server{path, target,
                                      keel::control::ControlServerOptions{.max_message = 4096,
                                                                          .daemon_token = "t"}};
};

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static Server s;
  keel::UniqueFd fd = keel::control::connect_unix(s.path, 1000ms);
  keel::control::set_nonblocking(fd.get(), true);
  // The first byte's low bit: every piece of the input carries a descriptor (SCM_RIGHTS).
  const bool pass_fds = size > 0 && (data[0] & 1);
  static keel::UniqueFd null_fd(::open("/dev/null", O_RDONLY | O_CLOEXEC));
  std::string_view input(reinterpret_cast<const char*>(data), std::min<size_t>(size, 32768));
  // Feed what the socket takes, dispatching in between; then end the input and let the server
  // finish with it (it closes the connection when it has read the end).
  while (!input.empty()) {
    ssize_t n;
    if (pass_fds) {
      size_t piece = std::min<size_t>(input.size(), 512);
      try {
        keel::control::send_with_fd(fd.get(), input.substr(0, piece), null_fd.get());
        n = static_cast<ssize_t>(piece);
      } catch (const std::exception&) {
        n = -1;
        errno = EPIPE;
      }
    } else {
      n = ::send(fd.get(), input.data(), input.size(), MSG_NOSIGNAL);
    }
    if (n > 0) input.remove_prefix(static_cast<size_t>(n));
    if (n < 0 && errno != EAGAIN) break;
    s.server.run_once(0ms);
    char sink[65536];
    while (::recv(fd.get(), sink, sizeof sink, 0) > 0) {
    }
  }
  ::shutdown(fd.get(), SHUT_WR);
  for (int i = 0; i < 1000; ++i) {
    s.server.run_once(1ms);
    char sink[65536];
    ssize_t n = ::recv(fd.get(), sink, sizeof sink, 0);
    if (n == 0 || (n < 0 && errno != EAGAIN)) break;
  }
  return 0;
}
