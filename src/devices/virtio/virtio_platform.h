// PciPlatform: the machine's PCI bus 0 (host bridge on 0xCF8-0xCFF) and the virtio devices a
// VirtioConfig asks for, in PCI slot order: disks (vda, vdb, ...), networks, console, rng.
// The Machine builds one in build_devices() and owns it; devices stop when it is destroyed.
#pragma once

#include <filesystem>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "backends/block/block_backend.h"
#include "backends/block/cloud_init_seed.h"
#include "backends/console/console_port.h"
#include "bus/io_bus.h"
#include "devices/pci/pci_bus.h"
#include "irq/interrupts.h"
#include "memory/guest_memory.h"
#include "sandbox/syscalls.h"

namespace keel {

namespace sandbox {
class ThreadLauncher;
}

class VirtioPciDevice;
class VirtioConsole;
class VirtioBlk;

struct DiskConfig {
  std::filesystem::path path;
  ImageFormat format = ImageFormat::kAuto;  // kAuto: detected from the image's header
  bool readonly = false;
};

struct NetConfig {
  enum class Kind { kUser, kTap } kind = Kind::kUser;
  std::vector<std::string> hostfwd;  // user: "tcp:HOSTPORT-:GUESTPORT", ...
  std::string tap;                   // tap: interface name
  bool host_loopback = false;        // user: may the guest reach the host's 127.0.0.1?
};

struct VirtioConfig {
  std::vector<DiskConfig> disks;
  // A NoCloud seed attached read-only after the disks; its default meta-data names `vm_name`.
  std::optional<CloudInitConfig> cloud_init;
  std::string vm_name = "keel";
  std::vector<NetConfig> nets;
  bool console = false;  // virtio-console (hvc0)
  bool rng = true;       // virtio-rng
};

// Command-line forms (keel run): "PATH[,format=raw|qcow2][,readonly]"; "user[,hostfwd=SPEC]...", "" (= user) and
// "tap:IFNAME". Throw UsageError naming the bad part.
DiskConfig parse_disk_option(const std::string& text);
NetConfig parse_net_option(const std::string& text);

class PciPlatform {
 public:
  // Opens the disks and backends (a missing or locked disk, a busy hostfwd port or an unusable tap
  // device throws Error naming it). `console_output` receives hvc0 output when config.console.
  PciPlatform(const VirtioConfig& config, GuestMemory& memory, IoBus& pio, IoBus& mmio,
              InterruptController& interrupts, ConsoleOutput console_output);
  ~PciPlatform();
  PciPlatform(const PciPlatform&) = delete;
  PciPlatform& operator=(const PciPlatform&) = delete;

  PciBus& bus() { return bus_; }
  // Disk i's backend (vda = 0), for reading it before the guest runs (booting from it).
  BlockBackend& disk(size_t i);
  // The virtio-console device, or nullptr when none was asked for.
  VirtioConsole* console() const { return console_; }
  const std::vector<std::shared_ptr<VirtioPciDevice>>& devices() const { return devices_; }

  // Queue notification eventfds for engines that can signal them without a vCPU exit (KVM
  // ioeventfd): `add(gpa, fd)` for each queue of each device that has one, and again (after
  // `remove(gpa, fd)`) whenever the guest moves the BAR. Call once, before the guest runs.
  using NotifyHook = std::function<void(uint64_t gpa, int fd)>;
  void route_notifications(NotifyHook add, NotifyHook remove);

  // Device worker threads start through `launcher` (the machine's).
  void set_thread_launcher(sandbox::ThreadLauncher* launcher);
  // The system calls of the device code that runs on vCPU threads (register writes, kicks,
  // activation) and of the device worker threads, for the machine's seccomp policy.
  static sandbox::AllowList vcpu_syscalls();
  // Each disk's image file size now (fstat of its open descriptor), in disk order.
  std::vector<uint64_t> disk_file_sizes() const;
  sandbox::AllowList worker_syscalls() const;
  // What tearing the devices down on the main loop needs: a disk image's last flush and trim
  // (qcow2 writes its refcounts and trims its free tail when it closes).
  sandbox::AllowList teardown_syscalls() const;

 private:
  void update_notifications(uint8_t slot);

  IoBus& pio_;
  PciBus bus_;
  std::vector<std::shared_ptr<VirtioPciDevice>> devices_;
  std::vector<uint8_t> slots_;
  std::vector<VirtioBlk*> disks_;
  VirtioConsole* console_ = nullptr;
  NotifyHook add_notify_, remove_notify_;
  std::vector<std::vector<std::pair<uint64_t, int>>> routed_;  // per device: (gpa, fd)
  VirtioConfig config_;  // what was built (the seccomp lists follow it)
};

}  // namespace keel
