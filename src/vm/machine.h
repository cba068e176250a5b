// Machine: one VM assembled from a VmConfig, and its lifecycle.
//
// Construction builds everything and loads the guest: guest memory, the port-I/O and MMIO buses,
// the engine, the devices, the boot image (Linux + ACPI tables, or a test guest) and the vCPUs.
// Nothing runs until start() (or run()).
//
// Threads (docs/architecture.md, "Threads and cross-thread handoffs"):
//   - one host thread per vCPU, looping on Vcpu::run() while the machine is running;
//   - the main thread, which calls run(): it runs the EventLoop (console input, control socket,
//     timers) until the machine shuts down, then joins the vCPU threads.
//
// Lifecycle: created -> running <-> paused -> shut down. pause(), resume(), shutdown(),
// request_stop() and wait() may be called from any thread (the control socket drives them);
// pause() must not be called from a vCPU thread (it waits for every vCPU to stop).
#pragma once

#include <condition_variable>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "backends/console/console_port.h"
#include "base/event_loop.h"
#include "bus/io_bus.h"
#include "devices/power.h"
#include "engine/engine.h"
#include "memory/guest_memory.h"
#include "sandbox/seccomp.h"
#include "sandbox/thread_launcher.h"
#include "vm/snapshot.h"
#include "vm/vm_config.h"

namespace keel {

namespace state {
class Writer;
class Document;
}  // namespace state

class Serial16550;
class I8042;
class CmosRtc;
class BootProgress;
class AcpiPm;
class PciPlatform;
class PvPanic;
class FwCfg;

enum class MachineState { kCreated, kRunning, kPaused, kShutDown };

enum class ShutdownReason {
  kPowerOff,     // the guest powered off (ACPI S5, KVM system event)
  kReset,        // the guest reset itself (reboot, i8042 0xFE, ACPI reset register)
  kTripleFault,  // a vCPU shut down (triple fault)
  kHalted,       // every vCPU halted with interrupts disabled: nothing can ever run again
  kQuit,         // the host asked: Ctrl-A x, a signal, the control socket's `quit`
  kError,        // the VMM failed (detail names the cause)
  kPanicked,     // the guest kernel panicked (pvpanic) and VmConfig::on_panic says exit
};

struct ShutdownInfo {
  ShutdownReason reason = ShutdownReason::kQuit;
  std::string detail;  // "i8042 reset", "vCPU 0: KVM_EXIT_INTERNAL_ERROR ...", "Ctrl-A x", ...
  bool by_host = false;  // asked from outside the guest (the control socket's system_reset, ...)
  int exit_status = -1;  // >= 0: the guest chose keel's exit status (isa-debug-exit)
};

const char* to_string(MachineState state);
const char* to_string(ShutdownReason reason);

// A lifecycle change, as the control socket reports it (STOP, RESUME, SHUTDOWN, RESET events).
struct MachineEvent {
  MachineState state;     // the state entered
  ShutdownInfo shutdown;  // when state == kShutDown, or the panic when `panicked`
  bool panicked = false;  // kPaused because the guest panicked (VmConfig::on_panic kPause)
};

class Machine final : public PowerControl {
 public:
  // Builds the engine for the VM; the default (nullptr) is create_engine() (engine_factory.h).
  // Tests pass their own.
  using EngineFactory =
      std::function<std::unique_ptr<Engine>(Accel accel, EngineContext context, EngineConfig config)>;

  // Builds and loads the VM. Throws Error naming the cause (a missing kernel, no /dev/kvm, ...).
  explicit Machine(VmConfig config, EngineFactory engine_factory = nullptr);
  // Rebuilds the VM saved in `snapshot_dir` (vm/snapshot.h) instead of loading a guest: `config`
  // must be the snapshot's (snapshot::load_config; the host-side fields, control socket and
  // start_paused, are the caller's). RAM maps the snapshot's memory file privately; the engine,
  // vCPUs and devices take their saved state. Throws state::StateError naming what it refuses;
  // nothing half-restored survives (the exception destroys the machine).
  Machine(VmConfig config, const std::filesystem::path& snapshot_dir,
          EngineFactory engine_factory = nullptr);
  Machine(VmConfig config, const snapshot::Files& files, EngineFactory engine_factory = nullptr);
  // The same from a migration stream's RAM and state (vm/migration.h).
  Machine(VmConfig config, std::unique_ptr<GuestMemory> memory, const state::Document& state,
          EngineFactory engine_factory = nullptr);
  ~Machine() override;
  Machine(const Machine&) = delete;
  Machine& operator=(const Machine&) = delete;

  // --- What other layers plug into (valid from construction on).
  const VmConfig& config() const { return config_; }
  GuestMemory& memory() { return *memory_; }
  IoBus& pio() { return pio_; }
  IoBus& mmio() { return mmio_; }
  Engine& engine() { return *engine_; }
  InterruptController& interrupts() { return engine_->interrupts(); }
  EventLoop& loop() { return loop_; }
  PowerControl& power() { return *this; }
  Serial16550& serial() { return *serial_; }
  BootProgress& boot_progress() { return *boot_progress_; }
  // The ACPI PM registers (power button for `system_powerdown`), for every guest.
  AcpiPm* acpi_pm() { return acpi_pm_.get(); }
  // PCI bus 0 and the virtio devices (hvc0 is pci().console() when config.virtio.console).
  PciPlatform& pci() { return *pci_; }
  uint32_t vcpu_count() const { return static_cast<uint32_t>(vcpus_.size()); }
  Vcpu& vcpu(uint32_t index) { return *vcpus_.at(index); }
  // When the machine was built (BootProgress::now_ns(), CLOCK_MONOTONIC).
  uint64_t created_ns() const { return created_ns_; }
  // Where the machine's threads (vCPUs, device workers) come from; confine() it before start().
  sandbox::ThreadLauncher& thread_launcher() { return launcher_; }
  // The allow-lists of this machine's thread kinds (its engine's vCPU loop, its devices, its main
  // loop); a VMM adds what it serves on the loop (control socket, terminal) and confines.
  sandbox::SyscallPolicy syscall_policy() const;

  // Where the guest's serial output goes (a vCPU thread calls it). Set before start(); the
  // default writes to stdout. set_ replaces every sink, add_ adds one (the control socket's
  // console relay sits beside the terminal).
  void set_serial_output(ConsoleOutput output);
  void add_serial_output(ConsoleOutput output);

  // Host thread id (gettid) of each vCPU's thread, 0 before it started or after it ended.
  std::vector<long> vcpu_thread_ids() const;
  // Every vCPU's registers. A running machine is stopped for the read and goes on at once,
  // without lifecycle events (the control socket's `info registers`). Not from a vCPU thread.
  std::vector<x86::CpuState> vcpu_states();

  // Called on every lifecycle change, on the thread that caused it, with no machine lock held.
  // A listener must not block; to act on the main thread it posts to loop(). Add before start().
  void add_listener(std::function<void(const MachineEvent&)> listener);

  // --- Lifecycle.
  // Starts the vCPU threads: running, or paused when config.start_paused. Once only.
  void start();
  // start(), then runs the event loop on the calling thread until the machine shuts down, then
  // joins the vCPU threads. An exception from a loop callback shuts the machine down as kError.
  ShutdownInfo run();

  // Stops every vCPU and returns once none runs guest code (no-op unless running).
  void pause();
  // Lets the vCPUs run again (no-op unless paused).
  void resume();
  // Ends the VM: the first call wins and its reason is the one reported. Never blocks. `by_host`
  // marks a reason the host chose for the guest (a host-requested reset); kQuit is always the host's.
  void shutdown(ShutdownReason reason, std::string detail, bool by_host = false, int exit_status = -1);
  // PowerControl, for devices: power off or reset ends the VM (keel does not reboot in place); a
  // panic pauses it or ends it (VmConfig::on_panic).
  void request_stop(StopReason reason, std::string detail) override;
  // True from a panic pause until resume().
  bool panicked() const;

  MachineState state() const;

  // Saves the VM to `dir` (vm/snapshot.h; created if missing, an older snapshot there replaced):
  // pauses it, quiesces its devices, writes its state and RAM, and resumes it if it was running
  // and `resume`. Any thread but a vCPU's, while running or paused. Throws Error naming the
  // cause; the VM then goes on as before.
  void save_snapshot(const std::filesystem::path& dir, bool resume = true);
  // The same into two files the caller opened for writing (a confined VMM opens none): the state
  // file and the memory file, each written from its start. Renaming them is the caller's.
  void save_snapshot_to(int state_fd, int memory_fd, bool resume = true);
  // Live migration's last step (vm/migration.cc): pauses the VM, quiesces its devices and calls
  // `send` with the complete non-RAM state (a state file's bytes). If `send` throws, the devices
  // and the VM go on as before and the exception propagates; if it returns, the machine stays
  // paused and quiesced for the caller to shut down.
  void stop_and_send(const std::function<void(std::vector<uint8_t> state)>& send);
  // Blocks until the machine has shut down; returns why.
  ShutdownInfo wait();

 private:
  void build(EngineFactory engine_factory, std::unique_ptr<GuestMemory> memory,
             const state::Document* snapshot);
  void build_devices();
  // machine_snapshot.cc
  void save_state(state::Writer& out);
  void restore_state(const state::Document& in);
  void set_devices_quiesced(bool quiesced);
  // Pauses and quiesces, saves the state into a writer and lets `write` finish it; then the VM
  // goes on (resumed if it ran and `resume_after`), also when `write` throws.
  void with_quiesced(bool resume_after, const std::function<void(state::Writer&)>& write);
  void load_guest();
  void vcpu_thread(Vcpu& vcpu);
  void set_state(MachineState state, std::unique_lock<std::mutex>& lock);
  void pause_for_panic(std::string detail);
  void join_vcpus();

  const VmConfig config_;
  sandbox::ThreadLauncher launcher_;  // before everything whose threads it starts
  std::unique_ptr<GuestMemory> memory_;
  IoBus pio_{"pio"};
  IoBus mmio_{"mmio"};
  std::unique_ptr<Engine> engine_;
  std::vector<std::unique_ptr<Vcpu>> vcpus_;
  EventLoop loop_;

  std::shared_ptr<Serial16550> serial_;
  std::shared_ptr<I8042> i8042_;
  std::shared_ptr<CmosRtc> rtc_;
  std::shared_ptr<FwCfg> fw_cfg_;
  std::shared_ptr<BootProgress> boot_progress_;
  std::shared_ptr<AcpiPm> acpi_pm_;
  std::shared_ptr<PvPanic> pvpanic_;
  // AML for devices under \_SB of the DSDT (PCI0, ...): device families append while building.
  std::vector<std::vector<uint8_t>> acpi_devices_;
  std::unique_ptr<PciPlatform> pci_;  // after engine_ and memory_: its device threads use both
  std::vector<ConsoleOutput> serial_outputs_;
  uint64_t created_ns_ = 0;

  std::vector<std::function<void(const MachineEvent&)>> listeners_;

  // Lifecycle state, shared by the vCPU threads, the main thread and control clients.
  mutable std::mutex mutex_;
  std::condition_variable changed_;  // state_, parked_, halted_ or exited_ changed
  MachineState state_ = MachineState::kCreated;
  bool start_paused_ = false;
  bool restored_ = false;  // built from a snapshot: start() lets its devices work again
  bool panicked_ = false;
  ShutdownInfo shutdown_;
  uint32_t parked_ = 0;   // vCPU threads waiting while paused
  uint32_t halted_ = 0;   // vCPU threads that can never run again (kHalted)
  uint32_t exited_ = 0;   // vCPU threads that returned
  std::vector<std::thread> threads_;
  std::vector<long> thread_ids_;
};

}  // namespace keel
