// Helpers for the end-to-end management tests: a daemon in a temporary directory, CLI runs, API
// polling with deadlines. Header-only, shared by e2e_manager_*.cc.
#pragma once

#include <fcntl.h>
#include <signal.h>
#include <sqlite3.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <filesystem>
#include <fstream>
#include <functional>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "manager/api_client.h"

namespace keel::e2e {

using nlohmann::json;
using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

struct CommandResult {
  int exit_code = -1;
  std::string out;
  std::string err;
};

inline std::string read_whole(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

// Runs `keel args...` to completion, capturing its output.
inline CommandResult run_keel(const std::vector<std::string>& args, const std::string& dir,
                              const std::string& input = "") {
  std::string out_path = dir + "/cli.out", err_path = dir + "/cli.err", in_path = dir + "/cli.in";
  std::ofstream(in_path) << input;
  pid_t pid = ::fork();
  if (pid == 0) {
    int in = ::open(in_path.c_str(), O_RDONLY);
    int out = ::open(out_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0600);
    int err = ::open(err_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0600);
    ::dup2(in, 0);
    ::dup2(out, 1);
    ::dup2(err, 2);
    std::vector<char*> argv{const_cast<char*>(KEEL_BINARY)};
    for (auto& a : args) argv.push_back(const_cast<char*>(a.c_str()));
    argv.push_back(nullptr);
    ::execv(KEEL_BINARY, argv.data());
    ::_exit(127);
  }
  int status = 0;
  ::waitpid(pid, &status, 0);
  CommandResult r;
  r.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  r.out = read_whole(out_path);
  r.err = read_whole(err_path);
  return r;
}

inline std::string integrity_check(const std::string& db_path) {
  sqlite3* db = nullptr;
  if (sqlite3_open_v2(db_path.c_str(), &db, SQLITE_OPEN_READONLY, nullptr) != SQLITE_OK) {
    sqlite3_close(db);
    return "cannot open";
  }
  sqlite3_stmt* stmt = nullptr;
  std::string result;
  sqlite3_prepare_v2(db, "PRAGMA integrity_check", -1, &stmt, nullptr);
  while (sqlite3_step(stmt) == SQLITE_ROW) {
    result += reinterpret_cast<const char*>(sqlite3_column_text(stmt, 0));
  }
  sqlite3_finalize(stmt);
  sqlite3_close(db);
  return result;
}

// The last "count N" the console shows, -1 if none.
inline long last_count(const std::string& console) {
  size_t pos = console.rfind("count ");
  while (pos != std::string::npos) {
    size_t end = console.find('\n', pos);
    if (end != std::string::npos) return std::stol(console.substr(pos + 6, end - pos - 6));
    if (pos == 0) break;
    pos = console.rfind("count ", pos - 1);
  }
  return -1;
}

// How many "count N" lines the console shows.
inline size_t count_lines(const std::string& console) {
  size_t n = 0;
  for (size_t pos = console.find("count "); pos != std::string::npos;
       pos = console.find("count ", pos + 1))
    ++n;
  return n;
}

// The daemon's event stream (GET /v1/events), read on a thread of its own from construction on:
// the constructor returns once the stream is open, so no event after it is missed.
class EventWatcher {
 public:
  explicit EventWatcher(const std::string& socket) : api_(socket, 30s) {
    thread_ = std::thread([this] {
      std::string pending;
      try {
        api_.stream("/v1/events", [&](std::string_view bytes) {
          pending.append(bytes);
          std::lock_guard lock(mutex_);
          for (size_t nl; (nl = pending.find('\n')) != std::string::npos; pending.erase(0, nl + 1))
            events_.push_back(json::parse(pending.substr(0, nl), nullptr, false));
          changed_.notify_all();
          return !stop_;
        }, [this] { return stop_.load(); }, [this] {
          std::lock_guard lock(mutex_);
          open_ = true;
          changed_.notify_all();
        });
      } catch (const std::exception& e) {
        std::lock_guard lock(mutex_);
        error_ = e.what();
      }
      std::lock_guard lock(mutex_);
      ended_ = true;
      changed_.notify_all();
    });
    std::unique_lock lock(mutex_);
    if (!changed_.wait_for(lock, 20s, [&] { return open_ || ended_; }) || !open_)
      ADD_FAILURE() << "the event stream did not open: " << error_;
  }
  ~EventWatcher() {
    stop_ = true;  // the reader looks at it at least every 200 ms
    thread_.join();
  }

  // Waits until the `nth` event `event` for `vm` (with `reason`, if given) has arrived; returns
  // it, or fails the test at the deadline and returns null.
  json wait_for(const std::string& vm, const std::string& event, const std::string& reason = "",
                std::chrono::milliseconds timeout = 60s, size_t nth = 1) {
    auto match = [&]() -> const json* {
      size_t seen = 0;
      for (const json& e : events_)
        if (e.is_object() && e.value("vm", "") == vm && e.value("event", "") == event &&
            (reason.empty() || e.value("reason", "") == reason) && ++seen == nth)
          return &e;
      return nullptr;
    };
    std::unique_lock lock(mutex_);
    if (changed_.wait_for(lock, timeout, [&] { return match() != nullptr || ended_; }) && match())
      return *match();
    ADD_FAILURE() << "no event '" << event << "' (" << reason << ") for " << vm
                  << "; got: " << json(events_).dump() << " " << error_;
    return nullptr;
  }
  // Every event `event` for `vm` seen so far, in order.
  std::vector<json> all(const std::string& vm, const std::string& event) {
    std::lock_guard lock(mutex_);
    std::vector<json> out;
    for (const json& e : events_)
      if (e.is_object() && e.value("vm", "") == vm && e.value("event", "") == event)
        out.push_back(e);
    return out;
  }
  // The names of the events seen so far for `vm`, in order.
  std::vector<std::string> names(const std::string& vm) {
    std::lock_guard lock(mutex_);
    std::vector<std::string> out;
    for (const json& e : events_)
      if (e.is_object() && e.value("vm", "") == vm) out.push_back(e.value("event", ""));
    return out;
  }

 private:
  manager::ApiClient api_;
  std::mutex mutex_;
  std::condition_variable changed_;
  std::vector<json> events_;
  bool open_ = false, ended_ = false;
  std::string error_;
  std::atomic<bool> stop_{false};
  std::thread thread_;
};

// A keel daemon with its own state directory and socket, killed at the end of the test together
// with every VMM it started.
class DaemonFixture : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/keel-e2e-XXXXXX";
    dir = ::mkdtemp(tmpl);
    state_dir = dir + "/state";
    socket = dir + "/api.sock";
  }

  void TearDown() override {
    if (daemon_pid > 0) {
      try {
        json vms = api().call("GET", "/v1/vms");
        for (auto& vm : vms) {
          if (vm.contains("pid")) vmm_pids.push_back(vm["pid"].get<pid_t>());
        }
      } catch (...) {
      }
      stop_daemon(SIGTERM);
    }
    for (pid_t pid : vmm_pids) ::kill(pid, SIGKILL);
    if (daemon_started) EXPECT_EQ(integrity_check(state_dir + "/keel.db"), "ok");  // not when skipped first
    std::filesystem::remove_all(dir);
  }

  // Extra arguments (e.g. --vmm) and environment for the daemon.
  virtual std::vector<std::string> daemon_extra_args() { return {}; }
  virtual void daemon_environment() {}

  void start_daemon() {
    daemon_started = true;
    daemon_pid = ::fork();
    if (daemon_pid == 0) {
      daemon_environment();
      std::string log = dir + "/daemon.log";
      int fd = ::open(log.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0600);
      ::dup2(fd, 1);
      ::dup2(fd, 2);
      std::vector<std::string> args{KEEL_BINARY, "daemon", "--state-dir", state_dir, "--socket",
                                    socket};
      for (auto& a : daemon_extra_args()) args.push_back(a);
      std::vector<char*> argv;
      for (auto& a : args) argv.push_back(a.data());
      argv.push_back(nullptr);
      ::execv(KEEL_BINARY, argv.data());
      ::_exit(127);
    }
    // Ready when the API answers.
    auto deadline = Clock::now() + 20s;
    for (;;) {
      try {
        api().call("GET", "/v1/version");
        return;
      } catch (const Error&) {
        int status;
        ASSERT_EQ(::waitpid(daemon_pid, &status, WNOHANG), 0)
            << "the daemon exited: " << read_whole(dir + "/daemon.log");
        ASSERT_LT(Clock::now(), deadline) << "the daemon did not come up";
        std::this_thread::sleep_for(10ms);
      }
    }
  }

  void stop_daemon(int sig) {
    ::kill(daemon_pid, sig);
    int status;
    ::waitpid(daemon_pid, &status, 0);
    daemon_pid = -1;
  }

  manager::ApiClient api() { return manager::ApiClient(socket, 30s); }

  CommandResult keel(std::vector<std::string> args, const std::string& input = "") {
    args.push_back("--socket");
    args.push_back(socket);
    return run_keel(args, dir, input);
  }

  json info(const std::string& name) { return api().call("GET", "/v1/vms/" + name); }

  // Polls the API until the VM is in `state` (and `reason`, if given), or fails at the deadline.
  json wait_state(const std::string& name, const std::string& state,
                  const std::string& reason = "", std::chrono::milliseconds timeout = 30s) {
    auto deadline = Clock::now() + timeout;
    json vm;
    while (Clock::now() < deadline) {
      vm = info(name);
      if (vm["state"] == state && (reason.empty() || vm["reason"] == reason)) return vm;
      std::this_thread::sleep_for(10ms);
    }
    ADD_FAILURE() << name << " never reached " << state << " (" << reason << "): " << vm.dump();
    return vm;
  }

  // Reads the VM's console (from its recent history) until `predicate` holds for what was read.
  std::string read_console_until(const std::string& name,
                                 const std::function<bool(const std::string&)>& predicate,
                                 std::chrono::milliseconds timeout = 30s, bool history = true) {
    std::string seen;
    auto deadline = Clock::now() + timeout;
    bool done = false;
    try {
      api().stream("/v1/vms/" + name + "/console" + (history ? "?history=1" : ""),
                   [&](std::string_view bytes) {
                     seen.append(bytes);
                     done = predicate(seen);
                     return !done;
                   },
                   [&] { return Clock::now() > deadline; });
    } catch (const std::exception& e) {
      ADD_FAILURE() << "console stream: " << e.what();
    }
    if (!done) ADD_FAILURE() << "console of " << name << " never matched; got: " << seen;
    return seen;
  }

  // For a VM whose console counts ("count N" lines): `keel suspend` stops the count (at most
  // `in_flight` lines still arrive during `quiet`, those already on their way when the vCPU
  // stopped), `keel resume` makes it go on from where it stopped.
  void expect_suspend_stops_and_resume_continues(const std::string& name, size_t in_flight,
                                                 std::chrono::milliseconds quiet) {
    ASSERT_EQ(keel({"suspend", name}).exit_code, 0);
    wait_state(name, "paused", "user");
    std::string during_pause;
    api().stream("/v1/vms/" + name + "/console", [&](std::string_view b) {
      during_pause.append(b);
      return true;
    }, [deadline = Clock::now() + quiet] { return Clock::now() > deadline; });
    EXPECT_LE(count_lines(during_pause), in_flight) << during_pause;
    long stopped_at = last_count(read_console_until(name, [](const std::string& s) {
      return last_count(s) >= 0;
    }));

    ASSERT_EQ(keel({"resume", name}).exit_code, 0);
    wait_state(name, "running", "unpaused");
    std::string console = read_console_until(name, [&](const std::string& s) {
      return last_count(s) > stopped_at + 2;
    });
    EXPECT_NE(console.find("count " + std::to_string(stopped_at + 1) + "\n"), std::string::npos)
        << console;
  }

  // Kills the daemon with SIGKILL while `name` runs in VMM `pid`, starts it again, and checks the
  // VMM survived and was adopted: running, same pid, its console relayed again.
  void kill_daemon_and_expect_adoption(const std::string& name, pid_t pid) {
    stop_daemon(SIGKILL);
    ASSERT_EQ(::kill(pid, 0), 0) << "the VMM died with the daemon";
    start_daemon();
    json vm = wait_state(name, "running");
    EXPECT_EQ(vm["pid"], pid);
    read_console_until(name, [](const std::string& s) { return last_count(s) >= 0; }, 30s, false);
  }

  void write_definition(const std::string& file, const json& definition) {
    std::ofstream(dir + "/" + file) << definition.dump();
  }

  std::string dir, state_dir, socket;
  pid_t daemon_pid = -1;
  bool daemon_started = false;  // the store exists only once a daemon ran
  std::vector<pid_t> vmm_pids;
};

}  // namespace keel::e2e
