// The daemon's table of defined VMs ("domains", as libvirt calls them) and the commands on them.
//
// Locking (docs/architecture.md, "Management"):
//   - table_mutex_ guards the name -> Domain map (define/undefine/lookup);
//   - each Domain has `op`, the per-VM command lock, held for a whole command (start, destroy,
//     suspend, ...), so two commands on one VM never interleave; commands on different VMs run in
//     parallel on the API's threads;
//   - each Domain has `mutex`, held briefly to read or change its state; the supervisor thread's
//     callbacks take only this one, never `op`, so a command waiting for a VMM reply while holding
//     `op` cannot deadlock with the thread that delivers the reply.
// Every state change is written to the store (one transaction) under Domain::mutex, so the store
// and memory agree.
#pragma once

#include <chrono>
#include <condition_variable>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include <nlohmann/json.hpp>

#include "base/error.h"
#include "base/eventfd.h"
#include "manager/broadcast.h"
#include "manager/store.h"
#include "manager/supervisor.h"
#include "manager/vm_definition.h"
#include "engine/kvm/kvm_probe.h"

namespace keel::manager {

// The VM is in the wrong state for the command (start a running VM, undefine a running one).
class ConflictError : public Error {
 public:
  using Error::Error;
};

struct DomainsOptions {
  std::string state_dir;   // holds run/ (control sockets, pidfiles) and log/ (VMM logs)
  std::string vmm_binary;  // the keel binary that runs `keel run --control ...`
  std::string cgroup_parent;  // cgroup v2 directory for one cgroup per VM ("" = none)
  std::vector<std::string> vmm_extra_args;  // appended to every VMM's command line (sandbox)
  std::chrono::milliseconds start_timeout{15000};
  std::chrono::milliseconds stop_timeout{15000};
  // `destroy` sends SIGTERM (the VMM ends in order) and SIGKILL if it is still there after this.
  std::chrono::milliseconds destroy_grace{10000};
  // Crash-loop backoff for guests that reset soon after they started: the first restart waits
  // backoff_first, each next one twice as long up to backoff_max; a run that lasted stable_after
  // ends the loop.
  std::chrono::milliseconds backoff_first{1000};
  std::chrono::milliseconds backoff_max{60000};
  std::chrono::milliseconds stable_after{60000};
  // Fault injection for the tests: SIGKILL the daemon at this point of every start (1-9, see
  // start_locked), or fail the store write that records a start.
  int test_kill_point = 0;
  bool test_fail_start_record = false;
  // VM state (domains_state.cc): a `save` or `snapshot` may take this long; an incoming
  // migration's VMM this long to have received the VM; the address it listens on.
  std::chrono::milliseconds save_timeout{600000};
  std::chrono::milliseconds migration_timeout{600000};
  std::string migration_address = "127.0.0.1";
};

class Domains {
 public:
  Domains(Store& store, DomainsOptions options);
  ~Domains();  // stops watching; running VMMs go on and are adopted by the next daemon
  Domains(const Domains&) = delete;
  Domains& operator=(const Domains&) = delete;

  // At daemon start: loads the definitions; VMs the store says are running are adopted again
  // through their saved pid and control socket, or recorded as shut off (crashed).
  void recover();

  // Where a definition changes, and what the host can run, are checked at define as they would
  // be at start: every file the definition names must be one `owner` (who asks) could open, the
  // kernel one keel boots, the engine one this host runs (the KVM probe, made once).
  nlohmann::json define(const nlohmann::json& definition, const PeerCredentials& owner = {});
  // PUT /v1/vms/NAME: defines, or replaces the definition of a VM that is shut off (of a running
  // one only autostart and on_crash may change). Returns whether it was created, and the VM.
  std::pair<bool, nlohmann::json> put(const std::string& name, nlohmann::json definition,
                                      const PeerCredentials& owner = {});
  void undefine(const std::string& name);
  nlohmann::json start(const std::string& name, bool paused);
  void shutdown(const std::string& name);  // ACPI power button; returns at once
  // ACPI power button; once the guest has powered off a fresh VMM boots it (libvirt's reboot).
  void reboot(const std::string& name);
  void reset(const std::string& name);     // at once, without asking the guest (a fresh VMM)
  void destroy(const std::string& name);   // SIGTERM, then SIGKILL; returns once it is gone
  // At daemon start, once per host boot: starts the VMs whose definition says autostart.
  void autostart();
  void suspend(const std::string& name);
  void resume(const std::string& name);
  // VM state (domains_state.cc), as virsh save/restore/snapshot/migrate. Directories are
  // opened, created and written as `who` (who asks), never as the daemon.
  // save: the VM's state to DIR, then its VMM ends ("shut off", reason "saved").
  // snapshot: the same, and the VM goes on.
  nlohmann::json save(const std::string& name, const std::string& dir, const PeerCredentials& who,
                      bool keep_running);
  // Continues the VM saved in DIR as `new_name` (empty: the name it was saved under), defining
  // it if it is not defined. Nothing is left behind when it fails.
  nlohmann::json restore(const std::string& dir, const std::string& new_name, bool paused,
                         const PeerCredentials& who);
  // Live-migrates `name` to the keel daemon at API socket `to`; the VM ends here ("shut off",
  // reason "migrated") and runs there. On failure it goes on here.
  nlohmann::json migrate(const std::string& name, const std::string& to,
                         uint64_t downtime_limit_ms);
  // The target's half: defines `name` (or checks the definition matches one shut off here),
  // starts a VMM that waits for the stream, and returns {"uri": "tcp:ADDRESS:PORT"} at once.
  // `paused`: the VM was paused on the source, and stays so here.
  nlohmann::json incoming(const std::string& name, const nlohmann::json& definition, bool paused,
                          const PeerCredentials& who);

  nlohmann::json info(const std::string& name);
  nlohmann::json list();

  // A query (query-stats, ...) to the VMM of `name`, without the command lock (a long start
  // does not hold it up); null when no VMM runs. Throws NotFoundError, Error (no answer).
  nlohmann::json query_vmm(const std::string& name, const std::string& command);

  // The console of `name` while it runs: recent output to read from (the history ends when the VM
  // stops), input to write. ConflictError for a VM that is not running, unless `history`: then
  // the last run's output (what it printed before it stopped, for finding out why).
  std::shared_ptr<ByteHistory> console(const std::string& name, bool history = false);
  void console_write(const std::string& name, std::string_view bytes);
  MessageHistory& events() { return events_; }

  // Ends every streaming reader (console, events): the daemon is stopping.
  void close_streams();

 private:
  struct Domain;
  std::shared_ptr<Domain> find(const std::string& name);
  // How a VMM starts: booting, restoring a snapshot's files, or receiving a migration stream
  // on a listening socket. The descriptors stay the caller's.
  struct StartFrom {
    int state_fd = -1, memory_fd = -1;  // restore
    std::string state_name, memory_name;  // their paths, for the VMM's errors
    nlohmann::json location;              // recorded (Store::set_location) as the start is
    int listener = -1;                  // incoming
    std::chrono::milliseconds timeout{0};  // 0: options_.start_timeout
  };
  void start_locked(const std::shared_ptr<Domain>& d, bool paused, const StartFrom* from = nullptr);
  void quit_for(const std::shared_ptr<Domain>& d, const std::shared_ptr<VmmLink>& link,
                const char* why);
  void undefine_locked(const std::shared_ptr<Domain>& d);
  void adopt(const std::shared_ptr<Domain>& d, const VmRecord& record, const std::string& token);
  void recover_one(const std::shared_ptr<Domain>& d, const VmRecord& record);
  bool cancel_restart(Domain& d, const std::string& reason);
  void press_power_button(const std::string& name, bool reboot);  // shutdown, reboot
  void kill_point(int point) const;
  void check_host(const VmDefinition& definition);
  std::string on_crash(const std::string& name);
  uid_t vmm_uid(const std::string& name) const;
  std::string path_of(const std::string& name, const char* what) const;
  void watch(const std::shared_ptr<Domain>& d, std::shared_ptr<VmmLink> link, uint64_t generation);
  void on_event(const std::shared_ptr<Domain>& d, uint64_t generation, const nlohmann::json& event);
  void on_exit(const std::shared_ptr<Domain>& d, uint64_t generation, int wait_status);
  void set_state(Domain& d, const std::string& state, const std::string& reason);
  void publish(const std::string& event, const Domain& d, const std::string& detail = {});
  std::shared_ptr<VmmLink> live_link(Domain& d, const char* verb);
  nlohmann::json info_of(Domain& d);
  void post_job(std::function<void()> job,
                std::chrono::milliseconds delay = std::chrono::milliseconds(0));

  Store& store_;
  DomainsOptions options_;
  MessageHistory events_;

  std::mutex table_mutex_;
  std::map<std::string, std::shared_ptr<Domain>> table_;

  // Work the supervisor thread must not do itself (restarting a VM after a reset takes `op`).
  std::mutex jobs_mutex_;
  std::condition_variable jobs_cv_;
  std::multimap<std::chrono::steady_clock::time_point, std::function<void()>> jobs_;
  bool jobs_stop_ = false;
  std::thread worker_;

  EventFd stopping_;  // signalled when Domains goes: starts still waiting give up
  std::mutex incoming_mutex_;
  std::vector<std::thread> incoming_threads_;  // incoming migrations' starts, joined at the end

  std::once_flag probe_once_;  // the KVM probe, for definitions that need it
  KvmProbeResult probe_;

  Supervisor supervisor_;  // last: its thread stops first, before the table it calls into
};

}  // namespace keel::manager
