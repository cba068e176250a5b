// VirtioNet: virtio network device (5.1) with one receive/transmit queue pair, mergeable receive
// buffers (VIRTIO_NET_F_MRG_RXBUF: a packet may span several receive chains, so Linux can post
// page-sized buffers instead of 64 KiB ones) and a NetBackend behind it.
//
// Threads: each device has one network thread, started at DRIVER_OK and stopped at reset. It
// polls the backend's fds (tap or slirp sockets and timers), the transmit and receive kick
// eventfds (signalled by notify() on a vCPU thread, or directly by KVM ioeventfds) and a stop
// eventfd. All queue processing and backend calls happen on that thread, so neither needs a lock;
// completions raise MSI-X from it. Frames that arrive while the guest has no receive buffers wait
// in a bounded queue (older ones are kept, newer dropped, as a full NIC ring would).
#pragma once

#include "sandbox/syscalls.h"

#include <array>
#include <deque>
#include <memory>
#include <optional>
#include <thread>
#include <vector>

#include "backends/net/net_backend.h"
#include "base/counter.h"
#include "base/eventfd.h"
#include "devices/virtio/virtio_device.h"

namespace keel {

namespace virtio_net {
inline constexpr int kFeatureMac = 5;
inline constexpr int kFeatureMrgRxbuf = 15;
inline constexpr int kFeatureStatus = 16;
inline constexpr uint16_t kStatusLinkUp = 1;
inline constexpr uint32_t kHeaderBytes = 12;  // virtio_net_hdr_v1
inline constexpr size_t kMaxFrame = 65536 + 14;
inline constexpr size_t kMaxPendingFrames = 256;
// The frame that announces `mac` where it now is (a RARP request from it to everyone, padded to
// the Ethernet minimum), as QEMU's self-announce: switches on a tap's bridge learn the new port.
std::vector<uint8_t> announce_frame(const std::array<uint8_t, 6>& mac);
}  // namespace virtio_net

class VirtioNet : public VirtioDevice {
 public:
  VirtioNet(std::unique_ptr<NetBackend> backend, std::array<uint8_t, 6> mac);
  ~VirtioNet() override;

  // The network thread's own system calls (seccomp); its backend adds its own.
  static sandbox::AllowList worker_syscalls();

  std::string name() const override { return "virtio-net " + backend_->name(); }
  uint16_t device_id() const override;
  uint64_t features() const override;
  uint16_t num_queues() const override { return 2; }
  uint32_t config_size() const override { return 10; }
  void read_config(uint64_t offset, std::span<uint8_t> data) override;
  void activate(const VirtioContext& ctx) override;
  void notify(uint16_t queue) override;
  void reset() override;
  int kick_fd(uint16_t queue) const override { return queue < 2 ? kicks_[queue].fd() : -1; }

  NetBackend& backend() { return *backend_; }

  // A restored or migrated-in NIC announces itself (virtio_net::announce_frame) once its network
  // thread starts: its MAC moved to this host (a tap's bridge) or this process.
  void restore_device_state(const state::SectionReader& in) override { announce_ = true; }

  // Frames that went through (metrics), written by the network thread only.
  struct Counters {
    Counter rx_bytes, rx_packets, tx_bytes, tx_packets;
  };
  const Counters& counters() const { return counters_; }

 private:
  class Worker;
  std::unique_ptr<NetBackend> backend_;
  std::array<uint8_t, 6> mac_;
  std::array<EventFd, 2> kicks_;  // 0: receive queue refilled, 1: transmit
  std::unique_ptr<Worker> worker_;
  Counters counters_;
  bool announce_ = false;  // set before activate(); the worker thread takes it when it starts
};

// The default MAC of the n-th network device: 52:54:00:12:34:(0x56 + n), as QEMU numbers them.
std::array<uint8_t, 6> default_mac(unsigned index);

}  // namespace keel
