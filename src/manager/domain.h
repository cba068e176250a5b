// A defined VM as the daemon keeps it in memory (Domains::Domain): shared by domains.cc and
// domains_state.cc. Locking: see domains.h.
#pragma once

#include <chrono>
#include <condition_variable>
#include <memory>
#include <mutex>
#include <string>

#include "manager/domains.h"

namespace keel::manager {

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
  bool guest_reset = false;    // ... and the guest asked for it (crash-loop backoff applies)
  bool shutdown_seen = false;  // SHUTDOWN: the exit is a clean shutdown
  bool reboot_requested = false;  // `reboot`: once the guest powered off, boot it again
  bool panicked = false;          // GUEST_PANICKED: on_crash decides what the exit means
  bool saved = false;             // `save` wrote its state: the exit is "saved"
  std::string migration;          // the VMM's last MIGRATION status ("" before any)
  std::string migrating_to;       // the daemon socket a `migrate` sends it to
  // STOP/RESUME events a save, snapshot or migration makes the VMM send (it pauses the VM to
  // save it): not the user's, so not state changes.
  int internal_stops = 0;
  bool start_failed = false;
  std::chrono::steady_clock::time_point started_at;  // when the current VMM was let run
  // Crash-loop backoff: the delay of the next quick restart (0: not in a loop); a restart
  // waiting in the job queue is the one whose ticket matches while restart_pending.
  std::chrono::milliseconds backoff{0};
  bool keep_first_failure_log = false;
  bool restart_pending = false;
  uint64_t restart_ticket = 0;
  std::shared_ptr<ByteHistory> console = std::make_shared<ByteHistory>();
};

}  // namespace keel::manager
