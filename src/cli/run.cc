// keel run: boots one VM with its serial console on the terminal and exits when it ends.
#include <CLI/CLI.hpp>

#include <elf.h>
#include <signal.h>
#include <sys/epoll.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <filesystem>
#include <memory>
#include <optional>
#include <string>

#include "backends/console/raw_terminal.h"
#include "backends/console/terminal_console.h"
#include "base/error.h"
#include "boot/multiboot.h"
#include "control/machine_target.h"
#include "base/fd.h"
#include "base/log.h"
#include "base/log_file.h"
#include "base/size.h"
#include "cli/verbs.h"
#include "devices/legacy/boot_progress.h"
#include "devices/legacy/serial16550.h"
#include "devices/virtio/virtio_console.h"
#include "devices/virtio/virtio_platform.h"
#include "engine/engine_factory.h"
#include "engine/kvm/kvm_probe.h"
#include "sandbox/confinement.h"
#include "vm/default_guest.h"
#include "vm/machine.h"
#include "vm/migration.h"
#include "vm/snapshot.h"

namespace keel::cli {
namespace {

struct RunOptions {
  std::string kernel, initrd, test_guest, control, log_file;
  std::string restore;   // --restore DIR: the VM saved there instead of a new one
  std::vector<std::string> restore_files;  // --restore-files STATE,MEMORY: the daemon's, one by one
  std::string incoming;  // --incoming URI: the VM a `migrate` sends there
  int ready_fd = -1;  // --ready-fd: told once the control socket listens (the daemon's spawn)
  std::optional<std::string> cmdline;
  std::string memory = "512M";
  uint32_t cpus = 1;
  std::string accel = "auto";
  std::string cpu = "host";  // --cpu: the CPU model the guest is shown
  std::string emu_tier = "jit";
  uint32_t emu_hot_threshold = EngineConfig{}.emu_hot_threshold;
  bool paused = false;
  bool trace_boot = false;
  bool verify_memory = false;  // --verify-memory: a restore reads and checks all of RAM first
  bool isa_debug_exit = false;
  bool pvh = false;
  std::vector<std::string> disks, nets;  // --disk, --net (issue 4)
  std::string boot = "kernel", boot_entry;
  std::string cloud_init, name = "keel";  // --boot disk: the first disk's own menu (issue 14)
  std::string console = "serial";
  bool rng = true;
  std::string sandbox;       // "on" | "off"; empty: on when run as root
  uint32_t sandbox_uid = 0;  // 0: sandbox::default_vmm_id()
  std::string test_seccomp_violation;  // hidden: "vcpu", "device" or "main"
  std::string on_panic = "exit";       // --on-panic exit|pause
  bool force = false;                  // --force: --accel kvm even where the probe says no
  std::optional<std::string> exec;     // --exec CMD: the default guest runs CMD, then powers off
  uint32_t silence_warning = 30;       // seconds of a silent boot before keel says so (0: never)
};

VmConfig make_config(const RunOptions& o) {
  VmConfig c;
  c.kernel = o.kernel;
  c.initrd = o.initrd;
  c.test_guest = o.test_guest;
  if (o.cmdline) c.cmdline = *o.cmdline;
  try {
    c.memory_bytes = parse_size(o.memory, 1 << 20);  // a bare number is MiB, as QEMU's -m
  } catch (const UsageError&) {
    throw;
  } catch (const Error& e) {
    throw UsageError(std::string("--memory: ") + e.what());
  }
  c.cpus = o.cpus;
  c.accel = parse_accel(o.accel);
  if (auto model = x86::parse_cpu_model(o.cpu))
    c.cpu_model = *model;
  else
    throw UsageError("--cpu: '" + o.cpu + "' is not a CPU model (host, baseline)");
  c.emu_tier = o.emu_tier == "interp" ? EmuTier::kInterp : EmuTier::kJit;
  c.emu_hot_threshold = o.emu_hot_threshold;
  c.name = o.name;
  c.on_panic = o.on_panic == "pause" ? PanicAction::kPause : PanicAction::kExit;
  c.control_socket = o.control;
  c.start_paused = o.paused;
  c.trace_boot = o.trace_boot;
  c.verify_snapshot_memory = o.verify_memory;
  c.isa_debug_exit = o.isa_debug_exit;
  c.pvh = o.pvh;
  for (const auto& d : o.disks) c.virtio.disks.push_back(parse_disk_option(d));
  for (const auto& n : o.nets) c.virtio.nets.push_back(parse_net_option(n));
  c.virtio.console = o.console == "virtio";
  if (!o.cloud_init.empty()) c.virtio.cloud_init = parse_cloud_init_option(o.cloud_init);
  c.virtio.vm_name = o.name;
  c.boot = o.boot == "disk" ? VmConfig::Boot::kDisk : VmConfig::Boot::kKernel;
  c.boot_entry = o.boot_entry;
  if (c.boot == VmConfig::Boot::kDisk) c.validate();  // --boot disk with --kernel etc.
  else if (!c.boot_entry.empty()) throw UsageError("--boot-entry needs --boot disk");
  c.virtio.rng = o.rng;
  if (!c.kernel.empty() && !c.test_guest.empty())
    throw UsageError("--kernel and --test-guest are mutually exclusive");
  if (!c.test_guest.empty() && (!c.initrd.empty() || o.cmdline))
    throw UsageError("--initrd and --cmdline apply to a Linux kernel, not to --test-guest");
  if (o.exec && !c.test_guest.empty())
    throw UsageError("--exec runs a command in the default guest's init, not in a --test-guest");
  if (o.exec && !c.control_socket.empty())
    throw UsageError("--exec and --control are for different uses (a command, a managed VM)");
  if (o.exec && o.exec->empty()) throw UsageError("--exec needs a command");
  if (c.pvh && (!c.test_guest.empty() || c.boot == VmConfig::Boot::kDisk))
    throw UsageError("--pvh applies to a Linux kernel (--kernel or the default guest)");
  c.validate_resources();
  return c;
}

void require_file(const std::filesystem::path& path, const char* what) {
  std::error_code ec;
  if (!std::filesystem::exists(path, ec))
    throw Error(std::string(what) + " " + path.string() + " does not exist");
  if (std::filesystem::is_directory(path, ec))
    throw Error(std::string(what) + " " + path.string() + " is a directory");
  if (::access(path.c_str(), R_OK) != 0) throw_errno(std::string(what) + " " + path.string());
}

// Termination signals become an orderly shutdown through a signalfd on the main loop, so the
// terminal is restored and the guest's last output flushed. They are blocked before the vCPU
// threads exist, so those inherit the mask and the signalfd is the only receiver.
class TerminationSignals {
 public:
  TerminationSignals() {
    sigemptyset(&set_);
    for (int sig : {SIGINT, SIGTERM, SIGHUP, SIGQUIT}) sigaddset(&set_, sig);
    if (pthread_sigmask(SIG_BLOCK, &set_, &old_) != 0) throw Error("pthread_sigmask failed");
    fd_.reset(::signalfd(-1, &set_, SFD_NONBLOCK | SFD_CLOEXEC));
    if (!fd_) throw_errno("signalfd");
  }
  ~TerminationSignals() { pthread_sigmask(SIG_SETMASK, &old_, nullptr); }

  void watch(Machine& machine) {
    machine.loop().add_fd(fd_.get(), EPOLLIN, [this, &machine](uint32_t) {
      signalfd_siginfo info{};
      if (::read(fd_.get(), &info, sizeof info) != sizeof info) return;
      machine.shutdown(ShutdownReason::kQuit,
                       std::string("terminated by ") + sigabbrev_np(static_cast<int>(info.ssi_signo)));
    });
  }

 private:
  sigset_t set_{}, old_{};
  UniqueFd fd_;
};

// `--ready-fd N`: "R" on N once the control socket listens, then N is closed. The daemon waits
// on this pipe (and the VMM's pidfd) instead of polling for the socket file. A VMM that fails
// before writes "E" and its error instead: the daemon reports exactly that, not a log tail with
// hints meant for a terminal.
class ReadyPipe {
 public:
  explicit ReadyPipe(int fd) : fd_(fd) {}
  ~ReadyPipe() { close(); }
  void ready() { send("R"); }
  void fail(const std::string& message) { send("E" + message.substr(0, 4000)); }

 private:
  void send(const std::string& bytes) {
    if (fd_ < 0) return;
    std::string_view rest = bytes;
    while (!rest.empty()) {
      ssize_t n = ::write(fd_, rest.data(), rest.size());
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) break;
      rest.remove_prefix(static_cast<size_t>(n));
    }
    close();
  }
  void close() {
    if (fd_ >= 0) ::close(fd_);
    fd_ = -1;
  }
  int fd_;
};

// --exec: the default guest's /init finds the command on the kernel command line (base64, so
// that any bytes survive the kernel's parsing), runs it with its output on the console, writes
// boot-progress code 2 and then the command's exit status (0-255), and powers off.
constexpr uint8_t kExecStatusFollows = 2;

std::string base64(std::string_view bytes) {
  static const char kDigits[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  std::string out;
  for (size_t i = 0; i < bytes.size(); i += 3) {
    uint32_t v = uint32_t(uint8_t(bytes[i])) << 16;
    if (i + 1 < bytes.size()) v |= uint32_t(uint8_t(bytes[i + 1])) << 8;
    if (i + 2 < bytes.size()) v |= uint8_t(bytes[i + 2]);
    out += kDigits[v >> 18 & 63];
    out += kDigits[v >> 12 & 63];
    out += i + 1 < bytes.size() ? kDigits[v >> 6 & 63] : '=';
    out += i + 2 < bytes.size() ? kDigits[v & 63] : '=';
  }
  return out;
}

// Whether `kernel` is a purpose-built test kernel rather than a stock Linux: multiboot
// (kvm-unit-tests), or a 32-bit ELF with a PVH entry (its first 8 KiB decide; boot/multiboot.h).
bool is_test_kernel(const std::filesystem::path& kernel) {
  if (kernel.empty()) return false;
  std::ifstream in(kernel, std::ios::binary);
  std::vector<uint8_t> head(8192);
  in.read(reinterpret_cast<char*>(head.data()), static_cast<std::streamsize>(head.size()));
  head.resize(static_cast<size_t>(in.gcount()));
  switch (boot::detect_boot_protocol(head)) {
    case boot::BootProtocol::kMultiboot: return true;
    case boot::BootProtocol::kPvh: return head.size() > EI_CLASS && head[EI_CLASS] == ELFCLASS32;
    case boot::BootProtocol::kLinux: return false;
  }
  return false;
}

// The status the guest reported after boot-progress code 2, if it did.
std::optional<int> exec_status(const std::vector<BootProgress::Event>& events) {
  for (size_t i = 0; i + 1 < events.size(); ++i)
    if (events[i].code == kExecStatusFollows) return events[i + 1].code;
  return std::nullopt;
}

// Says so on stderr when a booting guest has printed nothing on its console for `after` seconds
// of running: a kernel the engine cannot run, or one without a console on keel's ports, looks
// like a hang otherwise. Quiet from the first console byte or once init started (boot-progress).
class SilenceWatch {
 public:
  SilenceWatch(Machine& machine, uint32_t after) {
    if (after == 0) return;
    auto printed = std::make_shared<std::atomic<bool>>(false);
    machine.add_serial_output([printed](std::span<const uint8_t> bytes) {
      if (!bytes.empty()) printed->store(true, std::memory_order_relaxed);
    });
    auto second = std::chrono::seconds(1);
    machine.loop().add_timer(second, second, [&machine, printed, after, silent = 0u]() mutable {
      if (silent > after || printed->load(std::memory_order_relaxed)) return;
      if (!machine.boot_progress().events().empty()) return;  // init runs: the boot is over
      if (machine.state() != MachineState::kRunning) return;  // paused time does not count
      if (++silent == after)
        log::warn("the guest has printed nothing on its console for {} s on the {} engine; if it "
                  "seems stuck, `keel probe` says whether KVM can run it (--accel emu runs any "
                  "guest), and Ctrl-A x quits",
                  after, machine.engine().name());
    });
  }
};

// The daemon hands its VMMs a token (KEEL_CONTROL_TOKEN) with which its own control connections
// always find a slot; it is taken out of the environment at once.
control::ControlServerOptions control_options() {
  control::ControlServerOptions options;
  if (const char* token = std::getenv("KEEL_CONTROL_TOKEN")) {
    options.daemon_token = token;
    ::unsetenv("KEEL_CONTROL_TOKEN");
  }
  return options;
}

// The one line keel prints when the VM ends, and the exit status.
int report(const ShutdownInfo& info) {
  if (info.exit_status >= 0) {
    std::fprintf(stderr, "keel: %s\n", info.detail.c_str());
    return info.exit_status;
  }
  switch (info.reason) {
    case ShutdownReason::kPowerOff:
      return 0;
    case ShutdownReason::kReset:
    case ShutdownReason::kTripleFault:
      log::info("guest reset ({})", info.detail);
      return 0;
    case ShutdownReason::kHalted:
      log::info("guest halted ({})", info.detail);
      return 0;
    case ShutdownReason::kQuit:
      log::info("{}", info.detail);
      return 0;
    case ShutdownReason::kError:
      log::error("{}", info.detail);
      return 1;
    case ShutdownReason::kPanicked:
      log::error("guest panicked ({})", info.detail);
      return 1;
  }
  return 1;
}

// --sandbox: on by default as root. begin() needs a single thread: it runs first.
std::optional<sandbox::Confinement> begin_sandbox(const RunOptions& options) {
  bool on = options.sandbox.empty() ? ::geteuid() == 0 : options.sandbox == "on";
  if (!on) return std::nullopt;
  return sandbox::Confinement::begin();
}

// After set-up, before the guest runs: the new root, the VMM's own uid, seccomp per thread kind.
void lock_down(sandbox::Confinement& confinement, Machine& machine, const RunOptions& options) {
  using sandbox::ThreadKind;
  confinement.lock_down({.uid = options.sandbox_uid,
                         .gid = 0,
                         .max_tasks = 64 + 4 * machine.vcpu_count()});
  sandbox::SyscallPolicy policy = machine.syscall_policy();
  policy.allow(ThreadKind::kControl, control::ControlServer::syscalls());
  policy.allow(ThreadKind::kMainLoop, TerminalConsole::syscalls());
  const std::string& v = options.test_seccomp_violation;
  if (!v.empty())
    machine.thread_launcher().test_violation_in(v == "vcpu"     ? ThreadKind::kVcpu
                                                : v == "device" ? ThreadKind::kDeviceWorker
                                                                : ThreadKind::kMainLoop);
  try {
    machine.thread_launcher().confine(policy, {ThreadKind::kMainLoop, ThreadKind::kControl});
  } catch (const Error& e) {
    // A kernel without seccomp: said, not fatal, as the rest of the sandbox.
    log::warn("sandbox: could not install seccomp filters: {}", e.what());
  }
  for (const auto& note : confinement.notes()) log::warn("sandbox: could not: {}", note);
}

int run_vm(const RunOptions& options, ReadyPipe& ready) {
  std::optional<sandbox::Confinement> confinement = begin_sandbox(options);
  // --log-file (the daemon's per-VM log): stdout and stderr go there, kept under 1 MiB.
  std::optional<LogFile> log_file;
  if (!options.log_file.empty()) {
    log_file.emplace(options.log_file);
    log::add_timestamps();
  }
  VmConfig config = make_config(options);
  if (options.ready_fd >= 0 && config.control_socket.empty())
    throw UsageError("--ready-fd needs --control");
  std::optional<migration::Incoming> incoming;
  std::optional<snapshot::Files> restore;
  if (!options.restore.empty() && !options.restore_files.empty())
    throw UsageError("--restore and --restore-files are mutually exclusive");
  if (!options.restore.empty()) restore = snapshot::Files::in(options.restore);
  if (options.restore_files.size() == 2) restore = snapshot::Files{options.restore_files[0], options.restore_files[1]};
  if (restore && !options.incoming.empty())
    throw UsageError("--restore and --incoming are mutually exclusive");
  if (options.verify_memory && !restore) throw UsageError("--verify-memory goes with --restore");
  if (restore || !options.incoming.empty()) {
    const char* flag = restore ? "--restore" : "--incoming";
    // Naming the VM as well (the daemon's VMMs do, from the definition it checked): the VM that
    // comes must be that one, whatever the snapshot or stream says.
    const bool names_vm = !options.kernel.empty() || !options.test_guest.empty() || !options.disks.empty() ||
                          !options.nets.empty() || !options.cloud_init.empty() || options.boot == "disk";
    if (names_vm && options.restore_files.empty() && options.incoming.rfind("fd:", 0) != 0)
      throw UsageError(std::string(flag) + " takes the VM's kernel, disks and networks from the VM it continues");
    VmConfig saved;
    if (!options.incoming.empty()) {
      const std::string what = "migration stream from " + options.incoming;
      if (options.incoming.rfind("fd:", 0) == 0) {
        // An inherited socket (the daemon's `keel migrate` listens for its VMM): listening, or
        // already connected to the source.
        UniqueFd fd(migration::parse_fd_uri(options.incoming));
        incoming = migration::is_listening(fd.get()) ? migration::receive(fd.get(), what)
                                                      : migration::receive_connected(std::move(fd), what);
      } else {
        UniqueFd listener = migration::listen_on(migration::parse_uri(options.incoming));
        std::fprintf(stderr, "keel: waiting for the incoming VM on %s\n", options.incoming.c_str());
        incoming = migration::receive(listener.get(), what);
      }
      saved = snapshot::config_of(incoming->state);
    } else {
      saved = snapshot::config_of(snapshot::read_state_file(restore->state));
    }
    // --accel names the engine to continue on (the saved one by default): another engine is
    // refused with the reason (engine/engine_state.h) unless it can take the state.
    if (options.accel != "auto") saved.accel = config.accel;
    if (names_vm) {
      snapshot::check_same_vm(saved, config);
      saved.on_panic = config.on_panic;  // the daemon's policy (--on-panic pause), not the saved one
    }
    // The guest's configuration is the one it was saved or sent with; where it is served from is
    // this run's.
    saved.control_socket = config.control_socket;
    saved.start_paused = config.start_paused;
    saved.trace_boot = config.trace_boot;
    saved.verify_snapshot_memory = config.verify_snapshot_memory;
    config = std::move(saved);
  } else {
    if (!config.kernel.empty()) require_file(config.kernel, "kernel");
    // A multiboot kernel's modules may be QEMU's list, "file args,file args".
    if (!config.initrd.empty() && !std::filesystem::exists(config.initrd))
      for (const auto& module : boot::parse_module_list(config.initrd.string())) require_file(module.path, "initrd");
    if (!config.test_guest.empty()) require_file(config.test_guest, "test guest");

    apply_guest_defaults(config);
    if (config.accel == Accel::kAuto) {
      EngineChoice choice = choose_engine(Accel::kAuto, probe_kvm());
      log::info("{}", choice.reason);
      config.accel = choice.accel;
    } else if (config.accel == Accel::kKvm && config.test_guest.empty() && !options.force &&
               !is_test_kernel(config.kernel)) {
      // A stock kernel on a KVM that cannot run one hangs or dies without a word: refuse first.
      // (Multiboot and 32-bit PVH kernels, kvm-unit-tests among them, are purpose-built: they
      // are let run.)
      KvmProbeResult probe = probe_kvm();
      if (!probe.can_run_stock_kernel()) {
        bool terminal = options.ready_fd < 0;  // the daemon's VMMs report to the API, not a user
        // --force only helps where there is a KVM to try.
        std::string hint = probe.device_ok ? "; use --accel emu (or auto), or --force to try KVM anyway"
                                           : "; use --accel emu (or auto)";
        throw Error(probe.verdict() + (terminal ? hint : ""));
      }
    }
    // --console virtio: the default command line's console moves from ttyS0 to hvc0.
    if (config.virtio.console && !options.cmdline)
      if (auto at = config.cmdline.find("console=ttyS0"); at != std::string::npos)
        config.cmdline.replace(at, 13, "console=hvc0");
    // --exec: the kernel keeps quiet, so the console shows the command's output alone.
    if (options.exec) config.cmdline += " quiet keel.exec=" + base64(*options.exec);
  }
  config.validate();

  ::signal(SIGPIPE, SIG_IGN);  // a closed stdout drops console output, it does not kill keel
  TerminationSignals signals;
  std::unique_ptr<Machine> owned;
  if (incoming) {
    owned = std::make_unique<Machine>(config, std::move(incoming->memory), incoming->state);
    // The source stops for good once it hears that this machine exists.
    uint8_t ack = migration::kAck;
    if (::send(incoming->connection.get(), &ack, 1, MSG_NOSIGNAL) != 1)
      throw Error("migration: the source went away before the VM was taken over");
    incoming.reset();
  } else if (restore) {
    owned = std::make_unique<Machine>(config, *restore);
  } else {
    owned = std::make_unique<Machine>(config);
  }
  Machine& machine = *owned;
  signals.watch(machine);
  if (log_file) {
    auto second = std::chrono::seconds(1);
    machine.loop().add_timer(second, second, [&log_file] { log_file->check(); });
  }
  machine.set_serial_output(TerminalConsole::output(STDOUT_FILENO));
  SilenceWatch silence(machine, options.silence_warning);

  // The control socket (issue 5): events, commands and the console stream for the daemon.
  std::unique_ptr<control::MachineControl> control;
  if (!config.control_socket.empty()) {
    control = std::make_unique<control::MachineControl>(machine, config.control_socket.string(),
                                                        control_options());
    if (confinement) lock_down(*confinement, machine, options);
    ready.ready();
    ShutdownInfo info = machine.run();
    control.reset();  // SHUTDOWN reaches the clients before keel exits
    return report(info);
  }

  if (confinement) lock_down(*confinement, machine, options);
  if (options.exec) {
    // The command's output on stdout, its status as keel's; keel's stdin stays unread (a script
    // calling keel in a loop keeps its input) and the terminal as it is (Ctrl-C ends keel).
    ShutdownInfo info = machine.run();
    std::optional<int> status = exec_status(machine.boot_progress().events());
    if (info.reason == ShutdownReason::kPowerOff && status) return *status;
    if (report(info) != 0) return 1;
    log::error("the guest ended before it reported the command's exit status ({})", info.detail);
    return 1;
  }
  RawTerminal raw(STDIN_FILENO);
  ConsoleInput& console_device = config.virtio.console
                                     ? static_cast<ConsoleInput&>(*machine.pci().console())
                                     : machine.serial();
  TerminalConsole console(machine.loop(), STDIN_FILENO, STDOUT_FILENO, console_device,
                          [&machine] { machine.shutdown(ShutdownReason::kQuit, "quit (Ctrl-A x)"); });
  ShutdownInfo info = machine.run();
  raw.restore();
  return report(info);
}

int run(const RunOptions& options) {
  ReadyPipe ready(options.ready_fd);
  try {
    return run_vm(options, ready);
  } catch (const std::exception& e) {
    ready.fail(e.what());  // a start that fails before the VMM is ready (no-op after)
    throw;
  }
}

}  // namespace

void add_run_verb(CLI::App& app, Action& action) {
  auto o = std::make_shared<RunOptions>();
  CLI::App* sub = app.add_subcommand(
      "run", "Boot a VM with its serial console on this terminal (Ctrl-A x quits). With no "
             "--kernel, boots the default guest from $KEEL_GUEST_DIR or the build's guest/.");
  sub->add_option("--kernel", o->kernel, "Linux kernel: bzImage or ELF vmlinux")
      ->type_name("PATH");
  sub->add_option("--initrd", o->initrd, "initramfs for the kernel")
      ->type_name("PATH");
  sub->add_option("--cmdline", o->cmdline, "Kernel command line (default: console=ttyS0 ...)");
  sub->add_option("--memory,-m", o->memory, "Guest RAM, with a K/M/G suffix (bare number: MiB)")
      ->capture_default_str();
  sub->add_option("--cpus", o->cpus, "Number of vCPUs")
      ->capture_default_str()
      ->check(CLI::Range(1u, 255u));
  sub->add_option("--cpu", o->cpu,
                  "CPU model the guest is shown: host (all the engine runs) or baseline (the first "
                  "x86-64 CPUs' features: a guest saved on one engine or host finds them on another)")
      ->capture_default_str();
  sub->add_option("--accel", o->accel, "Engine: auto (probe KVM, else emu), kvm or emu")
      ->capture_default_str()
      ->check(CLI::IsMember({"auto", "kvm", "emu"}));
  sub->add_option("--emu-tier", o->emu_tier,
                  "emu: jit (interpret, then translate hot blocks to host code) or interp (the "
                  "interpreter alone, for debugging)")
      ->capture_default_str()
      ->envname("KEEL_EMU_TIER")
      ->check(CLI::IsMember({"jit", "interp"}));
  sub->add_option("--emu-hot-threshold", o->emu_hot_threshold,
                  "emu: interpreted runs of a block before it is translated (tuning)")
      ->envname("KEEL_EMU_HOT_THRESHOLD")
      ->check(CLI::Range(0u, 1u << 20))
      ->group("");
  sub->add_option("--control", o->control, "Serve the VM's control socket at this path")
      ->type_name("PATH");
  sub->add_option("--ready-fd", o->ready_fd,
                  "Write one byte to this inherited fd once the control socket listens")
      ->check(CLI::Range(3, 1 << 20))
      ->group("");  // for the daemon
  sub->add_flag("--paused", o->paused, "Start with the vCPUs stopped (resume through --control)");
  sub->add_option("--incoming", o->incoming,
                  "Wait for a VM migrated here from another keel (the control socket's migrate) on "
                  "unix:PATH, tcp:HOST:PORT or fd:N (an inherited socket, listening or connected), "
                  "then run it");
  sub->add_option("--restore", o->restore,
                  "Continue the VM saved in this snapshot directory (the control socket's "
                  "snapshot-save) instead of booting a new one");
  sub->add_option("--restore-files", o->restore_files,
                  "The state and memory files of a snapshot, one by one (as the daemon passes them)")
      ->delimiter(',')
      ->expected(2)
      ->group("");  // for the daemon
  sub->add_flag("--verify-memory", o->verify_memory,
                "With --restore: read the whole memory file and check every page's checksum before "
                "the VM runs (a restore otherwise maps RAM lazily and checks the file's size and "
                "identity only)");
  sub->add_option("--log-file", o->log_file,
                  "Append stdout and stderr to this file; past 1 MiB it moves to FILE.1 and a new "
                  "one starts")
      ->type_name("PATH");
  sub->add_flag("--trace-boot", o->trace_boot,
                "Print each boot-progress code (port 0x520) with its CLOCK_MONOTONIC time on "
                "stderr");
  sub->add_flag("--pvh", o->pvh,
                "Boot a Linux kernel through its PVH entry (the Xen PHYS32_ENTRY note of its vmlinux, or "
                "of the vmlinux inside a bzImage) instead of the 64-bit boot protocol");
  sub->add_flag("--isa-debug-exit", o->isa_debug_exit,
                "QEMU's isa-debug-exit device at port 0xF4: a guest write of V exits keel with status "
                "(V << 1) | 1, as test kernels such as kvm-unit-tests expect");
  sub->add_option("--disk", o->disks,
                  "Disk image PATH[,format=raw|qcow2][,readonly] (format detected when not given; "
                  "repeatable: vda, vdb, ...)")
      ->type_name("PATH");
  sub->add_option("--boot", o->boot,
                  "What to boot: kernel (--kernel, or the default guest) or disk (the first --disk's "
                  "own BLS entries or grub.cfg default entry, read from its ext4 /boot)")
      ->capture_default_str()
      ->check(CLI::IsMember({"kernel", "disk"}));
  sub->add_option("--boot-entry", o->boot_entry,
                  "With --boot disk: the menu entry to boot, by number or title (default: the menu's)");
  sub->add_option("--cloud-init", o->cloud_init,
                  "Attach a cloud-init NoCloud seed (a read-only 'cidata' disk after the --disks): "
                  "user-data=FILE[,meta-data=FILE][,network-config=FILE]");
  sub->add_option("--name", o->name,
                  "The VM's name (the control socket's query-name, the cloud-init seed's default "
                  "hostname)")
      ->capture_default_str();
  sub->add_option("--net", o->nets,
                  "Network: user[,hostfwd=tcp:HOSTPORT-:GUESTPORT]... (the default) or tap:IFNAME "
                  "(repeatable)")
      ->type_size(0, 1)  // a bare --net means user
      ->expected(0, CLI::detail::expected_max_vector_size)
      ->multi_option_policy(CLI::MultiOptionPolicy::TakeAll)
      ->default_str("user");
  sub->add_option("--console", o->console, "Guest console: serial (ttyS0) or virtio (hvc0)")
      ->capture_default_str()
      ->check(CLI::IsMember({"serial", "virtio"}));
  sub->add_flag("--rng,!--no-rng", o->rng, "virtio-rng entropy device (on by default)");
  sub->add_option("--sandbox", o->sandbox,
                  "Confine the VMM once it is set up: its own uid, no capabilities, an empty "
                  "root, seccomp per thread (on by default as root; says what it could not do)")
      ->check(CLI::IsMember({"on", "off"}));
  sub->add_option("--sandbox-uid", o->sandbox_uid, "The uid (and gid) the confined VMM runs as")
      ->check(CLI::Range(1u, 0xFFFFFFFEu));
  // For the sandbox tests: a thread of this kind makes a forbidden system call.
  sub->add_option("--test-seccomp-violation", o->test_seccomp_violation)
      ->check(CLI::IsMember({"vcpu", "device", "main"}))
      ->group("");
  // For the project's tests: a purpose-built guest (tests/guests/README.md), status port 0x504.
  sub->add_option("--test-guest", o->test_guest, "Flat 64-bit test guest binary")->group("")
      ->type_name("PATH");
  sub->add_option("--exec", o->exec,
                  "Default guest: run this shell command at boot, print its output, power off and "
                  "exit with its status (stdin is not passed to it)")
      ->type_name("CMD");
  sub->add_flag("--force", o->force,
                "With --accel kvm: boot even where `keel probe` says KVM cannot run a stock kernel");
  sub->add_option("--on-panic", o->on_panic,
                  "A guest panic (pvpanic) ends keel with status 1 (exit), or pauses the vCPUs and "
                  "reports GUEST_PANICKED on the control socket (pause)")
      ->capture_default_str()
      ->check(CLI::IsMember({"exit", "pause"}));
  sub->add_option("--silence-warning", o->silence_warning,
                  "Seconds a booting guest may print nothing before keel says so on stderr (0: "
                  "never)")
      ->capture_default_str()
      ->check(CLI::Range(0u, 86400u));
  sub->callback([o, &action] { action = [o] { return run(*o); }; });
}

}  // namespace keel::cli
