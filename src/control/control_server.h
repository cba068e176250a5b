// The per-VM control socket (VMM side): a QMP-shaped JSON protocol on a unix socket.
//
// Protocol (one JSON object per line):
//   server -> {"QMP": {"version": ..., "capabilities": []}}          greeting on connect
//   client -> {"execute": "qmp_capabilities"}                         required first
//   client -> {"execute": "query-status", "arguments": {...}, "id": X}
//   server -> {"return": ..., "id": X} | {"error": {"class": C, "desc": D}, "id": X}
//   server -> {"event": "STOP", "data": {...}, "timestamp": {"seconds": S, "microseconds": U}}
// Commands: qmp_capabilities, query-status, query-cpus-fast (query-cpus is the same), query-version,
// query-name, query-kvm, query-stats, query-commands, stop, cont, system_powerdown, system_reset,
// quit, human-monitor-command (info registers, status, version, name, kvm, cpus), console-attach,
// snapshot-save, migrate, query-migrate, getfd, closefd.
// `getfd` names a descriptor sent with its message (SCM_RIGHTS), as QEMU's: a confined VMM cannot
// open files or sockets, so the daemon opens a snapshot's files or connects to a migration target
// and hands the descriptors over (snapshot-save "state-fd"/"memory-fd", migrate "fd:NAME").
// `console-attach` turns the connection
// into a raw byte stream of the guest's serial console (output to the client, input to the guest)
// after its reply line; that is how the daemon relays the console.
//
// Threading: the server lives on one thread (the VMM's main loop). It owns an epoll set whose fd
// the loop watches; when readable, the loop calls dispatch(). Target callbacks (events, console
// output) may run on any thread: they are queued under a mutex in a mailbox, and the post that
// finds the mailbox empty writes an eventfd that wakes the loop, which drains everything queued by
// then in one go (one send per client per drain).
#pragma once

#include <chrono>
#include <cstdint>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <string>

#include <nlohmann/json.hpp>

#include "base/fd.h"
#include "control/control_target.h"
#include "sandbox/syscalls.h"

namespace keel::control {

struct ControlServerOptions {
  size_t max_message = 64 * 1024;       // a longer line gets an error reply and is discarded
  size_t max_client_backlog = 1 << 20;  // unsent bytes per client before it is cut off
  size_t max_clients = 64;               // negotiated clients other than the daemon's
  size_t max_console_pending = 1 << 20;  // console bytes queued between two dispatches
  // A client that has not negotiated (qmp_capabilities) by then is closed.
  std::chrono::milliseconds negotiate_timeout{5000};
  // The daemon's clients say this token in qmp_capabilities ({"keel-token": ...}); they always
  // get in: `reserved_slots` connections beyond max_clients are kept for them, and when every
  // slot is taken, the oldest client that has not negotiated yet makes room. Empty: no token.
  std::string daemon_token = "";
  size_t reserved_slots = 4;
};

class ControlServer {
 public:
  ControlServer(const std::string& path, ControlTarget& target, ControlServerOptions options = {});
  ~ControlServer();
  // Its system calls on the thread that dispatches it (seccomp, the "control" thread kind).
  static sandbox::AllowList syscalls();
  ControlServer(const ControlServer&) = delete;
  ControlServer& operator=(const ControlServer&) = delete;

  // The epoll fd to watch for readability; then call dispatch() (never blocks).
  int fd() const { return epoll_.get(); }
  void dispatch();
  // Waits up to `timeout` for work and dispatches it (for loops that have nothing else to do).
  void run_once(std::chrono::milliseconds timeout);
  // Sends everything queued (events, replies, console bytes), waiting up to `timeout` for slow
  // clients. The VMM calls it before it exits so that SHUTDOWN reaches the daemon.
  void flush(std::chrono::milliseconds timeout);

  const std::string& path() const { return path_; }
  size_t client_count() const { return clients_.size(); }
  // How many times target callbacks woke the loop (any thread): once per batch, not per byte.
  uint64_t wakeups_posted() const;

 private:
  struct Client {
    UniqueFd fd;
    std::string in;
    std::string out;
    bool negotiated = false;
    bool console = false;     // raw console stream mode
    bool discarding = false;  // skipping the rest of an oversized line
    bool closing = false;     // close once `out` is sent
    bool want_out = false;    // EPOLLOUT registered
    bool daemon = false;      // negotiated with the daemon's token
    // Descriptors that came with this client's messages (SCM_RIGHTS), oldest first, waiting for
    // the `getfd` that names them.
    std::deque<UniqueFd> passed_fds;
    std::chrono::steady_clock::time_point accepted;
  };

  void accept_clients();
  void handle_readable(uint64_t id);
  void handle_writable(uint64_t id);
  void handle_line(uint64_t id, std::string_view line);
  nlohmann::json run_command(Client& client, const std::string& name, const nlohmann::json& args,
                             bool& quit_after);
  void send_line(Client& client, const nlohmann::json& message);
  void queue_bytes(uint64_t id, Client& client, std::string_view bytes);
  void try_write(uint64_t id, Client& client);
  void update_interest(uint64_t id, Client& client);
  void close_client(uint64_t id);
  void drain_pending();
  void expire_unnegotiated();
  void arm_timer();
  // The descriptor `getfd` named `name`, taken out of the table. Throws CommandError.
  UniqueFd take_named_fd(const std::string& name);

  std::string path_;
  ControlTarget& target_;
  ControlServerOptions options_;
  UniqueFd epoll_;
  UniqueFd listen_;
  UniqueFd timer_;        // timerfd: the next negotiation deadline
  uint64_t next_id_ = 3;  // 0 = listening socket, 1 = wake eventfd, 2 = timer
  std::map<uint64_t, Client> clients_;
  // Named with `getfd` (as QEMU's monitor): for snapshot-save's files and `migrate fd:NAME`.
  std::map<std::string, UniqueFd> named_fds_;

  // Handed over from other threads (target callbacks), drained on the server's thread. Shared
  // with the callbacks so that a target calling them after the server is gone stays harmless.
  struct Mailbox {
    std::mutex mutex;
    std::deque<std::string> events;  // serialised event lines
    std::string console;
    size_t console_limit = 0;
    uint64_t wakeups = 0;  // eventfd writes (one per empty -> non-empty transition)
    UniqueFd wake;  // eventfd
    void post_event(const std::string& name, nlohmann::json data);
    void post_console(std::string_view bytes);
    void notify();
  };
  std::shared_ptr<Mailbox> mailbox_;
};

// The QMP timestamp of now: {"seconds": S, "microseconds": U} of the realtime clock.
nlohmann::json qmp_timestamp();

}  // namespace keel::control
