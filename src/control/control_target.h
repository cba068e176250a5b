// What the control socket needs from a running VM. The VMM's Machine implements it (through a
// small adapter); tests implement it with a fake. All methods except the callbacks are called on
// the control server's thread (the VMM's main loop).
#pragma once

#include <cstdint>
#include <functional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "base/error.h"
#include "base/fd.h"

namespace keel::control {

// Run state as QMP reports it ("status") with a libvirt-style reason beside it.
enum class RunState { kRunning, kPaused, kShutdown, kGuestPanicked };

struct RunStatus {
  RunState state = RunState::kPaused;
  std::string reason;  // "booted", "user", "shutdown", ... (libvirt's reason vocabulary)
};

struct CpuInfo {
  int index = 0;
  long thread_id = 0;  // host thread id of the vCPU, 0 if not running
  bool halted = false;
};

const char* run_state_name(RunState state);  // "running", "paused", "shutdown", "guest-panicked"

// What query-name and query-kvm report.
struct VmIdentity {
  std::string name;          // "" when the VM has none
  bool kvm_enabled = false;  // the VM runs on KVM
  bool kvm_present = false;  // /dev/kvm is there
};

// Lifecycle event names the VMM emits (QMP's names).
namespace event {
inline constexpr const char* kStop = "STOP";
inline constexpr const char* kResume = "RESUME";
inline constexpr const char* kPowerdown = "POWERDOWN";
inline constexpr const char* kShutdown = "SHUTDOWN";
inline constexpr const char* kReset = "RESET";
inline constexpr const char* kMigration = "MIGRATION";  // {"status": "active" | "completed" | "failed"}
inline constexpr const char* kGuestPanicked = "GUEST_PANICKED";
}  // namespace event

class ControlTarget {
 public:
  // Called from any thread (vCPU threads included): a lifecycle event happened.
  using EventCallback = std::function<void(const std::string& name, nlohmann::json data)>;
  // Called from any thread: the guest wrote bytes to its serial console.
  using ConsoleCallback = std::function<void(std::string_view bytes)>;

  virtual ~ControlTarget() = default;

  virtual RunStatus query_status() = 0;
  virtual void pause() = 0;      // vCPUs stop; emits STOP
  virtual void resume() = 0;     // vCPUs go on; emits RESUME
  virtual void powerdown() = 0;  // presses the ACPI power button; emits POWERDOWN
  virtual void reset() = 0;      // system reset; emits RESET
  virtual void quit() = 0;       // the VMM ends (after the reply has been sent)
  virtual std::vector<CpuInfo> query_cpus() = 0;
  virtual VmIdentity identity() { return {}; }
  // Every vCPU's registers as QEMU's `info registers` prints them (human-monitor-command).
  virtual std::string info_registers() { throw std::runtime_error("no registers to show"); }
  // What the VM has counted (query-stats, control/query_stats.cc): engine, uptime, per vCPU CPU
  // time and exits or instructions, per disk and network device bytes and requests. The default
  // refuses (a target without counters).
  virtual nlohmann::json query_stats();
  // Saves the VM's complete state to directory `path` (vm/snapshot.h), resuming it afterwards
  // when it was running and `resume`. Throws Error naming why it could not; the VM goes on.
  virtual void snapshot_save(const std::string& path, bool resume) {
    throw Error("this VM cannot save snapshots");
  }
  // Starts a live migration to `uri` ("unix:PATH", "tcp:HOST:PORT"; vm/migration.h) and returns;
  // query_migrate() reports its progress as QMP's query-migrate does.
  virtual void migrate(const std::string& uri, uint64_t downtime_limit_ms) {
    throw Error("this VM cannot migrate");
  }
  // The same into two files the client opened (a confined VMM opens none): the state file and
  // the memory file, written from their start. Renaming them into place is the client's.
  virtual void snapshot_save_to(int state_fd, int memory_fd, bool resume) {
    throw Error("this VM cannot save snapshots");
  }
  // migrate over a stream socket the client connected to the target ("fd:NAME").
  virtual void migrate_to_fd(UniqueFd connection, uint64_t downtime_limit_ms) {
    throw Error("this VM cannot migrate");
  }
  virtual nlohmann::json query_migrate() { return nlohmann::json{{"status", "none"}}; }

  // The control server installs its callbacks once, before it serves clients. The target keeps
  // them until it is destroyed and calls them for every lifecycle event and console output.
  virtual void set_event_callback(EventCallback callback) = 0;
  virtual void set_console_callback(ConsoleCallback callback) = 0;
  // Bytes a console client typed: they go to the guest's serial input.
  virtual void console_input(std::string_view bytes) = 0;
};

}  // namespace keel::control
