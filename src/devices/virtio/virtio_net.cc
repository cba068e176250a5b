#include "devices/virtio/virtio_net.h"

#include <poll.h>

#include <cstring>
#include <utility>

#include "base/log.h"
#include "devices/virtio/virtio.h"

namespace keel {

using namespace virtio_net;

namespace {
constexpr uint16_t kRx = 0;
constexpr uint16_t kTx = 1;
}  // namespace

std::vector<uint8_t> virtio_net::announce_frame(const std::array<uint8_t, 6>& mac) {
  std::vector<uint8_t> f(60, 0);  // the Ethernet minimum without the FCS
  std::memset(f.data(), 0xFF, 6);                  // to everyone
  std::memcpy(f.data() + 6, mac.data(), 6);        // from the NIC
  const uint8_t rarp[] = {0x80, 0x35,              // EtherType RARP
                          0x00, 0x01, 0x08, 0x00,  // Ethernet, IPv4
                          6, 4, 0x00, 0x03};       // address lengths, "reverse request"
  std::memcpy(f.data() + 12, rarp, sizeof rarp);
  std::memcpy(f.data() + 22, mac.data(), 6);       // sender hardware address (IP 0)
  std::memcpy(f.data() + 32, mac.data(), 6);       // target hardware address (IP 0)
  return f;
}

std::array<uint8_t, 6> default_mac(unsigned index) {
  return {0x52, 0x54, 0x00, 0x12, 0x34, static_cast<uint8_t>(0x56 + index)};
}

class VirtioNet::Worker {
 public:
  Worker(VirtioNet& net, const VirtioContext& ctx)
      : net_(net), ctx_(ctx), memory_(ctx.memory),
        mergeable_(ctx.features & virtio::bit(kFeatureMrgRxbuf)) {
    net_.backend_->set_receiver([this](std::span<const uint8_t> frame) { on_frame(frame); });
    thread_ = start_device_thread(ctx, "keel-net", [this] { run(); });
  }
  ~Worker() {
    stop_.signal();
    thread_.join();
    net_.backend_->set_receiver(nullptr);
  }

 private:
  SplitQueue& queue(uint16_t q) { return *ctx_.queues[q]; }

  void broken(uint16_t q, const std::string& why) {
    queue(q).mark_broken();
    ctx_.interrupt.queue_broken(q, why);
  }

  void run() {
    std::vector<pollfd> fds;
    if (std::exchange(net_.announce_, false)) net_.backend_->send(announce_frame(net_.mac_));
    process_tx();
    flush_rx();
    for (;;) {
      fds.clear();
      fds.push_back({stop_.fd(), POLLIN, 0});
      fds.push_back({net_.kicks_[kTx].fd(), POLLIN, 0});
      fds.push_back({net_.kicks_[kRx].fd(), POLLIN, 0});
      int timeout = -1;
      bool can_receive = pending_.size() < kMaxPendingFrames;
      net_.backend_->fill_pollfds(fds, timeout, can_receive);
      if (::poll(fds.data(), fds.size(), timeout) < 0 && errno != EINTR) {
        log::error("{}: poll: {}", net_.name(), std::strerror(errno));
        return;
      }
      if (fds[0].revents) return;
      if (fds[1].revents) {
        net_.kicks_[kTx].consume();
        process_tx();
      }
      if (fds[2].revents) net_.kicks_[kRx].consume();
      try {
        net_.backend_->dispatch(fds, 3);
      } catch (const std::exception& e) {
        log::error("{}: backend: {}", net_.name(), e.what());
      }
      flush_rx();
    }
  }

  // Guest -> host: each chain is a virtio-net header and one frame, all device-readable.
  void process_tx() {
    SplitQueue& q = queue(kTx);
    try {
      DescriptorChain chain;
      while (q.pop_valid(memory_, chain)) {
        uint64_t total = chain.readable_bytes;
        if (!chain.writable.empty() || total < kHeaderBytes || total - kHeaderBytes > kMaxFrame) {
          log::debug("{}: dropping malformed transmit chain {}", net_.name(), chain.head);
        } else {
          frame_.resize(total - kHeaderBytes);
          read_from_buffers(memory_, chain.readable, kHeaderBytes, frame_.data(), frame_.size());
          net_.backend_->send(frame_);
          net_.counters_.tx_packets.add();
          net_.counters_.tx_bytes.add(frame_.size());
        }
        q.push(memory_, chain.head, 0);
      }
      if (q.should_notify(memory_)) ctx_.interrupt.signal_queue(kTx);
    } catch (const QueueError& e) {
      broken(kTx, e.what());
    }
  }

  void on_frame(std::span<const uint8_t> frame) {
    if (frame.size() > kMaxFrame) return;
    if (pending_.empty() && deliver(frame)) return;
    if (pending_.size() < kMaxPendingFrames) pending_.emplace_back(frame.begin(), frame.end());
  }

  void flush_rx() {
    while (!pending_.empty() && deliver(pending_.front())) pending_.pop_front();
  }

  // Host -> guest: header + frame into one receive chain, or several with mergeable buffers.
  // Returns false (and takes nothing) when the guest has not posted enough buffers.
  bool deliver(std::span<const uint8_t> frame) {
    SplitQueue& q = queue(kRx);
    if (q.broken() || !q.enabled()) return true;  // nowhere to go: drop
    uint64_t total = kHeaderBytes + frame.size();
    try {
      std::vector<DescriptorChain> chains;
      uint64_t space = 0;
      while (space < total) {
        SplitQueue::Popped p = q.pop(memory_);
        if (p.kind == SplitQueue::Popped::kEmpty) {
          q.unpop(static_cast<uint16_t>(chains.size()));  // wait for more buffers
          return false;
        }
        if (p.kind == SplitQueue::Popped::kBadChain || !p.chain.readable.empty() ||
            p.chain.writable_bytes < (chains.empty() ? kHeaderBytes : 1)) {
          // Malformed, wrong direction or too small: return it and what was taken, drop the frame.
          log::debug("{}: refusing receive chain {}: {}", net_.name(), p.chain.head,
                     p.error.empty() ? "unusable buffers" : p.error);
          for (const auto& c : chains) q.add_used(memory_, c.head, 0);
          q.add_used(memory_, p.chain.head, 0);
          q.publish_used(memory_);
          signal_rx();
          return true;
        }
        space += p.chain.writable_bytes;
        chains.push_back(std::move(p.chain));
        if (!mergeable_) break;
      }
      if (space < total) {  // one buffer without MRG_RXBUF and the frame is bigger: drop it
        q.push(memory_, chains[0].head, 0);
        signal_rx();
        return true;
      }
      uint8_t header[kHeaderBytes] = {};
      uint16_t num_buffers = static_cast<uint16_t>(chains.size());
      std::memcpy(header + 10, &num_buffers, 2);
      uint64_t offset = 0;  // into header+frame
      for (const auto& c : chains) {
        uint64_t written = 0;
        if (offset < kHeaderBytes) {
          written += write_to_buffers(memory_, c.writable, 0, header + offset, kHeaderBytes - offset);
          offset += written;
        }
        uint64_t n = std::min<uint64_t>(c.writable_bytes - written, total - offset);
        write_to_buffers(memory_, c.writable, written, frame.data() + (offset - kHeaderBytes), n);
        offset += n;
        written += n;
        q.add_used(memory_, c.head, static_cast<uint32_t>(written));
      }
      q.publish_used(memory_);  // all buffers of the packet at once
      signal_rx();
      net_.counters_.rx_packets.add();
      net_.counters_.rx_bytes.add(frame.size());
      return true;
    } catch (const QueueError& e) {
      broken(kRx, e.what());
      return true;
    }
  }

  void signal_rx() {
    if (queue(kRx).should_notify(memory_)) ctx_.interrupt.signal_queue(kRx);
  }

  VirtioNet& net_;
  VirtioContext ctx_;
  GuestMemory& memory_;
  bool mergeable_;
  EventFd stop_;
  std::vector<uint8_t> frame_;
  std::deque<std::vector<uint8_t>> pending_;
  std::thread thread_;  // last
};

VirtioNet::VirtioNet(std::unique_ptr<NetBackend> backend, std::array<uint8_t, 6> mac)
    : backend_(std::move(backend)), mac_(mac) {}

VirtioNet::~VirtioNet() { reset(); }

uint16_t VirtioNet::device_id() const { return virtio::kIdNet; }

uint64_t VirtioNet::features() const {
  return virtio::bit(kFeatureMac) | virtio::bit(kFeatureMrgRxbuf) | virtio::bit(kFeatureStatus) |
         virtio::bit(virtio::kFeatureRingIndirectDesc) | virtio::bit(virtio::kFeatureRingEventIdx);
}

void VirtioNet::read_config(uint64_t offset, std::span<uint8_t> data) {
  uint8_t image[10] = {};
  std::memcpy(image, mac_.data(), 6);
  uint16_t status = kStatusLinkUp, pairs = 1;
  std::memcpy(image + 6, &status, 2);
  std::memcpy(image + 8, &pairs, 2);
  read_config_image(image, offset, data);
}

void VirtioNet::activate(const VirtioContext& ctx) {
  worker_.reset();
  for (auto& k : kicks_) k.consume();
  worker_ = std::make_unique<Worker>(*this, ctx);
}

void VirtioNet::notify(uint16_t queue) {
  if (queue < 2) kicks_[queue].signal();
}

void VirtioNet::reset() { worker_.reset(); }

sandbox::AllowList VirtioNet::worker_syscalls() {
  return {{"poll"}, {"ppoll"}, {"read"}};  // the backend's fds, kick and stop eventfds
}

}  // namespace keel
