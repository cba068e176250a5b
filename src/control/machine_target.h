// MachineTarget: the ControlTarget a running Machine offers `keel run --control PATH`. It maps the
// machine's lifecycle listener to QMP events (STOP, RESUME, SHUTDOWN, RESET) and its serial port
// to the console stream, and hosts the ControlServer on the machine's main loop. Console input
// the UART cannot take yet waits in a ConsoleInputQueue (64 KiB) and follows as the guest reads.
#pragma once

#include <memory>
#include <mutex>
#include <string>
#include <thread>

#include "backends/console/console_input_queue.h"
#include "control/control_server.h"
#include "control/control_target.h"
#include "vm/migration.h"

namespace keel {
class Machine;
struct MachineEvent;
}  // namespace keel

namespace keel::control {

class MachineTarget : public ControlTarget {
 public:
  // Adds the lifecycle listener, the serial sink and the serial input space callback; call before
  // machine.start()/run(), on the thread that will run the machine's loop.
  explicit MachineTarget(Machine& machine);

  RunStatus query_status() override;
  void pause() override;
  void resume() override;
  void powerdown() override;
  void reset() override;
  void quit() override;
  std::vector<CpuInfo> query_cpus() override;
  VmIdentity identity() override;
  std::string info_registers() override;
  nlohmann::json query_stats() override;  // control/query_stats.cc
  void snapshot_save(const std::string& path, bool resume) override;
  // The migration runs on a thread of its own (`keel-migrate`), joined when the target goes.
  void migrate(const std::string& uri, uint64_t downtime_limit_ms) override;
  void snapshot_save_to(int state_fd, int memory_fd, bool resume) override;
  void migrate_to_fd(UniqueFd connection, uint64_t downtime_limit_ms) override;
  nlohmann::json query_migrate() override;
  ~MachineTarget() override;
  void set_event_callback(EventCallback callback) override;
  void set_console_callback(ConsoleCallback callback) override;
  // Loop thread (the control server's dispatch). Queues what the UART cannot take yet; beyond
  // ConsoleInputQueue::kDefaultCapacity pending bytes the rest is dropped with a warning.
  void console_input(std::string_view bytes) override;

 private:
  void on_machine_event(const MachineEvent& event);
  void emit(const char* name, nlohmann::json data);
  void start_migration(migration::Uri uri, UniqueFd connection, uint64_t downtime_limit_ms);
  void refuse_during_migration();

  Machine& machine_;
  std::mutex mutex_;  // guards the callbacks and last_ (listeners run on any thread)
  EventCallback on_event_;
  std::shared_ptr<const ConsoleCallback> on_console_;  // copied per console write: no allocation
  bool was_paused_ = false;
  bool user_paused_ = false;
  bool kvm_present_ = false;      // /dev/kvm, looked at before the VMM confines itself
  ConsoleInputQueue input_;      // loop thread only
  bool input_overflow_ = false;  // the last console_input() dropped bytes (and warned)
  std::mutex migration_mutex_;    // guards migration_
  migration::Status migration_;
  std::thread migration_thread_;
};

// Serves `path` for `machine` on its main loop for as long as it lives (create before run()).
class MachineControl {
 public:
  MachineControl(Machine& machine, const std::string& path, ControlServerOptions options = {});
  ~MachineControl();

 private:
  Machine& machine_;
  MachineTarget target_;
  std::unique_ptr<ControlServer> server_;
};

}  // namespace keel::control
