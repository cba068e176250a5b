#include "devices/virtio/virtio_rng.h"

#include <sys/random.h>

#include <vector>

#include "devices/virtio/virtio.h"

namespace keel {

uint16_t VirtioRng::device_id() const { return virtio::kIdEntropy; }

uint64_t VirtioRng::features() const {
  return virtio::bit(virtio::kFeatureRingIndirectDesc) | virtio::bit(virtio::kFeatureRingEventIdx);
}

void VirtioRng::activate(const VirtioContext& ctx) {
  std::lock_guard lock(mutex_);
  ctx_.emplace(ctx);
  process_locked();
}

void VirtioRng::notify(uint16_t queue) {
  std::lock_guard lock(mutex_);
  if (queue == 0) process_locked();
}

void VirtioRng::reset() {
  std::lock_guard lock(mutex_);
  ctx_.reset();
}

void VirtioRng::process_locked() {
  if (!ctx_) return;
  SplitQueue& q = *ctx_->queues[0];
  GuestMemory& mem = ctx_->memory;
  try {
    DescriptorChain chain;
    std::vector<uint8_t> buf;
    while (q.pop_valid(mem, chain)) {
      // Readable buffers in an entropy request are a driver error: refuse with length 0.
      uint64_t n = chain.readable.empty() ? std::min<uint64_t>(chain.writable_bytes, kMaxRequestBytes) : 0;
      buf.resize(n);
      size_t got = 0;
      while (got < n) {
        ssize_t r = ::getrandom(buf.data() + got, n - got, 0);
        if (r <= 0) break;  // EINTR or no entropy: hand back what we have
        got += r;
      }
      write_to_buffers(mem, chain.writable, 0, buf.data(), got);
      q.push(mem, chain.head, static_cast<uint32_t>(got));
    }
    if (q.should_notify(mem)) ctx_->interrupt.signal_queue(0);
  } catch (const QueueError& e) {
    q.mark_broken();
    ctx_->interrupt.queue_broken(0, e.what());
  }
}

}  // namespace keel
