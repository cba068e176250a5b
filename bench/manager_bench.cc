// Rows for the management layer, with real VMMs running tests/guests/acpi_counter.asm on kvm:
//
// "daemon start to first line": ms from `keel start NAME` (the CLI, through the daemon, which
//   spawns the VMM paused, connects, resumes) to the guest's first console line read from the
//   daemon's console stream, against `keel run` of the same guest to its first line on stdout.
// "guests before start latency 2x": how many counter guests the daemon keeps running at once
//   before the next one's start-to-first-line latency is twice the first one's (the count is
//   bounded by kMaxGuests, so the row stops by itself); baseline: the host's CPU count.
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <memory>
#include <thread>

#include "base/error.h"
#include "bench.h"
#include "manager/api_client.h"

namespace keel::bench {
namespace {

using Clock = std::chrono::steady_clock;
using namespace std::chrono_literals;

constexpr int kMaxGuests = 24;

std::string guest_path() { return std::string(KEEL_TEST_GUEST_DIR) + "/acpi_counter.bin"; }

double ms_since(Clock::time_point t) {
  return std::chrono::duration<double, std::milli>(Clock::now() - t).count();
}

pid_t spawn(const std::vector<std::string>& args, int out_fd) {
  pid_t pid = ::fork();
  if (pid < 0) throw Error("fork failed");
  if (pid == 0) {
    int null = ::open("/dev/null", O_RDWR);
    ::dup2(null, 0);
    ::dup2(out_fd >= 0 ? out_fd : null, 1);
    ::dup2(null, 2);
    std::vector<char*> argv;
    for (auto& a : args) argv.push_back(const_cast<char*>(a.c_str()));
    argv.push_back(nullptr);
    ::execv(argv[0], argv.data());
    ::_exit(127);
  }
  return pid;
}

int wait_exit(pid_t pid) {
  int status = 0;
  ::waitpid(pid, &status, 0);
  return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

// A daemon in a temporary state directory for the whole benchmark run.
class Daemon {
 public:
  explicit Daemon(const std::string& sandbox = "on") {
    char tmpl[] = "/tmp/keel-bench-XXXXXX";
    dir_ = ::mkdtemp(tmpl);
    socket_ = dir_ + "/api.sock";
    pid_ = spawn({KEEL_BINARY, "daemon", "--state-dir", dir_ + "/state", "--socket", socket_,
                  "--sandbox", sandbox},
                 -1);
    auto deadline = Clock::now() + 20s;
    for (;;) {
      try {
        api().call("GET", "/v1/version");
        return;
      } catch (const Error&) {
        if (Clock::now() > deadline) throw Error("the benchmark daemon did not come up");
        std::this_thread::sleep_for(10ms);
      }
    }
  }
  ~Daemon() {
    try {
      for (auto& vm : api().call("GET", "/v1/vms"))
        if (vm.contains("pid")) ::kill(vm["pid"].get<pid_t>(), SIGKILL);
    } catch (...) {
    }
    ::kill(pid_, SIGTERM);
    wait_exit(pid_);
    std::filesystem::remove_all(dir_);
  }
  manager::ApiClient api() { return manager::ApiClient(socket_, 60s); }
  const std::string& socket() const { return socket_; }

  // Defines a fresh VM, starts it through the CLI and returns the ms to its first console line.
  double start_to_first_line(const std::string& name) {
    api().call("POST", "/v1/vms",
               {{"name", name}, {"vcpus", 1}, {"memory_mib", 16}, {"accel", "kvm"},
                {"test_guest", guest_path()}});
    auto t0 = Clock::now();
    pid_t cli = spawn({KEEL_BINARY, "start", name, "--socket", socket_}, -1);
    if (int code = wait_exit(cli); code != 0)
      throw Error("keel start " + name + " exited " + std::to_string(code));
    std::string seen;
    auto deadline = Clock::now() + 60s;
    api().stream("/v1/vms/" + name + "/console?history=1",
                 [&](std::string_view b) {
                   seen.append(b);
                   return seen.find('\n') == std::string::npos;
                 },
                 [&] { return Clock::now() > deadline; });
    if (seen.find("count 0\n") == std::string::npos)
      throw Error(name + ": no first console line, got '" + seen + "'");
    return ms_since(t0);
  }
  void remove(const std::string& name) {
    api().call("POST", "/v1/vms/" + name + "/destroy");
    api().call("DELETE", "/v1/vms/" + name);
  }

 private:
  std::string dir_, socket_;
  pid_t pid_ = -1;
};

Daemon& daemon() {
  static Daemon d;
  return d;
}

// The same daemon whose VMMs do not confine themselves (the sandbox's cost on start).
Daemon& unconfined_daemon() {
  static Daemon d("off");
  return d;
}

// `keel run` of the guest: ms from spawn to the first line on its stdout.
double run_to_first_line() {
  int fds[2];
  if (::pipe2(fds, O_CLOEXEC) != 0) throw Error("pipe failed");
  auto t0 = Clock::now();
  pid_t pid = spawn({KEEL_BINARY, "run", "--accel", "kvm", "--test-guest", guest_path()}, fds[1]);
  ::close(fds[1]);
  std::string seen;
  char buf[256];
  auto deadline = Clock::now() + 60s;
  while (seen.find('\n') == std::string::npos && Clock::now() < deadline) {
    pollfd p{fds[0], POLLIN, 0};
    if (::poll(&p, 1, 100) <= 0) continue;
    ssize_t n = ::read(fds[0], buf, sizeof buf);
    if (n <= 0) break;
    seen.append(buf, size_t(n));
  }
  double ms = ms_since(t0);
  ::kill(pid, SIGKILL);
  wait_exit(pid);
  ::close(fds[0]);
  if (seen.find("count 0\n") == std::string::npos)
    throw Error("keel run: no first console line, got '" + seen + "'");
  return ms;
}

int serial = 0;  // fresh VM names across samples

KEEL_BENCH_ROW(Row{
    .name = "daemon start to first line",
    .unit = "ms",
    .baseline = "keel run of the same guest",
    .sample =
        [] {
          Sample s;
          s.baseline = run_to_first_line();
          std::string name = "lat" + std::to_string(serial++);
          s.keel = daemon().start_to_first_line(name);
          daemon().remove(name);
          return s;
        },
    .unavailable = kvm_unavailable,
});

KEEL_BENCH_ROW(Row{
    .name = "daemon start to first line, sandbox on",
    .unit = "ms",
    .baseline = "the same with --sandbox off",
    .sample =
        [] {
          Sample s;
          std::string name = "sbx" + std::to_string(serial++);
          static bool confined_first = true;
          confined_first = !confined_first;
          if (confined_first) s.keel = daemon().start_to_first_line(name);
          s.baseline = unconfined_daemon().start_to_first_line(name);
          if (!confined_first) s.keel = daemon().start_to_first_line(name);
          daemon().remove(name);
          unconfined_daemon().remove(name);
          return s;
        },
    .unavailable = kvm_unavailable,
});

KEEL_BENCH_ROW(Row{
    .name = "guests before start latency 2x",
    .unit = "guests",
    .baseline = "host CPUs",
    .sample =
        [] {
          std::vector<std::string> names;
          double first = 0;
          int running = 0;
          try {
            for (int i = 0; i < kMaxGuests; ++i) {
              std::string name = "many" + std::to_string(serial++);
              names.push_back(name);
              double ms = daemon().start_to_first_line(name);
              if (i == 0) first = ms;
              if (i > 0 && ms > 2 * first) break;  // this one was too slow: `running` stays
              running = i + 1;
            }
          } catch (...) {
            for (auto& n : names) daemon().remove(n);
            throw;
          }
          for (auto& n : names) daemon().remove(n);
          return Sample{double(running), double(std::thread::hardware_concurrency())};
        },
    .unavailable = kvm_unavailable,
    .higher_is_better = true,
});

// ms from spawning `args` (args[0] is the program) to its exit with status 0.
double command_ms(const std::vector<std::string>& args) {
  auto t0 = Clock::now();
  pid_t pid = spawn(args, -1);
  if (int code = wait_exit(pid); code != 0)
    throw Error(args.back() + " exited " + std::to_string(code));
  return ms_since(t0);
}

// What a command-line user waits for at each call: keel's start-up (its 98 MB binary, the CLI11
// verb table, spdlog) against /bin/true, and a `list` through the daemon against --version.
KEEL_BENCH_ROW(Row{
    .name = "keel --version",
    .unit = "ms",
    .baseline = "/bin/true",
    .sample = [] { return Sample{command_ms({KEEL_BINARY, "--version"}), command_ms({"/bin/true"})}; },
});

KEEL_BENCH_ROW(Row{
    .name = "keel list",
    .unit = "ms",
    .baseline = "keel --version",
    .sample =
        [] {
          daemon();  // up before the clock starts
          std::string socket = daemon().socket();
          return Sample{command_ms({KEEL_BINARY, "list", "--all", "--socket", socket}),
                        command_ms({KEEL_BINARY, "--version"})};
        },
});

}  // namespace
}  // namespace keel::bench
