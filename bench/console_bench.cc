// "console 1 MiB byte by byte": ms for 1 MiB of guest console output, handed to the VMM's control
//   server one byte per call (as the UART delivers it, from a "vCPU" thread), to reach a
//   console-attach client (the daemon's relay); baseline: the same 1 MiB handed over in 4 KiB
//   chunks. The ratio is what per-byte delivery costs on top of the bytes themselves.
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <filesystem>
#include <mutex>
#include <thread>

#include "base/error.h"
#include "bench.h"
#include "control/control_client.h"
#include "control/control_server.h"
#include "control/unix_socket.h"

namespace keel::bench {
namespace {

using namespace std::chrono_literals;
using control::ControlTarget;

constexpr size_t kBytes = 1 << 20;

// Just enough of a VM for the control server: a console that the bench feeds.
class ConsoleOnlyTarget : public ControlTarget {
 public:
  control::RunStatus query_status() override { return {control::RunState::kRunning, "booted"}; }
  void pause() override {}
  void resume() override {}
  void powerdown() override {}
  void reset() override {}
  void quit() override {}
  std::vector<control::CpuInfo> query_cpus() override { return {}; }
  void set_event_callback(EventCallback) override {}
  void set_console_callback(ConsoleCallback cb) override { on_console_ = std::move(cb); }
  void console_input(std::string_view) override {}
  void print(std::string_view bytes) { on_console_(bytes); }

 private:
  ConsoleCallback on_console_;  // set before the bench's threads start
};

double console_ms(size_t chunk) {
  char tmpl[] = "/tmp/keel-bench-console-XXXXXX";
  std::string dir = ::mkdtemp(tmpl);
  ConsoleOnlyTarget target;
  double ms = 0;
  {
    control::ControlServer server(dir + "/control.sock", target);
    std::atomic<bool> running{true};
    std::thread loop([&] {
      while (running) server.run_once(20ms);
    });
    UniqueFd console = control::ControlClient::attach_console(server.path());
    std::string text(kBytes, 'x');
    for (size_t i = 0; i < kBytes; i += 80) text[i] = '\n';
    auto start = std::chrono::steady_clock::now();
    std::thread guest([&] {
      for (size_t at = 0; at < kBytes; at += chunk) target.print(std::string_view(text).substr(at, chunk));
    });
    size_t got = 0;
    while (got < kBytes && control::wait_readable(console.get(), 5000ms)) {
      char buf[65536];
      ssize_t n = ::recv(console.get(), buf, sizeof buf, 0);
      if (n <= 0) break;
      got += static_cast<size_t>(n);
    }
    ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count();
    guest.join();
    running = false;
    loop.join();
    if (got != kBytes) {
      std::filesystem::remove_all(dir);
      throw Error("console bench: " + std::to_string(got) + " of " + std::to_string(kBytes) + " bytes arrived");
    }
  }
  std::filesystem::remove_all(dir);
  return ms;
}

KEEL_BENCH_ROW(Row{
    .name = "console 1 MiB byte by byte",
    .unit = "ms",
    .baseline = "the same bytes in 4 KiB writes",
    .sample = [] { return Sample{console_ms(1), console_ms(4096)}; },
});

}  // namespace
}  // namespace keel::bench
