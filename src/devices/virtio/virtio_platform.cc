#include "devices/virtio/virtio_platform.h"

#include <sys/stat.h>

#include "backends/block/block_backend.h"
#include "backends/net/slirp_backend.h"
#include "backends/net/tap_backend.h"
#include "base/error.h"
#include "devices/virtio/virtio_blk.h"
#include "devices/virtio/virtio_console.h"
#include "devices/virtio/virtio_net.h"
#include "devices/virtio/virtio_pci.h"
#include "devices/virtio/virtio_rng.h"

namespace keel {

DiskConfig parse_disk_option(const std::string& text) {
  DiskConfig disk;
  size_t comma = text.find(',');
  disk.path = text.substr(0, comma);
  if (disk.path.empty()) throw UsageError("--disk needs a path");
  while (comma != std::string::npos) {
    size_t next = text.find(',', comma + 1);
    std::string part = text.substr(comma + 1, next == std::string::npos ? std::string::npos : next - comma - 1);
    if (part == "readonly" || part == "ro") {
      disk.readonly = true;
    } else if (part.rfind("format=", 0) == 0) {
      std::string format = part.substr(7);
      if (format != "raw" && format != "qcow2")
        throw UsageError("--disk " + text + ": unknown format '" + format + "' (keel reads raw and qcow2)");
      disk.format = parse_image_format(format);
    } else {
      throw UsageError("--disk " + text + ": unknown option '" + part +
                       "' (expected format=raw|qcow2 or readonly)");
    }
    comma = next;
  }
  return disk;
}

NetConfig parse_net_option(const std::string& text) {
  NetConfig net;
  if (text.rfind("tap:", 0) == 0) {
    net.kind = NetConfig::Kind::kTap;
    net.tap = text.substr(4);
    if (net.tap.empty()) throw UsageError("--net tap: needs an interface name (tap:IFNAME)");
    return net;
  }
  // "user", "user,hostfwd=...,hostfwd=...", or "" (bare --net).
  size_t pos = 0;
  bool first = true;
  while (pos <= text.size()) {
    size_t comma = text.find(',', pos);
    std::string part = text.substr(pos, comma == std::string::npos ? std::string::npos : comma - pos);
    if (first && (part == "user" || part.empty())) {
      // the type
    } else if (part == "host-loopback=on" || part == "host-loopback=off") {
      net.host_loopback = part == "host-loopback=on";
    } else if (part.rfind("hostfwd=", 0) == 0) {
      std::string spec = part.substr(8);
      parse_host_forward(spec);  // validates now, so a typo is a usage error
      net.hostfwd.push_back(spec);
    } else {
      throw UsageError("--net " + text + ": unknown part '" + part +
                       "' (expected user[,hostfwd=tcp:HOSTPORT-:GUESTPORT][,host-loopback=on] or "
                       "tap:IFNAME)");
    }
    first = false;
    if (comma == std::string::npos) break;
    pos = comma + 1;
  }
  return net;
}

PciPlatform::PciPlatform(const VirtioConfig& config, GuestMemory& memory, IoBus& pio, IoBus& mmio,
                         InterruptController& interrupts, ConsoleOutput console_output)
    : pio_(pio), bus_(mmio) {
  config_ = config;
  std::vector<std::unique_ptr<VirtioDevice>> devs;
  for (size_t i = 0; i < config.disks.size(); ++i) {
    const DiskConfig& d = config.disks[i];
    std::string serial = "keel-vd" + std::string(1, static_cast<char>('a' + i % 26));
    auto blk = std::make_unique<VirtioBlk>(open_block_backend(d.path, d.format, d.readonly), serial);
    disks_.push_back(blk.get());
    devs.push_back(std::move(blk));
  }
  if (config.cloud_init) {
    std::string serial = "keel-cidata";
    devs.push_back(std::make_unique<VirtioBlk>(make_cloud_init_seed(*config.cloud_init, config.vm_name), serial));
  }
  for (size_t i = 0; i < config.nets.size(); ++i) {
    const NetConfig& n = config.nets[i];
    std::unique_ptr<NetBackend> backend;
    if (n.kind == NetConfig::Kind::kTap) {
      backend = std::make_unique<TapBackend>(n.tap);
    } else {
      std::vector<HostForward> fwd;
      for (const auto& spec : n.hostfwd) fwd.push_back(parse_host_forward(spec));
      backend = std::make_unique<SlirpBackend>(fwd, n.host_loopback);
    }
    devs.push_back(std::make_unique<VirtioNet>(std::move(backend), default_mac(i)));
  }
  if (config.console) {
    auto c = std::make_unique<VirtioConsole>(std::move(console_output));
    console_ = c.get();
    devs.push_back(std::move(c));
  }
  if (config.rng) devs.push_back(std::make_unique<VirtioRng>());

  for (auto& d : devs) {
    auto transport = std::make_shared<VirtioPciDevice>(std::move(d), memory, &interrupts);
    slots_.push_back(bus_.add(transport));
    devices_.push_back(std::move(transport));
  }
  routed_.resize(devices_.size());
  pio_.add(PciHostBridge::kPortBase, PciHostBridge::kPortCount, std::make_shared<PciHostBridge>(bus_));
}

PciPlatform::~PciPlatform() {
  pio_.remove(PciHostBridge::kPortBase);
  for (auto& d : devices_) d->shutdown();  // stop worker threads before anything else goes
  for (size_t i = 0; i < routed_.size(); ++i)
    for (auto& [gpa, fd] : routed_[i])
      if (remove_notify_) remove_notify_(gpa, fd);
}

BlockBackend& PciPlatform::disk(size_t i) {
  if (i >= disks_.size()) throw Error("no disk " + std::to_string(i));
  return disks_[i]->backend();
}

void PciPlatform::route_notifications(NotifyHook add, NotifyHook remove) {
  add_notify_ = std::move(add);
  remove_notify_ = std::move(remove);
  bus_.set_remap_listener([this](uint8_t slot) { update_notifications(slot); });
  for (uint8_t slot : slots_) update_notifications(slot);
}

void PciPlatform::update_notifications(uint8_t slot) {
  for (size_t i = 0; i < devices_.size(); ++i) {
    if (slots_[i] != slot) continue;
    for (auto& [gpa, fd] : routed_[i]) remove_notify_(gpa, fd);
    routed_[i].clear();
    uint64_t bar = bus_.mapped_address(slot, VirtioPciDevice::kRegionsBar);
    if (!bar) continue;
    VirtioDevice& dev = devices_[i]->device();
    for (uint16_t q = 0; q < dev.num_queues(); ++q) {
      int fd = dev.kick_fd(q);
      if (fd < 0) continue;
      uint64_t gpa = bar + VirtioPciDevice::kNotifyOffset + VirtioPciDevice::kNotifyMultiplier * q;
      add_notify_(gpa, fd);
      routed_[i].emplace_back(gpa, fd);
    }
  }
}

void PciPlatform::set_thread_launcher(sandbox::ThreadLauncher* launcher) {
  for (auto& d : devices_) d->set_thread_launcher(launcher);
}

std::vector<uint64_t> PciPlatform::disk_file_sizes() const {
  std::vector<uint64_t> sizes;
  for (VirtioBlk* disk : disks_) {
    struct stat st {};
    int fd = disk->backend().file_fd();
    if (fd < 0 || ::fstat(fd, &st) != 0) throw_errno("disk " + disk->backend().path() + ": fstat");
    sizes.push_back(static_cast<uint64_t>(st.st_size));
  }
  return sizes;
}

sandbox::AllowList PciPlatform::vcpu_syscalls() {
  // Register writes on the vCPU thread: activation makes kick and stop eventfds and starts the
  // workers; kicks and completions signal eventfds; reset waits for the workers.
  return {{"eventfd2"}, {"read"}, {"write"}};
}

sandbox::AllowList PciPlatform::worker_syscalls() const {
  sandbox::AllowList list;
  if (!config_.disks.empty()) sandbox::append(list, VirtioBlk::worker_syscalls());
  if (!config_.nets.empty()) sandbox::append(list, VirtioNet::worker_syscalls());
  for (const auto& net : config_.nets)
    sandbox::append(list, net.kind == NetConfig::Kind::kTap ? TapBackend::syscalls()
                                                          : SlirpBackend::syscalls());
  return list;
}

sandbox::AllowList PciPlatform::teardown_syscalls() const {
  if (config_.disks.empty()) return {};
  return {{"pread64"}, {"pwrite64"}, {"preadv"}, {"pwritev"}, {"fdatasync"}, {"fsync"},
          {"ftruncate"}};
}

}  // namespace keel
