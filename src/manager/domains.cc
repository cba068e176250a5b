#include "manager/domains.h"


#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>

#include <filesystem>
#include <fstream>

#include "base/log.h"
#include "control/control_client.h"
#include "control/unix_socket.h"
#include "manager/domain.h"
#include "manager/vm_definition.h"
#include "engine/engine_factory.h"
#include "vm/vm_config.h"
#include "sandbox/cgroup.h"
#include "sandbox/confinement.h"

namespace keel::manager {

using nlohmann::json;
using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;


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
  enum Outcome { kReady, kFailed, kExited, kTimeout, kStopping };
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

  // kReady once "R" came; kFailed once "E" and the VMM's error came (message()); kExited when the
  // process ended. A pipe closed without a byte means the VMM is on its way out: then only its
  // exit (or the deadline) is waited for.
  // kStopping when `stop` (an eventfd) is signalled first.
  Outcome wait(int pidfd, Clock::time_point deadline, int stop) {
    bool pipe_open = true;
    for (;;) {
      pollfd p[3] = {{pidfd, POLLIN, 0}, {stop, POLLIN, 0}, {read_.get(), POLLIN, 0}};
      int r = ::poll(p, pipe_open ? 3 : 2, static_cast<int>(left_until(deadline).count()));
      if (r < 0 && errno == EINTR) continue;
      if (r < 0) throw_errno("poll");
      if (r == 0) return kTimeout;
      if (p[1].revents) return kStopping;
      if (pipe_open && p[2].revents) {
        char byte;
        ssize_t n = ::read(read_.get(), &byte, 1);
        if (n == 1 && byte == 'E') {
          read_message();
          return kFailed;
        }
        if (n == 1) return kReady;
        if (n < 0 && errno == EINTR) continue;
        pipe_open = false;
        continue;
      }
      return kExited;
    }
  }
  const std::string& message() const { return message_; }

 private:
  // The rest of an "E" report, up to the VMM's close (it writes it whole, at most 4000 bytes).
  void read_message() {
    char buf[4096];
    for (;;) {
      ssize_t n = ::read(read_.get(), buf, sizeof buf);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0 || message_.size() > 4096) break;
      message_.append(buf, static_cast<size_t>(n));
    }
    if (message_.empty()) message_ = "the VMM failed to start";
  }

  UniqueFd read_, write_;
  std::string message_;
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
        for (;;) {
          if (jobs_stop_) return;
          if (!jobs_.empty() && jobs_.begin()->first <= Clock::now()) break;
          if (jobs_.empty())
            jobs_cv_.wait(lock);
          else
            jobs_cv_.wait_until(lock, jobs_.begin()->first);
        }
        job = std::move(jobs_.begin()->second);
        jobs_.erase(jobs_.begin());
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
  stopping_.signal();  // an incoming migration still waiting for its stream gives up
  {
    std::lock_guard lock(incoming_mutex_);
    for (auto& t : incoming_threads_) t.join();
  }
  {
    std::lock_guard lock(jobs_mutex_);
    jobs_stop_ = true;
  }
  jobs_cv_.notify_all();
  worker_.join();
  close_streams();
}

void Domains::post_job(std::function<void()> job, std::chrono::milliseconds delay) {
  {
    std::lock_guard lock(jobs_mutex_);
    jobs_.emplace(Clock::now() + delay, std::move(job));
  }
  jobs_cv_.notify_one();
}

std::string Domains::path_of(const std::string& name, const char* what) const {
  std::string w = what;
  if (w == "control") return options_.state_dir + "/run/" + name + ".sock";
  if (w == "pidfile") return options_.state_dir + "/run/" + name + ".pid";
  if (w == "log") return options_.state_dir + "/log/" + name + ".log";
  if (w == "first-failure") return options_.state_dir + "/log/" + name + ".log.first-failure";
  if (w == "cgroup") return options_.cgroup_parent.empty() ? "" : options_.cgroup_parent + "/" + name;
  throw Error("unknown path kind " + w);
}

// For the crash-safety tests: the daemon dies here, as a power cut or an OOM kill would kill it.
// Each VM's VMM confines itself to a uid of its own (keel run --sandbox-uid): a block above the
// one `keel run` uses alone, indexed by a hash of the state directory and the VM's name.
uid_t Domains::vmm_uid(const std::string& name) const {
  uint32_t h = 2166136261u;
  for (unsigned char c : options_.state_dir + "/" + name) h = (h ^ c) * 16777619u;
  return sandbox::kVmmIdBase + 0x10000 + (h & 0xFFFF);
}

void Domains::kill_point(int point) const {
  if (options_.test_kill_point == point) ::kill(::getpid(), SIGKILL);
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
  // Every lifecycle change and failure, with the VM's name, in the daemon's log too.
  std::string line = "VM '" + d.name + "' " + event + ": " + d.state + " (" + d.reason + ")" +
                     (detail.empty() ? "" : "; " + detail);
  if (d.reason == "failed to start" || d.reason == "crashed" || d.reason == "panicked")
    log::warn("{}", line);
  else
    log::info("{}", line);
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
    std::lock_guard op(d->op);
    recover_one(d, record);
  }
  // Cgroups of VMs that are no longer defined: nothing there may run.
  if (!options_.cgroup_parent.empty()) {
    std::error_code ec;
    for (const auto& entry : std::filesystem::directory_iterator(options_.cgroup_parent, ec)) {
      if (!entry.is_directory()) continue;
      std::string name = entry.path().filename().string();
      std::lock_guard lock(table_mutex_);
      if (table_.count(name)) continue;
      sandbox::Cgroup stray(entry.path().string());
      if (!stray.pids().empty()) {
        log::warn("daemon: killing the processes of {} (no such VM)", stray.path());
        stray.kill();
      }
    }
  }
}

// One VM at daemon start. Its VMM is found through the store (a start that was recorded), the
// pidfile (a VMM spawned but perhaps never recorded) and its cgroup (anything else a start
// left); the recorded one is adopted if it still answers, everything else is killed.
void Domains::recover_one(const std::shared_ptr<Domain>& d, const VmRecord& record) {
  std::string pidfile = path_of(record.name, "pidfile");
  std::optional<VmmPidfile> spawned = read_pidfile(pidfile);
  pid_t adopted = 0;
  if (record.state != kStateShutOff) {
    try {
      adopt(d, record, spawned && spawned->pid == record.pid ? spawned->token : std::string());
      adopted = static_cast<pid_t>(record.pid);
      log::info("daemon: adopted VM {} (VMM pid {})", record.name, record.pid);
    } catch (const std::exception& e) {
      log::warn("daemon: VM {} was {} but its VMM is gone: {}", record.name, record.state, e.what());
      std::lock_guard lock(d->mutex);
      set_state(*d, kStateShutOff, "crashed");
      publish("stopped", *d, "the VMM died while the daemon was down");
    }
  }
  // A VMM spawned by a start the daemon did not live to record: nobody asked for it to run on.
  if (spawned && spawned->pid != adopted && spawned->start_time != 0 &&
      process_start_time(spawned->pid) == spawned->start_time) {
    if (UniqueFd pidfd = open_pidfd(spawned->pid)) {
      log::warn("daemon: VM {}: killing VMM pid {} of a start that was never recorded",
                record.name, spawned->pid);
      pidfd_signal(pidfd.get(), SIGKILL);
      pollfd p{pidfd.get(), POLLIN, 0};
      ::poll(&p, 1, static_cast<int>(options_.stop_timeout.count()));
    }
  }
  if (!adopted) std::filesystem::remove(pidfile);
  std::string cgroup_path = path_of(record.name, "cgroup");
  if (!cgroup_path.empty()) {
    sandbox::Cgroup cgroup(cgroup_path);
    for (pid_t pid : cgroup.pids()) {
      if (pid == adopted) continue;
      log::warn("daemon: VM {}: killing pid {} left in its cgroup", record.name, pid);
      ::kill(pid, SIGKILL);
    }
    if (!adopted) cgroup.remove();
  }
}

void Domains::adopt(const std::shared_ptr<Domain>& d, const VmRecord& record,
                    const std::string& token) {
  pid_t pid = static_cast<pid_t>(record.pid);
  if (pid <= 0 || record.control_path.empty()) throw Error("no VMM process recorded");
  // Same pid and same start time: the same process (pids are reused).
  if (process_start_time(pid) != record.pid_start_time || record.pid_start_time == 0) {
    throw Error("process " + std::to_string(pid) + " is gone");
  }
  UniqueFd pidfd = open_pidfd(pid);
  if (!pidfd) throw Error("process " + std::to_string(pid) + " is gone");
  try {
    auto control = control::ControlClient::connect(record.control_path, 3000ms, token);
    UniqueFd console = control::ControlClient::attach_console(record.control_path, 3000ms, token);
    json status = control.execute("query-status", json::object(), 3000ms);
    auto link = std::make_shared<VmmLink>(pid, std::move(pidfd), false, record.control_path,
                                          std::move(control), std::move(console));
    std::lock_guard lock(d->mutex);
    d->link = link;
    d->started_at = Clock::now();
    uint64_t generation = ++d->generation;
    std::string qmp_status = status.value("status", "");
    std::string state = qmp_status == "guest-panicked" ? kStateCrashed
                        : qmp_status == "paused"       ? kStatePaused
                                                       : kStateRunning;
    std::string reason = state == record.state    ? record.reason
                         : state == kStateCrashed ? "panicked"
                         : state == kStatePaused  ? "user"
                                                  : "unpaused";
    d->panicked = state == kStateCrashed;
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

// What only the daemon can check before a start: the host's engine. A stock kernel on a KVM that
// cannot run one would hang, and `auto` resolves to an engine that must run `vcpus`.
void Domains::check_host(const VmDefinition& def) {
  if (def.accel == "emu" || (def.accel == "kvm" && def.kernel.empty())) return;
  std::call_once(probe_once_, [this] { probe_ = probe_kvm(); });
  if (def.accel == "kvm" && !probe_.can_run_stock_kernel())
    throw DefinitionError("field 'accel': " + probe_.verdict() + "; \"emu\" or \"auto\" runs it");
  if (def.accel == "auto") {
    Accel engine = choose_engine(Accel::kAuto, probe_).accel;
    try {
      validate_vcpu_count(def.vcpus, engine);
    } catch (const UsageError& e) {
      throw DefinitionError(std::string("field 'vcpus': ") + e.what() + " (\"auto\" chooses " +
                            to_string(engine) + " on this host)");
    }
  }
}

json Domains::define(const json& document, const PeerCredentials& owner) {
  VmDefinition def = parse_definition(document);
  check_host(def);
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

std::pair<bool, json> Domains::put(const std::string& name, json document,
                                   const PeerCredentials& owner) {
  if (!document.is_object()) throw DefinitionError("the definition must be a JSON object");
  if (!document.contains("name")) document["name"] = name;
  if (document["name"] != name)
    throw DefinitionError("field 'name': '" + document["name"].dump() + "' is not '" + name +
                          "', the VM this request names");
  std::shared_ptr<Domain> d;
  {
    std::lock_guard lock(table_mutex_);
    if (auto it = table_.find(name); it != table_.end()) d = it->second;
  }
  if (!d) {
    try {
      return {true, define(document, owner)};
    } catch (const DuplicateError&) {
      std::lock_guard lock(table_mutex_);  // defined meanwhile: replace it as below
      d = table_.at(name);
    }
  }
  VmDefinition def = parse_definition(document);
  check_host(def);
  open_definition_files(def, owner);
  std::lock_guard op(d->op);
  std::lock_guard lock(d->mutex);
  if (d->removed) throw NotFoundError("no VM named '" + name + "'");
  auto record = store_.get(name);
  if (!record) throw NotFoundError("no VM named '" + name + "'");
  if (d->link || d->restart_pending) {
    // While it runs, what needs no restart may change: the rest would not match the VMM.
    std::string blocking;
    for (const std::string& field : def.changed_fields(record->definition))
      if (field != "autostart" && field != "on_crash") blocking += (blocking.empty() ? "" : ", ") + field;
    if (!blocking.empty())
      throw ConflictError("VM '" + name + "' is " + d->state + "; shut it down to change " +
                          blocking);
  }
  store_.redefine(name, def.to_json(), owner);
  publish("defined", *d, "definition replaced");
  return {false, info_of(*d)};
}

void Domains::undefine(const std::string& name) {
  auto d = find(name);
  std::lock_guard op(d->op);
  undefine_locked(d);
}

void Domains::undefine_locked(const std::shared_ptr<Domain>& d) {
  const std::string& name = d->name;
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
  {
    std::lock_guard lock(d->mutex);
    d->restart_pending = false;  // a start by hand replaces a pending crash-loop restart
  }
  start_locked(d, paused);
  std::lock_guard lock(d->mutex);
  return info_of(*d);
}

// A start, crash-safe: the VMM is recorded (pidfile) before it can run, and recorded in the store
// before it is let run the guest; every failure on the way kills it. The numbered kill points are
// where the tests SIGKILL the daemon (DomainsOptions::test_kill_point).
void Domains::start_locked(const std::shared_ptr<Domain>& d, bool paused, const StartFrom* from_ptr) {
  const StartFrom from = from_ptr ? *from_ptr : StartFrom{};
  bool first_failure_log = false;
  {
    std::lock_guard lock(d->mutex);
    if (d->removed) throw NotFoundError("no VM named '" + d->name + "'");
    if (d->link) throw ConflictError("VM '" + d->name + "' is already " + d->state);
    first_failure_log = std::exchange(d->keep_first_failure_log, false);
    // A new run, a new console (a restart after a reset or reboot keeps the one that is open).
    if (d->console->closed()) d->console = std::make_shared<ByteHistory>();
  }
  auto record = store_.get(d->name);
  if (!record) throw NotFoundError("no VM named '" + d->name + "'");

  const std::string control_path = path_of(d->name, "control");
  const std::string log_path = path_of(d->name, "log");
  const std::string pidfile = path_of(d->name, "pidfile");
  const std::string cgroup_path = path_of(d->name, "cgroup");

  // The descriptors a restoring VMM reads are named by their paths in what it reports.
  std::vector<std::pair<std::string, std::string>> renames;
  auto fail = [&](std::string why) {
    for (const auto& [from_name, to_name] : renames)
      for (size_t at; (at = why.find(from_name)) != std::string::npos;) why.replace(at, from_name.size(), to_name);
    std::filesystem::remove(pidfile);
    if (!cgroup_path.empty()) sandbox::Cgroup(cgroup_path).remove();
    std::lock_guard lock(d->mutex);
    try {
      set_state(*d, kStateShutOff, "failed to start");
    } catch (const std::exception& e) {
      // The store may be what failed: memory says what happened, the store catches up later.
      log::error("daemon: VM {}: {}", d->name, e.what());
      d->state = kStateShutOff;
      d->reason = "failed to start";
    }
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

  // The VMM gets the files the daemon opened as the definition's owner (fds 4 up), never the
  // paths: what it opens is what was checked.
  SpawnOptions spawn;
  VmDefinition passed = def;
  int next_fd = 4;
  auto pass = [&](UniqueFd& fd, std::string& path) {
    if (!fd) return;
    spawn.fds.emplace_back(fd.get(), next_fd);
    path = "/proc/self/fd/" + std::to_string(next_fd++);
  };
  pass(files.kernel, passed.kernel);
  pass(files.initrd, passed.initrd);
  pass(files.test_guest, passed.test_guest);
  for (size_t i = 0; i < files.disks.size(); ++i) pass(files.disks[i], passed.disks[i].path);

  std::filesystem::remove(control_path);
  // The VMM writes a byte to this pipe once its control socket listens (`keel run --ready-fd`).
  ReadinessPipe ready;
  spawn.fds.emplace_back(ready.write_end(), 3);
  std::string token = random_token();
  spawn.env.push_back("KEEL_CONTROL_TOKEN=" + token);
  if (!cgroup_path.empty()) {
    std::vector<std::string> notes;
    sandbox::CgroupLimits limits;
    // Guest RAM plus what the VMM itself needs (emu's code caches, device buffers, libraries).
    limits.memory_max = (def.memory_mib << 20) + std::max<uint64_t>(256ull << 20, (def.memory_mib << 20) / 4);
    limits.pids_max = 64 + def.vcpus;
    try {
      sandbox::Cgroup::create(options_.cgroup_parent, d->name, limits, notes);
      spawn.cgroup = cgroup_path;
    } catch (const std::exception& e) {
      notes.push_back(e.what());
    }
    for (const auto& note : notes) log::info("daemon: VM {}: {}", d->name, note);
  }
  std::vector<std::string> args = vmm_arguments(passed, control_path, log_path);
  std::string started_reason = "booted";
  if (from.state_fd >= 0 || from.listener >= 0) {
    // The VM the VMM continues brings its configuration; its files keep the descriptor numbers
    // they had when it was saved or sent (a definition opens them in one order), the snapshot's
    // files or the listening socket come after them.
    // The VMM is told the VM as the definition says, and refuses a snapshot or stream that brings
    // another (snapshot::check_same_vm): what it opens is what the daemon checked.
    if (from.state_fd >= 0) {
      spawn.fds.emplace_back(from.state_fd, next_fd);
      spawn.fds.emplace_back(from.memory_fd, next_fd + 1);
      std::string state_path = "/proc/self/fd/" + std::to_string(next_fd);
      std::string memory_path = "/proc/self/fd/" + std::to_string(next_fd + 1);
      args.insert(args.end(), {"--restore-files", state_path + "," + memory_path});
      renames = {{state_path, from.state_name}, {memory_path, from.memory_name}};
      started_reason = "restored";
    } else {
      spawn.fds.emplace_back(from.listener, next_fd);
      args.insert(args.end(), {"--incoming", "fd:" + std::to_string(next_fd)});
      started_reason = "migrated";
    }
  }
  args.insert(args.end(), {"--ready-fd", "3", "--sandbox-uid", std::to_string(vmm_uid(d->name))});
  args.insert(args.end(), options_.vmm_extra_args.begin(), options_.vmm_extra_args.end());
  SpawnedProcess vmm = spawn_process(options_.vmm_binary, args, log_path, spawn,
                                     first_failure_log ? path_of(d->name, "first-failure") : "");
  ready.close_write_end();  // so a VMM that exits early shows as end of file too
  files = DefinitionFiles{};
  kill_point(1);

  // Until the supervisor watches it, the child is ours to kill and reap on failure.
  auto reap = [&] {
    int status = 0;
    while (::waitpid(vmm.pid, &status, 0) < 0 && errno == EINTR) {
    }
    return status;
  };
  auto abandon = [&](const std::string& why) {
    pidfd_signal(vmm.pidfd.get(), SIGKILL);
    reap();
    std::string log_tail = file_tail(log_path, 1024);
    fail(why + (log_tail.empty() ? "" : "; VMM log: " + log_tail));
  };
  auto exited = [&] {
    int status = reap();
    std::string log_tail = file_tail(log_path, 1024);
    fail("the VMM " + describe_exit(status) + (log_tail.empty() ? "" : ": " + log_tail));
  };

  // Recorded before it can run: a daemon that dies from here on finds it through the pidfile.
  int64_t start_time = process_start_time(vmm.pid);
  try {
    write_pidfile(pidfile, VmmPidfile{vmm.pid, start_time, token});
  } catch (const std::exception& e) {
    abandon(std::string("cannot record the VMM: ") + e.what());
  }
  kill_point(2);
  try {
    vmm.go();
  } catch (const std::exception& e) {
    exited();
  }
  kill_point(3);

  // Wait for the readiness byte, watching the pidfd: a VMM that fails early (a bad kernel, no
  // /dev/kvm) exits instead of listening.
  auto deadline = Clock::now() + (from.timeout.count() > 0 ? from.timeout : options_.start_timeout);
  switch (ready.wait(vmm.pidfd.get(), deadline, stopping_.fd())) {
    case ReadinessPipe::kReady: break;
    case ReadinessPipe::kFailed:  // the VMM's own message, without a log meant for a terminal
      reap();
      fail(ready.message());
      break;
    case ReadinessPipe::kExited: exited(); break;
    case ReadinessPipe::kTimeout: abandon("its control socket did not come up in time"); break;
    case ReadinessPipe::kStopping: abandon("the daemon is stopping"); break;
  }
  kill_point(4);
  std::optional<control::ControlClient> control;
  try {
    control = control::ControlClient::connect(control_path, left_until(deadline), token);
  } catch (const std::exception& e) {
    abandon(std::string("control socket: ") + e.what());
  }
  kill_point(5);
  UniqueFd console;
  json status;
  try {
    console = control::ControlClient::attach_console(control_path, 5000ms, token);
    status = control->execute("query-status", json::object(), 5000ms);
  } catch (const std::exception& e) {
    abandon(std::string("control socket: ") + e.what());
  }
  if (status.value("status", "") != "paused") {
    abandon("the VMM did not start paused (status " + status.dump() + ")");
  }
  kill_point(6);

  // One transaction per start: the process and the state it is about to be in, recorded before
  // it runs, so a daemon that dies from here on adopts it (and asks it for its real state). A
  // store that cannot record it (a full disk) ends the start: an unrecorded VMM must not run.
  std::string state = paused ? kStatePaused : kStateRunning;
  std::string reason = paused ? "user" : started_reason;
  try {
    if (options_.test_fail_start_record) throw Error("store: database or disk is full (injected)");
    if (!from.location.is_null()) store_.set_location(d->name, from.location);
    store_.set_running(d->name, state, reason, vmm.pid, start_time, control_path);
  } catch (const std::exception& e) {
    abandon(std::string("cannot record the start: ") + e.what());
  }
  kill_point(7);
  auto link = std::make_shared<VmmLink>(vmm.pid, std::move(vmm.pidfd), true, control_path,
                                        std::move(*control), std::move(console));
  {
    std::lock_guard lock(d->mutex);
    d->link = link;
    uint64_t generation = ++d->generation;
    d->destroy_requested = d->reset_seen = d->guest_reset = d->shutdown_seen = d->start_failed =
        d->reboot_requested = d->panicked = d->saved = false;
    d->internal_stops = 0;
    d->migration.clear();
    d->state = state;
    d->reason = reason;
    d->started_at = Clock::now();
    d->changed.notify_all();
    // Said now, before the guest runs: a guest that resets at once would otherwise end before
    // the start returns, and its start would never be announced (its reset and restart would).
    publish("started", *d);
    watch(d, link, generation);  // from here on the supervisor reaps it
  }
  kill_point(8);
  // If `cont` fails the VMM is killed and the exit records "failed to start".
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
  kill_point(9);
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
    if ((name == "STOP" || name == "RESUME") && d->internal_stops > 0) {
      --d->internal_stops;
    } else if (name == "STOP") {
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
        d->guest_reset = d->guest_reset || why == "guest-reset";
      } else {
        d->shutdown_seen = true;
      }
      publish("shutdown", *d, why);
    } else if (name == "RESET") {
      d->reset_seen = true;
      d->guest_reset = d->guest_reset || (data.is_object() && data.value("guest", false));
      publish("reset", *d);
    } else if (name == "POWERDOWN") {
      publish("powerdown", *d);
    } else if (name == "MIGRATION") {
      d->migration = data.is_object() ? data.value("status", "") : "";
      d->changed.notify_all();
    } else if (name == "GUEST_PANICKED") {
      // The VMM paused the guest (keel run --on-panic pause); on_crash decides what follows.
      d->panicked = true;
      std::string action = on_crash(d->name);
      set_state(*d, kStateCrashed, "panicked");
      publish("crashed", *d, "the guest panicked; on_crash: " + action);
      if (action != "preserve") d->link->signal(SIGKILL);  // destroy, or restart after the exit
    }
  } catch (const std::exception& e) {
    log::error("daemon: VM {}: event {}: {}", d->name, name, e.what());
  }
}

void Domains::on_exit(const std::shared_ptr<Domain>& d, uint64_t generation, int wait_status) {
  std::chrono::milliseconds delay{-1};  // >= 0: restart after this long
  uint64_t ticket = 0;
  {
    std::lock_guard lock(d->mutex);
    if (d->generation != generation) return;
    d->link.reset();
    std::filesystem::remove(path_of(d->name, "pidfile"));
    std::filesystem::remove(path_of(d->name, "control"));  // a confined VMM cannot
    if (std::string cgroup = path_of(d->name, "cgroup"); !cgroup.empty()) {
      sandbox::Cgroup(cgroup).kill();  // nothing of this VMM outlives it
      sandbox::Cgroup(cgroup).remove();
    }
    std::string reason;
    if (d->start_failed) {
      reason = "failed to start";
    } else if (d->saved) {
      reason = "saved";
    } else if (d->migration == "completed") {
      reason = "migrated";
      try {  // recorded before the state, so whoever sees it shut off sees where it went
        store_.set_location(d->name, json{{"migrated_to", d->migrating_to},
                                          {"at", static_cast<int64_t>(::time(nullptr))}});
      } catch (const std::exception& e) {
        log::error("daemon: VM {}: {}", d->name, e.what());
      }
    } else if (d->destroy_requested) {
      reason = "destroyed";
    } else if (d->panicked && on_crash(d->name) != "restart") {
      reason = "crashed";
    } else if (d->reset_seen || d->panicked || (d->reboot_requested && d->shutdown_seen)) {
      // A panic with on_crash "restart" is a guest failure: a quick one backs off as a reset does.
      d->guest_reset = d->guest_reset || d->panicked;
      // A guest that resets soon after it started is in a crash loop: its restarts back off
      // (1 s, doubling, at most 60 s) and the log of the loop's first failure is kept.
      bool quick = d->guest_reset && Clock::now() - d->started_at < options_.stable_after;
      if (!quick) {
        d->backoff = std::chrono::milliseconds(0);
        delay = std::chrono::milliseconds(0);
      } else {
        d->keep_first_failure_log = d->backoff.count() == 0;
        d->backoff = d->backoff.count() == 0 ? options_.backoff_first
                                             : std::min(d->backoff * 2, options_.backoff_max);
        delay = d->backoff;
      }
      ticket = ++d->restart_ticket;
      d->restart_pending = true;
    } else if (d->shutdown_seen) {
      reason = "shutdown";
    } else if (wait_status >= 0 && WIFEXITED(wait_status) && WEXITSTATUS(wait_status) == 0) {
      reason = "shutdown";
    } else {
      reason = "crashed";
    }
    try {
      if (delay.count() > 0) {
        set_state(*d, kStateShutOff, "restarting");
        publish("rebooting", *d, std::string(d->panicked ? "the guest panicked " : "the guest reset ") +
                                     std::to_string(std::chrono::duration_cast<std::chrono::milliseconds>(
                                                        Clock::now() - d->started_at).count()) +
                                     " ms after it started; restarting in " +
                                     std::to_string(delay.count()) + " ms");
      } else if (delay.count() == 0) {
        publish("rebooting", *d);
      } else {
        set_state(*d, kStateShutOff, reason);
        publish("stopped", *d, "the VMM " + describe_exit(wait_status));
      }
    } catch (const std::exception& e) {
      log::error("daemon: VM {}: {}", d->name, e.what());
    }
    if (delay.count() < 0) d->console->close();  // console sessions end with the VM
    d->changed.notify_all();
  }
  if (delay.count() >= 0) {
    // keel does not reset in place: a reset ends the VMM and the daemon boots a fresh one.
    std::weak_ptr<Domain> weak = d;
    post_job([this, weak, ticket] {
      auto dd = weak.lock();
      if (!dd) return;
      std::lock_guard op(dd->op);
      {
        std::lock_guard lock(dd->mutex);
        if (!dd->restart_pending || dd->restart_ticket != ticket || dd->removed) return;
        dd->restart_pending = false;
      }
      try {
        start_locked(dd, false);
      } catch (const ConflictError&) {
        // Someone started it meanwhile.
      }
    }, delay);
  }
}

// A VM waiting for a crash-loop restart has no VMM: destroy or shutdown cancel the restart.
bool Domains::cancel_restart(Domain& d, const std::string& reason) {
  std::lock_guard lock(d.mutex);
  if (d.link || !d.restart_pending) return false;
  d.restart_pending = false;
  d.backoff = std::chrono::milliseconds(0);
  set_state(d, kStateShutOff, reason);
  publish("stopped", d, "the pending restart was cancelled");
  d.console->close();
  return true;
}

std::shared_ptr<VmmLink> Domains::live_link(Domain& d, const char* verb) {
  if (d.removed) throw NotFoundError("no VM named '" + d.name + "'");
  if (!d.link) throw ConflictError("cannot " + std::string(verb) + " VM '" + d.name + "': it is " + d.state);
  return d.link;
}

void Domains::shutdown(const std::string& name) { press_power_button(name, false); }

// As libvirt's QEMU driver: the guest is asked (ACPI power button) and shuts down in order,
// then the daemon boots it again instead of leaving it off. A guest that ignores the button
// goes on running; `reset` is the hard way.
void Domains::reboot(const std::string& name) { press_power_button(name, true); }

void Domains::press_power_button(const std::string& name, bool reboot) {
  auto d = find(name);
  std::lock_guard op(d->op);
  if (!reboot && cancel_restart(*d, "shutdown")) return;
  const std::string what = reboot ? "reboot" : "shut down";
  std::shared_ptr<VmmLink> link;
  {
    std::lock_guard lock(d->mutex);
    link = live_link(*d, what.c_str());
    if (d->state == kStatePaused)
      throw ConflictError("VM '" + name + "' is paused; resume it so the guest can " + what);
    if (d->state == kStateCrashed)
      throw ConflictError("VM '" + name + "' crashed (panicked); reset or destroy it");
    d->reboot_requested = reboot;  // a shutdown after a reboot request shuts it down
  }
  link->execute("system_powerdown");
}

void Domains::reset(const std::string& name) {
  auto d = find(name);
  std::lock_guard op(d->op);
  std::shared_ptr<VmmLink> link;
  {
    std::lock_guard lock(d->mutex);
    link = live_link(*d, "reset");
    d->reset_seen = true;
  }
  link->execute("system_reset");
}

void Domains::destroy(const std::string& name) {
  auto d = find(name);
  std::lock_guard op(d->op);
  if (cancel_restart(*d, "destroyed")) return;
  std::shared_ptr<VmmLink> link;
  {
    std::lock_guard lock(d->mutex);
    link = live_link(*d, "destroy");
    d->destroy_requested = true;
  }
  // As libvirt: SIGTERM lets the VMM end in order (its disks' last writes, its log line); one
  // that is still there after the grace period gets SIGKILL.
  link->signal(SIGTERM);
  std::unique_lock lock(d->mutex);
  if (d->changed.wait_for(lock, options_.destroy_grace, [&] { return d->link != link; })) return;
  log::warn("VM '{}': the VMM (pid {}) did not end within {} ms of SIGTERM; sending SIGKILL", name,
            link->pid(), options_.destroy_grace.count());
  link->signal(SIGKILL);
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
    if (d->state == kStateCrashed)
      throw ConflictError("VM '" + name + "' crashed (panicked); reset or destroy it");
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
    if (!record->location.empty()) j["location"] = record->location;
    j["defined_at"] = record->defined_at;
    j["state_changed_at"] = record->state_changed_at;
    if (record->pid > 0) {
      j["pid"] = record->pid;
      j["control_socket"] = record->control_path;
    }
  }
  j["log"] = path_of(d.name, "log");
  if (std::filesystem::exists(path_of(d.name, "first-failure")))
    j["first_failure_log"] = path_of(d.name, "first-failure");
  if (d.restart_pending) j["restart_pending"] = true;
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

json Domains::query_vmm(const std::string& name, const std::string& command) {
  auto d = find(name);
  std::shared_ptr<VmmLink> link;
  {
    std::lock_guard lock(d->mutex);
    link = d->link;
  }
  if (!link) return nullptr;
  return link->execute(command, json::object(), std::chrono::seconds(5));
}

std::shared_ptr<ByteHistory> Domains::console(const std::string& name, bool history) {
  auto d = find(name);
  std::lock_guard lock(d->mutex);
  if (!d->link && !history) throw ConflictError("domain '" + name + "' is not running (" + d->state + ")");
  return d->console;
}

std::string Domains::on_crash(const std::string& name) {
  auto record = store_.get(name);
  if (!record) return "destroy";
  return record->definition.value("on_crash", "destroy");
}

// libvirt starts autostart domains once per host boot, not at every daemon start: a VM shut down
// by hand stays down when the daemon restarts. The boot is told by the kernel's boot id.
void Domains::autostart() {
  std::string boot_id;
  std::ifstream("/proc/sys/kernel/random/boot_id") >> boot_id;
  std::string marker = options_.state_dir + "/autostarted";
  std::string last;
  std::ifstream(marker) >> last;
  if (!boot_id.empty() && last == boot_id) return;
  std::ofstream(marker, std::ios::trunc) << boot_id << "\n";
  std::vector<std::string> names;
  for (const VmRecord& record : store_.list())
    if (record.definition.value("autostart", false) && record.state == kStateShutOff)
      names.push_back(record.name);
  for (const std::string& name : names) {
    log::info("VM '{}': autostart", name);
    post_job([this, name] {
      try {
        start(name, false);
      } catch (const std::exception& e) {
        log::error("VM '{}': autostart failed: {}", name, e.what());
      }
    });
  }
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
