// VM state through the daemon (domains.h): save, snapshot, restore and live migration to
// another keel daemon, as virsh save/restore/snapshot/migrate.
//
// The VMMs are confined: they open no file and no socket. The daemon opens the snapshot's files
// as the user who asked (so a user saves only where they may write and restores only what they
// may read) and hands the descriptors over on the control socket (getfd); a restoring VMM gets
// them as inherited descriptors. A migration's source daemon connects to the address the
// target daemon's VMM listens on and passes the connected socket; the target daemon passes its
// VMM the listening socket (keel run --incoming fd:N).
//
// A save directory holds the VMM's two files (vm/snapshot.h: "state", "memory") and "vm.json":
// the VM's name and definition, which `restore` defines again. Files are written under ".tmp"
// names and renamed into place, the memory file first, so a failed save leaves an older save in
// the directory intact.
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <arpa/inet.h>

#include <cerrno>
#include <csignal>
#include <cstring>
#include <filesystem>

#include "base/error.h"
#include "base/log.h"
#include "control/control_client.h"
#include "manager/api_client.h"
#include "manager/domain.h"
#include "manager/domains.h"
#include "manager/peer.h"
#include "manager/vmm_process.h"
#include "vm/migration.h"

namespace keel::manager {

using nlohmann::json;
using Clock = std::chrono::steady_clock;

namespace {

constexpr const char* kVmFile = "vm.json";
constexpr size_t kMaxVmFile = 1 << 20;

json timestamp() { return static_cast<int64_t>(::time(nullptr)); }

std::string join(const std::string& dir, const char* file) { return dir + "/" + file; }

// Opens DIR's file `name` as `who`, for reading or created (mode 0600, replacing what is there).
UniqueFd open_in(const PeerCredentials& who, const std::string& dir, const std::string& name,
                 bool create) {
  std::string path = dir + "/" + name;
  UniqueFd fd = create ? open_as(who, path, O_RDWR | O_CREAT | O_TRUNC | O_NOFOLLOW, 0600)
                       : open_as(who, path, O_RDONLY | O_NOFOLLOW);
  if (!fd)
    throw Error("uid " + std::to_string(who.uid) + " cannot " + (create ? "create '" : "open '") +
                path + "': " + std::strerror(errno));
  if (!create) {
    struct stat st {};
    if (::fstat(fd.get(), &st) != 0 || !S_ISREG(st.st_mode))
      throw Error("'" + path + "' is not a regular file");
  }
  return fd;
}

void rename_in(const PeerCredentials& who, int dirfd, const std::string& dir, const std::string& from,
               const std::string& to) {
  if (!renameat_as(who, dirfd, from, to)) throw_errno("rename " + dir + "/" + from);
}

void write_whole(int fd, const std::string& text, const std::string& what) {
  size_t done = 0;
  while (done < text.size()) {
    ssize_t n = ::write(fd, text.data() + done, text.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) throw_errno("write " + what);
    done += static_cast<size_t>(n);
  }
  if (::fsync(fd) != 0) throw_errno("fsync " + what);
}

std::string read_whole(int fd, const std::string& what) {
  std::string out;
  char buf[8192];
  for (;;) {
    ssize_t n = ::read(fd, buf, sizeof buf);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) throw_errno("read " + what);
    if (n == 0) return out;
    out.append(buf, static_cast<size_t>(n));
    if (out.size() > kMaxVmFile) throw Error(what + " is larger than " + std::to_string(kMaxVmFile) + " bytes");
  }
}

std::string absolute_dir(const std::string& dir) {
  if (dir.empty() || dir[0] != '/') throw UsageError("field 'dir': '" + dir + "' is not an absolute path");
  if (dir.size() > 4000) throw UsageError("field 'dir': longer than 4000 bytes");
  return dir;
}

}  // namespace

void Domains::quit_for(const std::shared_ptr<Domain>& d, const std::shared_ptr<VmmLink>& link,
                       const char* why) {
  try {
    link->execute("quit");
  } catch (const std::exception& e) {
    // The VMM may have ended before it answered: its exit is what is waited for.
    log::info("daemon: VM {}: quit after {}: {}", d->name, why, e.what());
  }
  std::unique_lock lock(d->mutex);
  if (!d->changed.wait_for(lock, options_.stop_timeout, [&] { return d->link != link; })) {
    link->signal(SIGKILL);
    d->changed.wait_for(lock, options_.stop_timeout, [&] { return d->link != link; });
  }
}

json Domains::save(const std::string& name, const std::string& dir_arg, const PeerCredentials& who,
                   bool keep_running) {
  const std::string dir = absolute_dir(dir_arg);
  const char* verb = keep_running ? "snapshot" : "save";
  auto d = find(name);
  std::lock_guard op(d->op);
  std::shared_ptr<VmmLink> link;
  {
    std::lock_guard lock(d->mutex);
    link = live_link(*d, verb);
    if (d->state == kStateCrashed)
      throw ConflictError("VM '" + name + "' crashed (panicked); destroy or reset it first");
    // A running VM is paused to be saved (STOP) and, for a snapshot, resumed (RESUME).
    if (d->state == kStateRunning) d->internal_stops = keep_running ? 2 : 1;
  }
  auto record = store_.get(name);
  if (!record) throw NotFoundError("no VM named '" + name + "'");

  if (!mkdir_as(who, dir, 0700))
    throw Error("uid " + std::to_string(who.uid) + " cannot create the directory '" + dir + "': " +
                std::strerror(errno));
  UniqueFd dirfd = open_as(who, dir, O_RDONLY | O_DIRECTORY);
  if (!dirfd) throw_errno("open " + dir);
  UniqueFd state = open_in(who, dir, "state.tmp", true);
  UniqueFd memory = open_in(who, dir, "memory.tmp", true);
  UniqueFd vm = open_in(who, dir, "vm.json.tmp", true);
  auto discard = [&] {
    for (const char* tmp : {"state.tmp", "memory.tmp", "vm.json.tmp"}) unlinkat_as(who, dirfd.get(), tmp);
  };
  try {
    write_whole(vm.get(), json{{"name", name}, {"definition", record->definition},
                               {"saved_at", timestamp()}}.dump(2) + "\n", join(dir, "vm.json.tmp"));
    link->execute("getfd", json{{"fdname", "keel-save-state"}}, std::chrono::seconds(10), state.get());
    link->execute("getfd", json{{"fdname", "keel-save-memory"}}, std::chrono::seconds(10), memory.get());
    link->execute("snapshot-save",
                  json{{"state-fd", "keel-save-state"}, {"memory-fd", "keel-save-memory"},
                       {"resume", keep_running}},
                  options_.save_timeout);
    // The memory file first: a state file is only ever next to the memory file it describes.
    rename_in(who, dirfd.get(), dir, "memory.tmp", "memory");
    rename_in(who, dirfd.get(), dir, "state.tmp", "state");
    rename_in(who, dirfd.get(), dir, "vm.json.tmp", kVmFile);
    ::fsync(dirfd.get());
  } catch (const std::exception& e) {
    {
      std::lock_guard lock(d->mutex);
      d->internal_stops = 0;  // whatever the VMM did, it runs as before
    }
    discard();
    for (const char* fdname : {"keel-save-state", "keel-save-memory"}) {
      try {
        link->execute("closefd", json{{"fdname", fdname}});
      } catch (const std::exception&) {
        // Used up by the save or never named.
      }
    }
    throw Error("cannot " + std::string(verb) + " VM '" + name + "' to " + dir + ": " + e.what() +
                " (it goes on as it was)");
  }
  store_.set_location(name, json{{"saved_to", dir}, {"at", timestamp()}});
  if (keep_running) {
    std::lock_guard lock(d->mutex);
    publish("snapshot", *d, "saved to " + dir);
    return info_of(*d);
  }
  {
    std::lock_guard lock(d->mutex);
    d->saved = true;
  }
  quit_for(d, link, "the save");
  std::lock_guard lock(d->mutex);
  return info_of(*d);
}

json Domains::restore(const std::string& dir_arg, const std::string& new_name, bool paused,
                      const PeerCredentials& who) {
  const std::string dir = absolute_dir(dir_arg);
  UniqueFd vm = open_in(who, dir, kVmFile, false);
  json saved = json::parse(read_whole(vm.get(), join(dir, kVmFile)), nullptr, false);
  if (!saved.is_object() || !saved.contains("name") || !saved["name"].is_string() ||
      !saved.contains("definition") || !saved["definition"].is_object())
    throw UsageError(join(dir, kVmFile) + ": not a saved VM (no name and definition)");
  UniqueFd state = open_in(who, dir, "state", false);
  UniqueFd memory = open_in(who, dir, "memory", false);
  std::string name = new_name.empty() ? saved["name"].get<std::string>() : new_name;
  json definition = saved["definition"];
  definition["name"] = name;

  // Defined here if it is not; one that is must be shut off and defined as it was saved.
  bool created = false;
  std::shared_ptr<Domain> d;
  {
    std::lock_guard lock(table_mutex_);
    if (auto it = table_.find(name); it != table_.end()) d = it->second;
  }
  if (!d) {
    try {
      define(definition, who);
      created = true;
    } catch (const DuplicateError&) {
    }
    d = find(name);
  }
  std::lock_guard op(d->op);
  {
    std::lock_guard lock(d->mutex);
    if (d->removed) throw NotFoundError("no VM named '" + name + "'");
    if (d->link || d->restart_pending)
      throw ConflictError("VM '" + name + "' is " + d->state + "; restore it under another name (--name)");
  }
  if (!created) {
    auto record = store_.get(name);
    if (!record) throw NotFoundError("no VM named '" + name + "'");
    std::vector<std::string> changed = parse_definition(definition).changed_fields(record->definition);
    std::erase_if(changed, [](const std::string& f) { return f == "autostart" || f == "on_crash"; });
    if (!changed.empty()) {
      std::string fields;
      for (const auto& f : changed) fields += (fields.empty() ? "" : ", ") + f;
      throw ConflictError("VM '" + name + "' is defined differently from the one saved in " + dir +
                          " (" + fields + "); restore it under another name (--name)");
    }
  }
  StartFrom from;
  from.state_fd = state.get();
  from.memory_fd = memory.get();
  from.state_name = join(dir, "state");
  from.memory_name = join(dir, "memory");
  from.location = json{{"restored_from", dir}, {"at", timestamp()}};
  try {
    start_locked(d, paused, &from);
  } catch (...) {
    if (created) {
      try {
        undefine_locked(d);  // a restore that failed leaves nothing behind
      } catch (const std::exception& e) {
        log::warn("daemon: VM {}: undefining after a failed restore: {}", name, e.what());
      }
    }
    throw;
  }
  std::lock_guard lock(d->mutex);
  return info_of(*d);
}

json Domains::incoming(const std::string& name, const json& document, bool paused,
                       const PeerCredentials& who) {
  if (!document.is_object()) throw DefinitionError("the definition must be a JSON object");
  json definition = document;
  definition["name"] = name;
  bool created = false;
  std::shared_ptr<Domain> d;
  {
    std::lock_guard lock(table_mutex_);
    if (auto it = table_.find(name); it != table_.end()) d = it->second;
  }
  if (!d) {
    try {
      define(definition, who);
      created = true;
    } catch (const DuplicateError&) {
    }
    d = find(name);
  }
  auto undo = [&] {
    if (!created) return;
    std::lock_guard op(d->op);
    try {
      undefine_locked(d);
    } catch (const std::exception& e) {
      log::warn("daemon: VM {}: undefining after a failed incoming migration: {}", name, e.what());
    }
  };
  // The listening socket, made here so that its address can be answered at once; the VMM
  // inherits it and accepts the source's connection.
  UniqueFd listener;
  uint16_t port = 0;
  try {
    {
      std::lock_guard op(d->op);
      std::lock_guard lock(d->mutex);
      if (d->link || d->restart_pending) throw ConflictError("VM '" + name + "' is " + d->state + " here");
      if (!created) {
        auto record = store_.get(name);
        if (!record) throw NotFoundError("no VM named '" + name + "'");
        std::vector<std::string> changed = parse_definition(definition).changed_fields(record->definition);
        std::erase_if(changed, [](const std::string& f) { return f == "autostart" || f == "on_crash"; });
        if (!changed.empty())
          throw ConflictError("VM '" + name + "' is defined differently here; undefine it first");
      }
    }
    listener.reset(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
    if (!listener) throw_errno("migration: socket");
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    if (::inet_pton(AF_INET, options_.migration_address.c_str(), &addr.sin_addr) != 1)
      throw Error("the daemon's migration address '" + options_.migration_address + "' is not an IPv4 address");
    if (::bind(listener.get(), reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0 ||
        ::listen(listener.get(), 1) != 0)
      throw_errno("migration: listen on " + options_.migration_address);
    socklen_t len = sizeof addr;
    if (::getsockname(listener.get(), reinterpret_cast<sockaddr*>(&addr), &len) != 0)
      throw_errno("migration: getsockname");
    port = ntohs(addr.sin_port);
  } catch (...) {
    undo();
    throw;
  }
  {
    std::lock_guard lock(d->mutex);
    publish("incoming", *d, "waiting for the VM on " + options_.migration_address + ":" + std::to_string(port));
  }
  // The start waits for the stream: on a thread of its own, so that this answer goes out now.
  auto shared_listener = std::make_shared<UniqueFd>(std::move(listener));
  std::lock_guard lock(incoming_mutex_);
  incoming_threads_.emplace_back([this, d, created, paused, shared_listener] {
    std::lock_guard op(d->op);
    StartFrom from;
    from.listener = shared_listener->get();
    from.timeout = options_.migration_timeout;
    from.location = json{{"migrated_in", true}, {"at", timestamp()}};
    try {
      start_locked(d, paused, &from);
    } catch (const std::exception& e) {
      log::warn("daemon: VM {}: incoming migration: {}", d->name, e.what());
      if (created) {
        try {
          undefine_locked(d);
        } catch (const std::exception& u) {
          log::warn("daemon: VM {}: undefining after a failed incoming migration: {}", d->name, u.what());
        }
      }
    }
  });
  return json{{"uri", "tcp:" + options_.migration_address + ":" + std::to_string(port)}};
}

json Domains::migrate(const std::string& name, const std::string& to, uint64_t downtime_limit_ms) {
  if (to.empty() || to[0] != '/') throw UsageError("field 'to': '" + to + "' is not the absolute path of a daemon's API socket");
  auto d = find(name);
  std::lock_guard op(d->op);
  std::shared_ptr<VmmLink> link;
  bool paused = false;
  {
    std::lock_guard lock(d->mutex);
    link = live_link(*d, "migrate");
    if (d->state == kStateCrashed)
      throw ConflictError("VM '" + name + "' crashed (panicked); destroy or reset it first");
    d->migration.clear();
    d->migrating_to = to;
    paused = d->state == kStatePaused;
    if (!paused) d->internal_stops = 1;  // the stop-and-copy's pause; it ends here
  }
  auto record = store_.get(name);
  if (!record) throw NotFoundError("no VM named '" + name + "'");

  json answer;
  try {
    ApiClient target(to, std::chrono::seconds(30));
    answer = target.call("POST", "/v1/vms/" + name + "/incoming", json{{"definition", record->definition}, {"paused", paused}});
  } catch (const std::exception& e) {
    throw Error("migration of VM '" + name + "': the daemon at " + to + " refused it: " + e.what());
  }
  if (!answer.is_object() || !answer.contains("uri") || !answer["uri"].is_string())
    throw Error("migration of VM '" + name + "': the daemon at " + to + " answered no address");
  std::string uri = answer["uri"].get<std::string>();
  migration::Uri address = migration::parse_uri(uri);
  if (address.kind != migration::Uri::Kind::kTcp)
    throw Error("migration of VM '" + name + "': the daemon at " + to + " answered '" + uri + "', not tcp:");
  UniqueFd connection = migration::connect_to(address, std::chrono::seconds(10));
  int one = 1;
  ::setsockopt(connection.get(), IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);

  link->execute("getfd", json{{"fdname", "keel-migration"}}, std::chrono::seconds(10), connection.get());
  connection.reset();  // the VMM holds it now; the target sees the end of the stream with the VMM's
  link->execute("migrate", json{{"uri", "fd:keel-migration"}, {"downtime-limit", downtime_limit_ms}});
  std::unique_lock lock(d->mutex);
  bool ended = d->changed.wait_for(lock, options_.migration_timeout, [&] {
    return d->link != link || d->migration == "completed" || d->migration == "failed";
  });
  if (d->migration == "completed") {
    // The VMM ends by itself once the target has the VM; its exit records where it went.
    if (!d->changed.wait_for(lock, options_.stop_timeout, [&] { return d->link != link; })) {
      lock.unlock();
      quit_for(d, link, "the migration");
      lock.lock();
    }
    return info_of(*d);
  }
  lock.unlock();
  std::string why = ended ? "the VMM ended" : "it did not finish in time";
  if (d->migration == "failed") {
    try {
      json status = link->execute("query-migrate");
      why = status.value("error-desc", std::string("failed"));
    } catch (const std::exception& e) {
      why = e.what();
    }
  }
  throw Error("migration of VM '" + name + "' to " + to + " failed: " + why + " (it goes on here)");
}

}  // namespace keel::manager
