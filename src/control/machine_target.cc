#include "control/machine_target.h"

#include <sys/epoll.h>
#include <sys/socket.h>

#include <unistd.h>

#include "arch/x86/register_dump.h"
#include "base/error.h"
#include "base/log.h"
#include "devices/legacy/acpi_pm.h"
#include "devices/legacy/serial16550.h"
#include "vm/machine.h"

namespace keel::control {

using nlohmann::json;

MachineTarget::MachineTarget(Machine& machine)
    : machine_(machine), kvm_present_(::access("/dev/kvm", F_OK) == 0),
      input_(machine.loop(), machine.serial()) {
  machine_.add_listener([this](const MachineEvent& event) { on_machine_event(event); });
  // vCPU threads, often one byte at a time: a shared_ptr copy (no allocation) and one append to
  // the control server's mailbox, which wakes the loop only when it was empty.
  machine_.add_serial_output([this](std::span<const uint8_t> bytes) {
    std::shared_ptr<const ConsoleCallback> cb;
    {
      std::lock_guard lock(mutex_);
      cb = on_console_;
    }
    if (cb && *cb) (*cb)(std::string_view(reinterpret_cast<const char*>(bytes.data()), bytes.size()));
  });
}

void MachineTarget::emit(const char* name, json data) {
  EventCallback cb;
  {
    std::lock_guard lock(mutex_);
    cb = on_event_;
  }
  if (cb) cb(name, std::move(data));
}

void MachineTarget::on_machine_event(const MachineEvent& event) {
  switch (event.state) {
    case MachineState::kPaused:
      {
        std::lock_guard lock(mutex_);
        was_paused_ = true;
      }
      // A panic pause is reported as QEMU reports it with `-action panic=pause`.
      if (event.panicked)
        emit(event::kGuestPanicked, json{{"action", "pause"}, {"detail", event.shutdown.detail}});
      else
        emit(event::kStop, json::object());
      break;
    case MachineState::kRunning: {
      bool resumed;
      {
        std::lock_guard lock(mutex_);
        resumed = was_paused_;
        was_paused_ = false;
      }
      if (resumed) emit(event::kResume, json::object());
      break;
    }
    case MachineState::kShutDown: {
      // As QMP reports them: `guest` is true only when the guest itself asked; a reset (the
      // guest's or system_reset's) is one RESET and then, since keel ends the VM on reset as QEMU
      // does with -no-reboot, one SHUTDOWN with the same reason.
      const ShutdownInfo& info = event.shutdown;
      bool guest = !info.by_host && info.reason != ShutdownReason::kQuit &&
                   info.reason != ShutdownReason::kError;
      std::string reason;
      switch (info.reason) {
        case ShutdownReason::kPowerOff: reason = guest ? "guest-shutdown" : "host-qmp-quit"; break;
        case ShutdownReason::kReset:
        case ShutdownReason::kTripleFault:
          reason = guest ? "guest-reset" : "host-qmp-system-reset";
          emit(event::kReset, json{{"guest", guest}, {"reason", reason}});
          break;
        case ShutdownReason::kHalted: reason = "guest-halted"; break;
        case ShutdownReason::kQuit: reason = "host-qmp-quit"; break;
        case ShutdownReason::kError: reason = "host-error"; break;
        case ShutdownReason::kPanicked:
          reason = "guest-panic";
          emit(event::kGuestPanicked, json{{"action", "poweroff"}, {"detail", info.detail}});
          break;
      }
      emit(event::kShutdown, json{{"guest", guest}, {"reason", reason}, {"detail", info.detail}});
      break;
    }
    case MachineState::kCreated:
      break;
  }
}

RunStatus MachineTarget::query_status() {
  std::lock_guard lock(mutex_);
  switch (machine_.state()) {
    case MachineState::kRunning: return {RunState::kRunning, user_paused_ ? "unpaused" : "booted"};
    case MachineState::kPaused:
      if (machine_.panicked()) return {RunState::kGuestPanicked, "panicked"};
      return {RunState::kPaused, "user"};
    case MachineState::kCreated: return {RunState::kPaused, "starting up"};
    case MachineState::kShutDown: return {RunState::kShutdown, "shutdown"};
  }
  return {RunState::kPaused, "unknown"};
}

void MachineTarget::pause() {
  machine_.pause();
  std::lock_guard lock(mutex_);
  user_paused_ = true;
}

void MachineTarget::resume() { machine_.resume(); }

void MachineTarget::powerdown() {
  AcpiPm* pm = machine_.acpi_pm();
  if (!pm) throw Error("this machine has no ACPI power button");
  if (machine_.state() == MachineState::kShutDown) throw Error("the machine has shut down");
  // QMP reports the press itself; the guest's reaction (S5) comes later as SHUTDOWN.
  emit(event::kPowerdown, json::object());
  pm->press_power_button();
}

void MachineTarget::reset() {
  // RESET (host-qmp-system-reset) and SHUTDOWN follow from the machine's shutdown event.
  machine_.shutdown(ShutdownReason::kReset, "system_reset from the control socket", true);
}

void MachineTarget::quit() { machine_.shutdown(ShutdownReason::kQuit, "quit from the control socket"); }

void MachineTarget::refuse_during_migration() {
  // Both stop the VM and its devices; the snapshot's resume must not end a migration's stop.
  std::lock_guard lock(migration_mutex_);
  if (migration_.status == "active") throw Error("a migration is running: snapshot after it");
}

void MachineTarget::snapshot_save(const std::string& path, bool resume) {
  refuse_during_migration();
  machine_.save_snapshot(path, resume);
}

void MachineTarget::snapshot_save_to(int state_fd, int memory_fd, bool resume) {
  refuse_during_migration();
  machine_.save_snapshot_to(state_fd, memory_fd, resume);
}

MachineTarget::~MachineTarget() {
  if (migration_thread_.joinable()) migration_thread_.join();
}

void MachineTarget::migrate(const std::string& uri, uint64_t downtime_limit_ms) {
  migration::Uri target = migration::parse_uri(uri);
  if (machine_.thread_launcher().confined())
    throw Error("a confined VMM cannot open sockets: migrate to a connected socket passed with "
                "getfd (\"fd:NAME\", as the daemon's `keel migrate` does) or run with --sandbox off");
  start_migration(std::move(target), UniqueFd(), downtime_limit_ms);
}

void MachineTarget::migrate_to_fd(UniqueFd connection, uint64_t downtime_limit_ms) {
  int type = 0;
  socklen_t len = sizeof type;
  if (::getsockopt(connection.get(), SOL_SOCKET, SO_TYPE, &type, &len) != 0 || type != SOCK_STREAM)
    throw Error("migrate: the descriptor is not a connected stream socket");
  start_migration(migration::Uri{}, std::move(connection), downtime_limit_ms);
}

void MachineTarget::start_migration(migration::Uri target, UniqueFd connection,
                                    uint64_t downtime_limit_ms) {
  {
    std::lock_guard lock(migration_mutex_);
    if (migration_.status == "active") throw Error("a migration is already running");
    migration_.status = "active";
  }
  if (migration_thread_.joinable()) migration_thread_.join();
  migration::Options options{std::chrono::milliseconds(downtime_limit_ms),
                             [this](const std::string& status) { emit(event::kMigration, {{"status", status}}); }};
  // A main-loop thread: it pauses the VM and saves its state as the main loop's snapshot-save
  // does, and under the sandbox it gets that filter (the launcher starts confined threads).
  auto shared = std::make_shared<UniqueFd>(std::move(connection));
  migration_thread_ = machine_.thread_launcher().start(
      sandbox::ThreadKind::kMainLoop, "keel-migrate", [this, target, options, shared] {
        migration::migrate(machine_, target, std::move(*shared), options, migration_, migration_mutex_);
      });
}

nlohmann::json MachineTarget::query_migrate() {
  std::lock_guard lock(migration_mutex_);
  const migration::Status& s = migration_;
  nlohmann::json reply{{"status", s.status}};
  if (s.status == "none") return reply;
  reply["total-time"] = s.total_time_ms;
  reply["downtime"] = s.downtime_ms;
  reply["ram"] = {{"total", s.total_bytes},
                  {"transferred", s.transferred_bytes},
                  {"remaining", s.remaining_bytes},
                  {"dirty-pages-rate", s.dirty_pages_rate},
                  {"dirty-sync-count", s.iterations}};
  if (!s.error.empty()) reply["error-desc"] = s.error;
  return reply;
}

std::vector<CpuInfo> MachineTarget::query_cpus() {
  std::vector<CpuInfo> cpus;
  int index = 0;
  for (long tid : machine_.vcpu_thread_ids()) cpus.push_back(CpuInfo{index++, tid, false});
  return cpus;
}

VmIdentity MachineTarget::identity() {
  return VmIdentity{machine_.config().name, machine_.engine().name() == "kvm", kvm_present_};
}

std::string MachineTarget::info_registers() {
  std::vector<x86::CpuState> states = machine_.vcpu_states();
  if (states.empty()) throw Error("the machine has shut down");
  std::string out;
  for (size_t i = 0; i < states.size(); ++i) {
    if (states.size() > 1) out += "CPU#" + std::to_string(i) + "\r\n";
    out += x86::format_registers(states[i]);
  }
  return out;
}

void MachineTarget::set_event_callback(EventCallback callback) {
  std::lock_guard lock(mutex_);
  on_event_ = std::move(callback);
}

void MachineTarget::set_console_callback(ConsoleCallback callback) {
  auto cb = std::make_shared<const ConsoleCallback>(std::move(callback));
  std::lock_guard lock(mutex_);
  on_console_ = std::move(cb);
}

void MachineTarget::console_input(std::string_view bytes) {
  size_t dropped = input_.write(
      std::span<const uint8_t>(reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size()));
  if (dropped > 0 && !input_overflow_) {
    log::warn("console input: the guest is not reading; {} pending bytes, dropping {}",
              input_.pending(), dropped);
  }
  input_overflow_ = dropped > 0;  // one warning per run of calls that drop
}

MachineControl::MachineControl(Machine& machine, const std::string& path,
                               ControlServerOptions options)
    : machine_(machine), target_(machine) {
  server_ = std::make_unique<ControlServer>(path, target_, std::move(options));
  ControlServer* server = server_.get();
  machine_.loop().add_fd(server->fd(), EPOLLIN, [server](uint32_t) { server->dispatch(); });
}

MachineControl::~MachineControl() {
  machine_.loop().remove_fd(server_->fd());
  server_.reset();  // flushes SHUTDOWN to the clients, removes the socket file
}

}  // namespace keel::control
