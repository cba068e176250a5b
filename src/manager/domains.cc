#include "manager/domains.h"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>

#include <filesystem>

#include "base/log.h"
#include "control/control_client.h"
#include "control/unix_socket.h"
#include "manager/vm_definition.h"

namespace keel::manager {

using nlohmann::json;
using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

struct Domains::Domain {
  explicit Domain(std::string n) : name(std::move(n)) {}
  const std::string name;
  std::mutex op;  // the per-VM command lock

  std::mutex mutex;  // guards everything below
  std::condition_variable changed;
  std::string state = kStateShutOff;
  std::string reason = "unknown";
  bool removed = false;  // undefined while a command waited for `op`
  std::shared_ptr<VmmLink> link;
  uint64_t generation = 0;  // one per VMM process, so a late exit of an old one is ignored
  bool destroy_requested = false;
  bool reset_seen = false;     // RESET, or SHUTDOWN for a reset: restart after the exit
  bool shutdown_seen = false;  // SHUTDOWN: the exit is a clean shutdown
  bool start_failed = false;
  std::shared_ptr<ByteHistory> console = std::make_shared<ByteHistory>();
};

namespace {

json timestamp_now() {
  timespec ts{};
  ::clock_gettime(CLOCK_REALTIME, &ts);
  return json{{"seconds", static_cast<int64_t>(ts.tv_sec)},
              {"microseconds", static_cast<int64_t>(ts.tv_nsec / 1000)}};
}

std::chrono::milliseconds left_until(Clock::time_point deadline) {
  auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now());
  return left.count() < 0 ? std::chrono::milliseconds(0) : left;
}

// The pipe a VMM is told about with `--ready-fd`: its write end goes to the child, the daemon
// waits on the read end and the child's pidfd at once.
class ReadinessPipe {
 public:
  enum Outcome { kReady, kExited, kTimeout };
  ReadinessPipe() {
    int fds[2];
    if (::pipe2(fds, O_CLOEXEC) != 0) throw_errno("pipe2");
    read_.reset(fds[0]);
    write_.reset(fds[1]);
    // spawn_process() puts fds 0-2 in place before it moves this one to 3.
    if (write_.get() < 3) {
      write_.reset(::fcntl(write_.get(), F_DUPFD_CLOEXEC, 3));
      if (!write_) throw_errno("fcntl(F_DUPFD_CLOEXEC)");
    }
  }
  int write_end() const { return write_.get(); }
  void close_write_end() { write_.reset(); }

  // kReady once the byte came; kExited when the process ended. A pipe closed without the byte
  // means the VMM is on its way out: then only its exit (or the deadline) is waited for.
  Outcome wait(int pidfd, Clock::time_point deadline) {
    bool pipe_open = true;
    for (;;) {
      pollfd p[2] = {{pidfd, POLLIN, 0}, {read_.get(), POLLIN, 0}};
      int r = ::poll(p, pipe_open ? 2 : 1, static_cast<int>(left_until(deadline).count()));
      if (r < 0 && errno == EINTR) continue;
      if (r < 0) throw_errno("poll");
      if (r == 0) return kTimeout;
      if (pipe_open && p[1].revents) {
        char byte;
        ssize_t n = ::read(read_.get(), &byte, 1);
        if (n == 1) return kReady;
        if (n < 0 && errno == EINTR) continue;
        pipe_open = false;
        continue;
      }
      return kExited;
    }
  }

 private:
  UniqueFd read_, write_;
};

std::string describe_exit(int status) {
  if (status < 0) return "exited";
  if (WIFEXITED(status)) return "exited with status " + std::to_string(WEXITSTATUS(status));
  if (WIFSIGNALED(status)) return std::string("killed by signal ") + ::strsignal(WTERMSIG(status));
  return "ended";
}

}  // namespace

Domains::Domains(Store& store, DomainsOptions options)
    : store_(store), options_(std::move(options)) {
  for (const char* sub : {"/run", "/log"}) {
    std::string dir = options_.state_dir + sub;
    std::filesystem::create_directories(dir);
    if (::chmod(dir.c_str(), 0700) != 0) throw_errno("chmod " + dir);
  }
  worker_ = std::thread([this] {
    for (;;) {
      std::function<void()> job;
      {
        std::unique_lock lock(jobs_mutex_);
        jobs_cv_.wait(lock, [&] { return jobs_stop_ || !jobs_.empty(); });
        if (jobs_stop_) return;
        job = std::move(jobs_.front());
        jobs_.pop_front();
      }
      try {
        job();
      } catch (const std::exception& e) {
        log::error("daemon: {}", e.what());
      }
    }
  });
}

Domains::~Domains() {
  {
    std::lock_guard lock(jobs_mutex_);
    jobs_stop_ = true;
  }
  jobs_cv_.notify_all();
  worker_.join();
  close_streams();
}

void Domains::post_job(std::function<void()> job) {
  {
    std::lock_guard lock(jobs_mutex_);
    jobs_.push_back(std::move(job));
  }
  jobs_cv_.notify_one();
}

void Domains::close_streams() {
  events_.close();
  std::lock_guard lock(table_mutex_);
  for (auto& [name, d] : table_) d->console->close();
}

std::shared_ptr<Domains::Domain> Domains::find(const std::string& name) {
  std::lock_guard lock(table_mutex_);
  auto it = table_.find(name);
  if (it == table_.end()) throw NotFoundError("no VM named '" + name + "'");
  return it->second;
}

void Domains::publish(const std::string& event, const Domain& d, const std::string& detail) {
  json message{{"event", event}, {"vm", d.name}, {"state", d.state}, {"reason", d.reason},
               {"timestamp", timestamp_now()}};
  if (!detail.empty()) message["detail"] = detail;
  events_.publish(message.dump(-1, ' ', false, json::error_handler_t::replace));
}

void Domains::set_state(Domain& d, const std::string& state, const std::string& reason) {
  store_.set_state(d.name, state, reason);
  d.state = state;
  d.reason = reason;
  d.changed.notify_all();
}

// ---- recovery ---------------------------------------------------------------------------------

void Domains::recover() {
  for (const VmRecord& record : store_.list()) {
    auto d = std::make_shared<Domain>(record.name);
    d->state = record.state;
    d->reason = record.reason;
    {
      std::lock_guard lock(table_mutex_);
      table_[record.name] = d;
    }
    if (record.state == kStateShutOff) continue;
    std::lock_guard op(d->op);
    try {
      adopt(d, record);
      log::info("daemon: adopted VM {} (VMM pid {})", record.name, record.pid);
    } catch (const std::exception& e) {
      log::warn("daemon: VM {} was {} but its VMM is gone: {}", record.name, record.state, e.what());
      std::lock_guard lock(d->mutex);
      set_state(*d, kStateShutOff, "crashed");
      publish("stopped", *d, "the VMM died while the daemon was down");
    }
  }
}

void Domains::adopt(const std::shared_ptr<Domain>& d, const VmRecord& record) {
  pid_t pid = static_cast<pid_t>(record.pid);
  if (pid <= 0 || record.control_path.empty()) throw Error("no VMM process recorded");
  // Same pid and same start time: the same process (pids are reused).
  if (process_start_time(pid) != record.pid_start_time || record.pid_start_time == 0) {
    throw Error("process " + std::to_string(pid) + " is gone");
  }
  UniqueFd pidfd = open_pidfd(pid);
  if (!pidfd) throw Error("process " + std::to_string(pid) + " is gone");
  try {
    auto control = control::ControlClient::connect(record.control_path, 3000ms);
    UniqueFd console = control::ControlClient::attach_console(record.control_path, 3000ms);
    json status = control.execute("query-status", json::object(), 3000ms);
    auto link = std::make_shared<VmmLink>(pid, std::move(pidfd), false, record.control_path,
                                          std::move(control), std::move(console));
    std::lock_guard lock(d->mutex);
    d->link = link;
    uint64_t generation = ++d->generation;
    std::string state = status.value("status", "") == "paused" ? kStatePaused : kStateRunning;
    std::string reason = state == record.state ? record.reason
                         : state == kStatePaused ? "user" : "unpaused";
    store_.set_running(d->name, state, reason, pid, record.pid_start_time, record.control_path);
    d->state = state;
    d->reason = reason;
    watch(d, link, generation);
  } catch (const std::exception& e) {
    // Ours (same pid, start time) but not answering: it cannot be managed, so it is stopped.
    pidfd_signal(pidfd.get(), SIGKILL);
    throw Error(std::string("its control socket does not answer (") + e.what() + "); killed it");
  }
}

// ---- definitions ------------------------------------------------------------------------------

json Domains::define(const json& document, const PeerCredentials& owner) {
  VmDefinition def = parse_definition(document);
  open_definition_files(def, owner);  // refuses what the owner could not open
  std::shared_ptr<Domain> d;
  {
    std::lock_guard lock(table_mutex_);
    store_.define(def.name, def.to_json(), owner);  // DuplicateError when the name is taken
    d = std::make_shared<Domain>(def.name);
    table_[def.name] = d;
  }
  std::lock_guard lock(d->mutex);
  publish("defined", *d);
  return info_of(*d);
}

void Domains::undefine(const std::string& name) {
  auto d = find(name);
  std::lock_guard op(d->op);
  std::lock_guard lock(d->mutex);
  if (d->removed) throw NotFoundError("no VM named '" + name + "'");
  if (d->link || d->state != kStateShutOff) {
    throw ConflictError("VM '" + name + "' is " + d->state + "; destroy or shut it down first");
  }
  {
    std::lock_guard table(table_mutex_);
    store_.undefine(name);
    table_.erase(name);
  }
  d->removed = true;
  publish("undefined", *d);
  d->console->close();
}

// ---- lifecycle --------------------------------------------------------------------------------

json Domains::start(const std::string& name, bool paused) {
  auto d = find(name);
  std::lock_guard op(d->op);
  start_locked(d, paused);
  std::lock_guard lock(d->mutex);
  return info_of(*d);
}

void Domains::start_locked(const std::shared_ptr<Domain>& d, bool paused) {
  {
    std::lock_guard lock(d->mutex);
    if (d->removed) throw NotFoundError("no VM named '" + d->name + "'");
    if (d->link) throw ConflictError("VM '" + d->name + "' is already " + d->state);
  }
  auto record = store_.get(d->name);
  if (!record) throw NotFoundError("no VM named '" + d->name + "'");

  auto fail = [&](const std::string& why) {
    std::lock_guard lock(d->mutex);
    set_state(*d, kStateShutOff, "failed to start");
    publish("stopped", *d, why);
    throw Error("VM '" + d->name + "' failed to start: " + why);
  };

  VmDefinition def;
  DefinitionFiles files;
  try {
    def = parse_definition(record->definition);  // the files may have gone since `define`
    files = open_definition_files(def, record->owner);  // or the owner may have lost them
  } catch (const DefinitionError& e) {
    fail(e.what());
  }

  std::string control_path = options_.state_dir + "/run/" + d->name + ".sock";
  std::string log_path = options_.state_dir + "/log/" + d->name + ".log";
  std::filesystem::remove(control_path);
  // The VMM writes a byte to this pipe once its control socket listens (`keel run --ready-fd`).
  ReadinessPipe ready;
  std::vector<std::string> args = vmm_arguments(def, control_path, log_path);
  args.insert(args.end(), {"--ready-fd", "3"});
  SpawnedProcess vmm = spawn_process(options_.vmm_binary, args, log_path, ready.write_end());
  ready.close_write_end();  // so a VMM that exits early shows as end of file too
  int64_t start_time = process_start_time(vmm.pid);

  // Until the supervisor watches it, the child is ours to kill and reap on failure.
  auto abandon = [&](const std::string& why) {
    pidfd_signal(vmm.pidfd.get(), SIGKILL);
    int status = 0;
    while (::waitpid(vmm.pid, &status, 0) < 0 && errno == EINTR) {
    }
    std::string log_tail = file_tail(log_path, 1024);
    fail(why + (log_tail.empty() ? "" : "; VMM log: " + log_tail));
  };
  auto exited = [&] {
    int status = 0;
    while (::waitpid(vmm.pid, &status, 0) < 0 && errno == EINTR) {
    }
    std::string log_tail = file_tail(log_path, 1024);
    fail("the VMM " + describe_exit(status) + (log_tail.empty() ? "" : ": " + log_tail));
  };

  // Wait for the readiness byte, watching the pidfd: a VMM that fails early (a bad kernel, no
  // /dev/kvm) exits instead of listening.
  auto deadline = Clock::now() + options_.start_timeout;
  switch (ready.wait(vmm.pidfd.get(), deadline)) {
    case ReadinessPipe::kReady: break;
    case ReadinessPipe::kExited: exited(); break;
    case ReadinessPipe::kTimeout: abandon("its control socket did not come up in time"); break;
  }
  std::optional<control::ControlClient> control;
  try {
    control = control::ControlClient::connect(control_path, left_until(deadline));
  } catch (const std::exception& e) {
    abandon(std::string("control socket: ") + e.what());
  }
  UniqueFd console;
  json status;
  try {
    console = control::ControlClient::attach_console(control_path, 5000ms);
    status = control->execute("query-status", json::object(), 5000ms);
  } catch (const std::exception& e) {
    abandon(std::string("control socket: ") + e.what());
  }
  if (status.value("status", "") != "paused") {
    abandon("the VMM did not start paused (status " + status.dump() + ")");
  }

  auto link = std::make_shared<VmmLink>(vmm.pid, std::move(vmm.pidfd), true, control_path,
                                        std::move(*control), std::move(console));
  {
    std::lock_guard lock(d->mutex);
    d->link = link;
    uint64_t generation = ++d->generation;
    d->destroy_requested = d->reset_seen = d->shutdown_seen = d->start_failed = false;
    // One transaction per start: the process and the state it is about to be in, recorded before
    // it runs, so a daemon that dies from here on adopts it (and asks it for its real state).
    // If `cont` fails the VMM is killed and the exit records "failed to start".
    std::string state = paused ? kStatePaused : kStateRunning;
    std::string reason = paused ? "user" : "booted";
    store_.set_running(d->name, state, reason, vmm.pid, start_time, control_path);
    d->state = state;
    d->reason = reason;
    d->changed.notify_all();
    watch(d, link, generation);  // from here on the supervisor reaps it
  }
  if (!paused) {
    try {
      link->execute("cont");
    } catch (const std::exception& e) {
      {
        std::lock_guard lock(d->mutex);
        d->start_failed = true;
      }
      link->signal(SIGKILL);
      std::unique_lock lock(d->mutex);
      d->changed.wait_for(lock, options_.stop_timeout, [&] { return d->link != link; });
      throw Error("VM '" + d->name + "' failed to start: " + e.what());
    }
  }
  std::lock_guard lock(d->mutex);
  if (d->link == link) publish("started", *d);
}

void Domains::watch(const std::shared_ptr<Domain>& d, std::shared_ptr<VmmLink> link,
                    uint64_t generation) {
  std::weak_ptr<Domain> weak = d;
  std::weak_ptr<ByteHistory> console = d->console;
  Supervisor::Callbacks callbacks;
  callbacks.on_event = [this, weak, generation](const json& event) {
    if (auto dd = weak.lock()) on_event(dd, generation, event);
  };
  callbacks.on_console = [console](std::string_view bytes) {
    if (auto c = console.lock()) c->append(bytes);
  };
  callbacks.on_exit = [this, weak, generation](int status) {
    if (auto dd = weak.lock()) on_exit(dd, generation, status);
  };
  supervisor_.watch(std::move(link), std::move(callbacks));
}

void Domains::on_event(const std::shared_ptr<Domain>& d, uint64_t generation, const json& event) {
  std::string name = event.value("event", "");
  json data = event.value("data", json::object());
  std::lock_guard lock(d->mutex);
  if (d->generation != generation || !d->link) return;
  try {
    // Published only as a change: `start` records the running state before its own `cont`, and
    // `suspend`/`resume` publish the change themselves if their event has not come yet.
    if (name == "STOP") {
      if (d->state == kStateRunning) {
        set_state(*d, kStatePaused, "user");
        publish("suspended", *d);
      }
    } else if (name == "RESUME") {
      if (d->state == kStatePaused) {
        set_state(*d, kStateRunning, "unpaused");
        publish("resumed", *d);
      }
    } else if (name == "SHUTDOWN") {
      std::string why = data.is_object() ? data.value("reason", "") : "";
      if (why.find("reset") != std::string::npos) {
        d->reset_seen = true;
      } else {
        d->shutdown_seen = true;
      }
      publish("shutdown", *d, why);
    } else if (name == "RESET") {
      d->reset_seen = true;
      publish("reset", *d);
    } else if (name == "POWERDOWN") {
      publish("powerdown", *d);
    }
  } catch (const std::exception& e) {
    log::error("daemon: VM {}: event {}: {}", d->name, name, e.what());
  }
}

void Domains::on_exit(const std::shared_ptr<Domain>& d, uint64_t generation, int wait_status) {
  bool restart = false;
  {
    std::lock_guard lock(d->mutex);
    if (d->generation != generation) return;
    d->link.reset();
    std::string reason;
    if (d->start_failed) {
      reason = "failed to start";
    } else if (d->destroy_requested) {
      reason = "destroyed";
    } else if (d->reset_seen) {
      restart = true;
    } else if (d->shutdown_seen) {
      reason = "shutdown";
    } else if (wait_status >= 0 && WIFEXITED(wait_status) && WEXITSTATUS(wait_status) == 0) {
      reason = "shutdown";
    } else {
      reason = "crashed";
    }
    try {
      if (restart) {
        publish("rebooting", *d);
      } else {
        set_state(*d, kStateShutOff, reason);
        publish("stopped", *d, "the VMM " + describe_exit(wait_status));
      }
    } catch (const std::exception& e) {
      log::error("daemon: VM {}: {}", d->name, e.what());
    }
    d->changed.notify_all();
  }
  if (restart) {
    // keel does not reset in place: a reset ends the VMM and the daemon boots a fresh one.
    std::weak_ptr<Domain> weak = d;
    post_job([this, weak] {
      auto dd = weak.lock();
      if (!dd) return;
      std::lock_guard op(dd->op);
      try {
        start_locked(dd, false);
      } catch (const ConflictError&) {
        // Someone started it meanwhile.
      }
    });
  }
}

std::shared_ptr<VmmLink> Domains::live_link(Domain& d, const char* verb) {
  if (d.removed) throw NotFoundError("no VM named '" + d.name + "'");
  if (!d.link) throw ConflictError("cannot " + std::string(verb) + " VM '" + d.name + "': it is " + d.state);
  return d.link;
}

void Domains::shutdown(const std::string& name) {
  auto d = find(name);
  std::lock_guard op(d->op);
  std::shared_ptr<VmmLink> link;
  {
    std::lock_guard lock(d->mutex);
    link = live_link(*d, "shut down");
    if (d->state == kStatePaused) {
      throw ConflictError("VM '" + name + "' is paused; resume it so the guest can shut down");
    }
  }
  link->execute("system_powerdown");
}

void Domains::reboot(const std::string& name) {
  auto d = find(name);
  std::lock_guard op(d->op);
  std::shared_ptr<VmmLink> link;
  {
    std::lock_guard lock(d->mutex);
    link = live_link(*d, "reboot");
    d->reset_seen = true;
  }
  link->execute("system_reset");
}

void Domains::destroy(const std::string& name) {
  auto d = find(name);
  std::lock_guard op(d->op);
  std::shared_ptr<VmmLink> link;
  {
    std::lock_guard lock(d->mutex);
    link = live_link(*d, "destroy");
    d->destroy_requested = true;
  }
  link->signal(SIGKILL);
  std::unique_lock lock(d->mutex);
  if (!d->changed.wait_for(lock, options_.stop_timeout, [&] { return d->link != link; })) {
    throw Error("VM '" + name + "': the VMM (pid " + std::to_string(link->pid()) +
                ") did not exit after SIGKILL");
  }
}

void Domains::suspend(const std::string& name) {
  auto d = find(name);
  std::lock_guard op(d->op);
  std::shared_ptr<VmmLink> link;
  {
    std::lock_guard lock(d->mutex);
    link = live_link(*d, "suspend");
    if (d->state == kStatePaused) throw ConflictError("VM '" + name + "' is already paused");
  }
  link->execute("stop");
  std::lock_guard lock(d->mutex);
  if (d->link == link && d->state != kStatePaused) {
    set_state(*d, kStatePaused, "user");
    publish("suspended", *d);
  }
}

void Domains::resume(const std::string& name) {
  auto d = find(name);
  std::lock_guard op(d->op);
  std::shared_ptr<VmmLink> link;
  {
    std::lock_guard lock(d->mutex);
    link = live_link(*d, "resume");
    if (d->state != kStatePaused) throw ConflictError("VM '" + name + "' is not paused");
  }
  link->execute("cont");
  std::lock_guard lock(d->mutex);
  if (d->link == link && d->state != kStateRunning) {
    set_state(*d, kStateRunning, "unpaused");
    publish("resumed", *d);
  }
}

// ---- queries ----------------------------------------------------------------------------------

json Domains::info_of(Domain& d) {
  auto record = store_.get(d.name);
  json j{{"name", d.name}, {"state", d.state}, {"reason", d.reason}};
  if (record) {
    j["definition"] = record->definition;
    j["defined_at"] = record->defined_at;
    j["state_changed_at"] = record->state_changed_at;
    if (record->pid > 0) {
      j["pid"] = record->pid;
      j["control_socket"] = record->control_path;
    }
  }
  j["log"] = options_.state_dir + "/log/" + d.name + ".log";
  return j;
}

json Domains::info(const std::string& name) {
  auto d = find(name);
  std::lock_guard lock(d->mutex);
  return info_of(*d);
}

json Domains::list() {
  std::vector<std::shared_ptr<Domain>> all;
  {
    std::lock_guard lock(table_mutex_);
    for (auto& [name, d] : table_) all.push_back(d);
  }
  json out = json::array();
  for (auto& d : all) {
    std::lock_guard lock(d->mutex);
    if (d->removed) continue;
    json entry{{"name", d->name}, {"state", d->state}, {"reason", d->reason}};
    if (d->link) entry["pid"] = d->link->pid();
    out.push_back(entry);
  }
  return out;
}

std::shared_ptr<ByteHistory> Domains::console(const std::string& name) {
  return find(name)->console;
}

void Domains::console_write(const std::string& name, std::string_view bytes) {
  auto d = find(name);
  std::shared_ptr<VmmLink> link;
  {
    std::lock_guard lock(d->mutex);
    link = live_link(*d, "write to the console of");
  }
  link->console_write(bytes);
}

}  // namespace keel::manager
