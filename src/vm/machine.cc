#include "vm/machine.h"

#include <pthread.h>
#include <unistd.h>

#include <cerrno>
#include <cinttypes>
#include <cstdio>
#include <fstream>
#include <iterator>
#include <optional>

#include "arch/x86/acpi/aml.h"
#include "arch/x86/boot_state.h"
#include "base/error.h"
#include "base/log.h"
#include "devices/legacy/acpi_pm.h"
#include "devices/legacy/boot_progress.h"
#include "devices/legacy/cmos_rtc.h"
#include "devices/legacy/fw_cfg.h"
#include "devices/legacy/isa_debug_exit.h"
#include "devices/legacy/i8042.h"
#include "devices/legacy/pvpanic.h"
#include "devices/legacy/serial16550.h"
#include "devices/pci/pci_acpi.h"
#include "devices/virtio/virtio_platform.h"
#include "engine/engine_factory.h"
#include "engine/kvm/kvm_engine.h"
#include "state/state_format.h"
#include "vm/engine_selection.h"
#include "vm/guest_loader.h"
#include "vm/snapshot.h"

namespace keel {

const char* to_string(MachineState state) {
  switch (state) {
    case MachineState::kCreated: return "created";
    case MachineState::kRunning: return "running";
    case MachineState::kPaused: return "paused";
    case MachineState::kShutDown: return "shut down";
  }
  return "unknown";
}

const char* to_string(ShutdownReason reason) {
  switch (reason) {
    case ShutdownReason::kPowerOff: return "power off";
    case ShutdownReason::kReset: return "reset";
    case ShutdownReason::kTripleFault: return "triple fault";
    case ShutdownReason::kHalted: return "halted";
    case ShutdownReason::kQuit: return "quit";
    case ShutdownReason::kError: return "error";
    case ShutdownReason::kPanicked: return "guest panicked";
  }
  return "unknown";
}

namespace {

void write_all(int fd, std::span<const uint8_t> bytes) {
  while (!bytes.empty()) {
    ssize_t n = ::write(fd, bytes.data(), bytes.size());
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return;  // a closed or broken stdout drops console output, never stops the guest
    bytes = bytes.subspan(static_cast<size_t>(n));
  }
}

// Port 0x504 of the test-guest ABI: the guest's status ends the run (0 = pass).
class TestGuestExit : public BusDevice {
 public:
  explicit TestGuestExit(Machine& machine) : machine_(machine) {}
  void read(uint64_t, std::span<uint8_t> data) override {
    for (auto& b : data) b = 0xFF;
  }
  void write(uint64_t, std::span<const uint8_t> data) override {
    if (data.size() != 1) return;
    if (data[0] == 0)
      machine_.shutdown(ShutdownReason::kPowerOff, "test guest passed (status 0)");
    else
      machine_.shutdown(ShutdownReason::kError,
                        "test guest failed with status " + std::to_string(data[0]));
  }

 private:
  Machine& machine_;
};

}  // namespace

Machine::Machine(VmConfig config, EngineFactory engine_factory) : config_(std::move(config)) {
  config_.validate();
  build(std::move(engine_factory), std::make_unique<GuestMemory>(config_.memory_bytes), nullptr);
}

Machine::Machine(VmConfig config, const std::filesystem::path& snapshot_dir, EngineFactory engine_factory)
    : Machine(std::move(config), snapshot::Files::in(snapshot_dir), std::move(engine_factory)) {}

Machine::Machine(VmConfig config, const snapshot::Files& files, EngineFactory engine_factory)
    : config_(std::move(config)) {
  config_.validate();
  state::Document snapshot = snapshot::read_state_file(files.state);
  UniqueFd ram = snapshot::open_memory_file(files.memory, snapshot, config_.memory_bytes,
                                            config_.verify_snapshot_memory);
  build(std::move(engine_factory), std::make_unique<GuestMemory>(config_.memory_bytes, ram.get()),
        &snapshot);
}

Machine::Machine(VmConfig config, std::unique_ptr<GuestMemory> memory, const state::Document& state,
                 EngineFactory engine_factory)
    : config_(std::move(config)) {
  config_.validate();
  if (memory->ram_size() != config_.memory_bytes)
    throw state::StateError("the incoming RAM and the configuration differ in size");
  build(std::move(engine_factory), std::move(memory), &state);
}

void Machine::build(EngineFactory engine_factory, std::unique_ptr<GuestMemory> memory,
                    const state::Document* snapshot) {
  start_paused_ = config_.start_paused;
  created_ns_ = BootProgress::now_ns();
  serial_outputs_.push_back(
      [](std::span<const uint8_t> bytes) { write_all(STDOUT_FILENO, bytes); });

  memory_ = std::move(memory);
  if (!engine_factory) engine_factory = default_engine_factory();
  engine_ = engine_factory(config_.accel, EngineContext{*memory_, pio_, mmio_},
                           EngineConfig{.vcpus = config_.cpus,
                                        .emu_tier = config_.emu_tier,
                                        .emu_hot_threshold = config_.emu_hot_threshold,
                                        .cpu_model = config_.cpu_model});
  if (config_.cpus > engine_->max_vcpus())
    throw Error("the " + engine_->name() + " engine runs at most " +
                std::to_string(engine_->max_vcpus()) + " vCPUs, " + std::to_string(config_.cpus) +
                " requested");

  build_devices();
  for (uint32_t i = 0; i < config_.cpus; ++i) vcpus_.push_back(engine_->create_vcpu(i));
  if (snapshot)
    restore_state(*snapshot);
  else
    load_guest();
}

Machine::~Machine() {
  shutdown(ShutdownReason::kQuit, "machine destroyed");
  join_vcpus();
}

void Machine::build_devices() {
  InterruptController* irqs = &engine_->interrupts();

  serial_ = std::make_shared<Serial16550>(
      IrqLine(irqs, Serial16550::kCom1Irq),
      // serial_outputs_ is fixed before the vCPU threads start (set_serial_output()).
      [this](std::span<const uint8_t> bytes) {
        for (auto& out : serial_outputs_) out(bytes);
      });
  pio_.add(Serial16550::kCom1Base, Serial16550::kPortCount, serial_);
  // Linux empties the receiver when its driver starts: input typed while it boots waits on the host.
  if (config_.test_guest.empty()) serial_->hold_input_until_driver_ready();

  i8042_ = std::make_shared<I8042>(*this, IrqLine(irqs, I8042::kKeyboardIrq),
                                   IrqLine(irqs, I8042::kAuxIrq));
  pio_.add(I8042::kDataPort, 1, i8042_);
  pio_.add(I8042::kCommandPort, 1, I8042::command_port(i8042_));

  const uint64_t low_ram = memory_->regions()[0].size;
  rtc_ = std::make_shared<CmosRtc>(low_ram, memory_->ram_size() - low_ram);
  pio_.add(CmosRtc::kBase, CmosRtc::kPortCount, rtc_);

  BootProgress::Listener trace;
  if (config_.trace_boot) {
    trace = [start = created_ns_](const BootProgress::Event& e) {
      // One line per code, parseable by the benchmarks: the absolute CLOCK_MONOTONIC stamp lets
      // a parent process compare it with its own clock.
      std::fprintf(stderr, "keel: boot-progress code=%u (%s) monotonic_ns=%" PRIu64
                           " since_start_ms=%.3f\n",
                   e.code, boot_progress_name(e.code), e.monotonic_ns,
                   static_cast<double>(e.monotonic_ns - start) / 1e6);
    };
  }
  boot_progress_ = std::make_shared<BootProgress>(std::move(trace));
  pio_.add(BootProgress::kPort, 1, boot_progress_);

  // QEMU's fw_cfg (the guest loader adds the kernel, initrd and command line) and, when asked
  // for, isa-debug-exit: what test kernels such as kvm-unit-tests talk to.
  fw_cfg_ = std::make_shared<FwCfg>(*memory_, memory_->ram_size(), static_cast<uint16_t>(config_.cpus));
  pio_.add(FwCfg::kBasePort, FwCfg::kPortCount, fw_cfg_);
  if (config_.isa_debug_exit)
    pio_.add(IsaDebugExit::kBasePort, IsaDebugExit::kPortCount, std::make_shared<IsaDebugExit>([this](int status) {
               shutdown(ShutdownReason::kPowerOff, "isa-debug-exit: status " + std::to_string(status), false,
                        status);
             }));

  // PCI bus 0 and the virtio devices (devices/virtio/virtio_platform.h). hvc0 output goes to the
  // same sinks as the serial port. On KVM, queue notifications become ioeventfds: a kick signals
  // the device's eventfd inside KVM instead of exiting to the vCPU thread.
  pci_ = std::make_unique<PciPlatform>(config_.virtio, *memory_, pio_, mmio_, *irqs,
                                       [this](std::span<const uint8_t> bytes) {
                                         for (auto& out : serial_outputs_) out(bytes);
                                       });
  if (auto* kvm = dynamic_cast<KvmEngine*>(engine_.get()))
    pci_->route_notifications(
        [kvm](uint64_t gpa, int fd) { kvm->add_ioeventfd(IoSpace::kMmio, gpa, 2, std::nullopt, fd); },
        [kvm](uint64_t gpa, int fd) {
          kvm->remove_ioeventfd(IoSpace::kMmio, gpa, 2, std::nullopt, fd);
        });
  pci_->set_thread_launcher(&launcher_);
  acpi_devices_.push_back(pci_root_bridge_aml());  // \_SB.PCI0: Linux scans PCI through it

  if (!config_.test_guest.empty())
    pio_.add(kTestGuestExitPort, 1, std::make_shared<TestGuestExit>(*this));
  // ACPI fixed hardware: S5 power-off, the reset register, the power button. Test guests get it
  // too, with the tables (guest_loader.cc), so management tests can press the button.
  acpi_pm_ = std::make_shared<AcpiPm>(*this, IrqLine(irqs, AcpiPm::kSciIrq));
  pio_.add(AcpiPm::kBasePort, AcpiPm::kPortCount, acpi_pm_);

  // pvpanic, described in the DSDT as QEMU describes it, so Linux's pvpanic driver reports panics.
  pvpanic_ = std::make_shared<PvPanic>(*this);
  pio_.add(PvPanic::kPort, 1, pvpanic_);
  namespace aml = x86::acpi::aml;
  acpi_devices_.push_back(aml::device(
      "PEVT", {aml::name("_HID", aml::string("QEMU0001")),
               aml::name("_CRS", aml::ResourceTemplate().io(PvPanic::kPort, PvPanic::kPort, 1, 1).build()),
               aml::name("_STA", aml::integer(0x0F))}));
}

void Machine::load_guest() {
  GuestImage image{*memory_, config_, vcpu_count(), acpi_devices_};
  image.fw_cfg = fw_cfg_.get();
  image.decompress_on_host = engine_->name() == "emu";
  if (config_.boot == VmConfig::Boot::kDisk) image.boot_disk = &pci_->disk(0);
  std::vector<x86::CpuState> states =
      config_.test_guest.empty() ? load_linux_guest(image) : load_test_guest(image);
  for (size_t i = 0; i < vcpus_.size() && i < states.size(); ++i) {
    vcpus_[i]->set_state(states[i]);
    // Test guests start every vCPU in 64-bit mode; Linux brings up the others with INIT/SIPI.
    if (i > 0) vcpus_[i]->make_runnable();
  }
}

void Machine::set_serial_output(ConsoleOutput output) {
  serial_outputs_.clear();
  serial_outputs_.push_back(std::move(output));
}

void Machine::add_serial_output(ConsoleOutput output) { serial_outputs_.push_back(std::move(output)); }

std::vector<long> Machine::vcpu_thread_ids() const {
  std::lock_guard lock(mutex_);
  std::vector<long> ids = thread_ids_;
  ids.resize(vcpus_.size());
  return ids;
}

std::vector<x86::CpuState> Machine::vcpu_states() {
  std::unique_lock lock(mutex_);
  const bool stop = state_ == MachineState::kRunning;
  if (stop) {
    state_ = MachineState::kPaused;
    for (auto& vcpu : vcpus_) vcpu->kick();
    changed_.wait(lock, [&] {
      return state_ != MachineState::kPaused || parked_ + halted_ + exited_ == vcpus_.size();
    });
  }
  std::vector<x86::CpuState> states;
  if (state_ != MachineState::kShutDown)
    for (auto& vcpu : vcpus_) states.push_back(vcpu->get_state());
  if (stop && state_ == MachineState::kPaused && !panicked_) {  // a panic meanwhile stays paused
    state_ = MachineState::kRunning;
    lock.unlock();
    changed_.notify_all();
  }
  return states;
}

void Machine::add_listener(std::function<void(const MachineEvent&)> listener) {
  listeners_.push_back(std::move(listener));
}

MachineState Machine::state() const {
  std::lock_guard lock(mutex_);
  return state_;
}

void Machine::start() {
  MachineEvent event{};
  {
    std::lock_guard lock(mutex_);
    if (state_ != MachineState::kCreated) return;  // shut down before it started, or twice
    // A restored machine's devices start working now, on the launcher the VMM confined.
    if (restored_) set_devices_quiesced(false);
    state_ = start_paused_ ? MachineState::kPaused : MachineState::kRunning;
    event.state = state_;
    for (auto& vcpu : vcpus_)
      threads_.push_back(launcher_.start(sandbox::ThreadKind::kVcpu,
                                         "keel-vcpu" + std::to_string(vcpu->index()),
                                         [this, v = vcpu.get()] { vcpu_thread(*v); }));
  }
  changed_.notify_all();
  for (auto& l : listeners_) l(event);
}

ShutdownInfo Machine::run() {
  start();
  try {
    loop_.run();
  } catch (const std::exception& e) {
    shutdown(ShutdownReason::kError, e.what());
  }
  ShutdownInfo info = wait();
  join_vcpus();
  return info;
}

void Machine::pause() {
  MachineEvent event{MachineState::kPaused, {}};
  {
    std::unique_lock lock(mutex_);
    if (state_ == MachineState::kCreated) {
      start_paused_ = true;  // not started yet: the vCPUs will start paused
      return;
    }
    if (state_ != MachineState::kRunning) return;
    state_ = MachineState::kPaused;
    for (auto& vcpu : vcpus_) vcpu->kick();
    changed_.wait(lock, [&] {
      return state_ != MachineState::kPaused || parked_ + halted_ + exited_ == vcpus_.size();
    });
    if (state_ != MachineState::kPaused) return;  // resumed or shut down meanwhile
  }
  for (auto& l : listeners_) l(event);
}

void Machine::resume() {
  {
    std::lock_guard lock(mutex_);
    if (state_ == MachineState::kCreated) {
      start_paused_ = false;
      return;
    }
    if (state_ != MachineState::kPaused) return;
    state_ = MachineState::kRunning;
    panicked_ = false;
  }
  changed_.notify_all();
  MachineEvent event{MachineState::kRunning, {}};
  for (auto& l : listeners_) l(event);
}

void Machine::shutdown(ShutdownReason reason, std::string detail, bool by_host, int exit_status) {
  MachineEvent event{MachineState::kShutDown, {reason, std::move(detail), by_host, exit_status}};
  {
    std::lock_guard lock(mutex_);
    if (state_ == MachineState::kShutDown) return;
    state_ = MachineState::kShutDown;
    shutdown_ = event.shutdown;
    for (auto& vcpu : vcpus_) vcpu->kick();
  }
  changed_.notify_all();
  loop_.stop();
  for (auto& l : listeners_) l(event);
}

void Machine::request_stop(StopReason reason, std::string detail) {
  switch (reason) {
    case StopReason::kPowerOff: return shutdown(ShutdownReason::kPowerOff, std::move(detail));
    case StopReason::kReset: return shutdown(ShutdownReason::kReset, std::move(detail));
    case StopReason::kPanic:
      if (config_.on_panic == PanicAction::kPause) return pause_for_panic(std::move(detail));
      return shutdown(ShutdownReason::kPanicked, std::move(detail));
  }
}

// As pause(), but from any thread, a vCPU's included (pvpanic writes come from one): the state
// changes and every vCPU is kicked; nobody waits for them to park.
void Machine::pause_for_panic(std::string detail) {
  {
    std::lock_guard lock(mutex_);
    // Paused already: by the user (no vCPU runs, so none can panic) or by vcpu_states(), which
    // then leaves the machine paused.
    if ((state_ != MachineState::kRunning && state_ != MachineState::kPaused) || panicked_) return;
    state_ = MachineState::kPaused;
    panicked_ = true;
    for (auto& vcpu : vcpus_) vcpu->kick();
  }
  changed_.notify_all();
  MachineEvent event{MachineState::kPaused, {ShutdownReason::kPanicked, std::move(detail)}, true};
  for (auto& l : listeners_) l(event);
}

bool Machine::panicked() const {
  std::lock_guard lock(mutex_);
  return panicked_;
}

ShutdownInfo Machine::wait() {
  std::unique_lock lock(mutex_);
  changed_.wait(lock, [&] { return state_ == MachineState::kShutDown; });
  return shutdown_;
}

void Machine::join_vcpus() {
  for (auto& t : threads_)
    if (t.joinable()) t.join();
}

void Machine::vcpu_thread(Vcpu& vcpu) {
  const std::string name = "vCPU " + std::to_string(vcpu.index());
  pthread_setname_np(pthread_self(), ("keel-vcpu" + std::to_string(vcpu.index())).c_str());
  {
    std::lock_guard lock(mutex_);
    thread_ids_.resize(vcpus_.size());
    thread_ids_[vcpu.index()] = static_cast<long>(gettid());
  }
  try {
    while (true) {
      {
        std::unique_lock lock(mutex_);
        if (state_ == MachineState::kPaused) {
          ++parked_;
          changed_.notify_all();
          changed_.wait(lock, [&] { return state_ != MachineState::kPaused; });
          --parked_;
        }
        if (state_ == MachineState::kShutDown) break;
      }
      VcpuExit exit = vcpu.run();
      switch (exit) {
        case VcpuExit::kStopped:
          continue;  // pause or shutdown: the state says which
        case VcpuExit::kShutdown:
          shutdown(ShutdownReason::kTripleFault, name + ": triple fault");
          break;
        case VcpuExit::kReset:
          shutdown(ShutdownReason::kReset, "guest reset");
          break;
        case VcpuExit::kPowerOff:
          shutdown(ShutdownReason::kPowerOff, "guest power off");
          break;
        case VcpuExit::kHalted: {
          // This vCPU can never run again; the machine ends when none can.
          std::unique_lock lock(mutex_);
          ++halted_;
          changed_.notify_all();
          if (halted_ == vcpus_.size()) {
            lock.unlock();
            shutdown(ShutdownReason::kHalted, "every vCPU halted with interrupts disabled");
            lock.lock();
          }
          changed_.wait(lock, [&] { return state_ == MachineState::kShutDown; });
          break;
        }
      }
    }
  } catch (const std::exception& e) {
    shutdown(ShutdownReason::kError, name + ": " + e.what());
  }
  std::lock_guard lock(mutex_);
  thread_ids_[vcpu.index()] = 0;
  ++exited_;
  changed_.notify_all();
}

sandbox::SyscallPolicy Machine::syscall_policy() const {
  using sandbox::ThreadKind;
  sandbox::SyscallPolicy policy;
  policy.allow(ThreadKind::kVcpu, vcpu_syscalls(engine_->name()));
  policy.allow(ThreadKind::kVcpu, PciPlatform::vcpu_syscalls());
  policy.allow(ThreadKind::kDeviceWorker, pci_->worker_syscalls());
  policy.allow(ThreadKind::kMainLoop, main_thread_syscalls(engine_->name()));
  policy.allow(ThreadKind::kMainLoop, pci_->teardown_syscalls());
  // The main loop: epoll, its eventfd, timers and signalfd; the log's rotation (LogFile); at the
  // end, joining the other threads and tearing the machine down.
  policy.allow(ThreadKind::kMainLoop, {
      {"epoll_wait"}, {"epoll_pwait"}, {"epoll_ctl"}, {"read"}, {"poll"}, {"ppoll"},
      {"timerfd_settime"}, {"timerfd_gettime"},
      {"ftruncate"}, {"copy_file_range"},
  });
  // snapshot-save (machine_snapshot.cc) writes its files from the main loop. Under lock-down the
  // root is an empty read-only tmpfs, so these fail there with an error the client sees (EROFS,
  // ENOENT) instead of killing the VMM.
  policy.allow(ThreadKind::kMainLoop, {
      {"openat"}, {"mkdir"}, {"mkdirat"}, {"pwrite64"}, {"pread64"}, {"fsync"}, {"lseek"},
      {"rename"}, {"renameat"}, {"renameat2"}, {"newfstatat"}, {"fstat"}, {"statx"},
  });
  // Live migration over a socket the daemon connected and passed (migrate "fd:NAME"): the
  // migration thread is a main-loop thread that sends RAM and state and waits for the answer.
  policy.allow(ThreadKind::kMainLoop, {{"sendto"}, {"recvfrom"}, {"getsockopt"}});
  // A snapshot or a failed migration lets the quiesced virtio devices go on from the main loop
  // or the migration thread: activation, as on a vCPU (eventfds, worker threads).
  policy.allow(ThreadKind::kMainLoop, PciPlatform::vcpu_syscalls());
  return policy;
}

}  // namespace keel
