#include "devices/virtio/virtio_console.h"

#include <vector>

#include "devices/virtio/virtio.h"

namespace keel {

namespace {
constexpr uint16_t kReceiveQueue = 0;
constexpr uint16_t kTransmitQueue = 1;
constexpr uint64_t kMaxOutputChain = 64 * 1024;
}  // namespace

uint16_t VirtioConsole::device_id() const { return virtio::kIdConsole; }

uint64_t VirtioConsole::features() const {
  return virtio::bit(virtio::kFeatureRingIndirectDesc) | virtio::bit(virtio::kFeatureRingEventIdx);
}

void VirtioConsole::activate(const VirtioContext& ctx) {
  {
    std::lock_guard lock(mutex_);
    ctx_.emplace(ctx);
  }
  process(kTransmitQueue);
  process(kReceiveQueue);
}

void VirtioConsole::reset() {
  std::lock_guard lock(mutex_);
  ctx_.reset();
}

void VirtioConsole::notify(uint16_t queue) { process(queue); }

void VirtioConsole::process(uint16_t queue) {
  bool wake = false;
  {
    std::lock_guard lock(mutex_);
    if (!ctx_ || queue >= 2) return;
    SplitQueue& q = *ctx_->queues[queue];
    try {
      if (queue == kTransmitQueue) {
        transmit_locked();
      } else {
        receive_locked();
        wake = refused_ && pending_.size() < kInputBuffer;
        if (wake) refused_ = false;
      }
      if (q.should_notify(ctx_->memory)) ctx_->interrupt.signal_queue(queue);
    } catch (const QueueError& e) {
      q.mark_broken();
      ctx_->interrupt.queue_broken(queue, e.what());
    }
  }
  if (wake && space_callback_) space_callback_();
}

void VirtioConsole::transmit_locked() {
  SplitQueue& q = *ctx_->queues[kTransmitQueue];
  GuestMemory& mem = ctx_->memory;
  DescriptorChain chain;
  std::vector<uint8_t> bytes;
  while (q.pop_valid(mem, chain)) {
    uint64_t n = std::min(chain.readable_bytes, kMaxOutputChain);
    bytes.resize(n);
    read_from_buffers(mem, chain.readable, 0, bytes.data(), n);
    if (n && output_) output_(bytes);
    q.push(mem, chain.head, 0);
  }
}

void VirtioConsole::receive_locked() {
  SplitQueue& q = *ctx_->queues[kReceiveQueue];
  GuestMemory& mem = ctx_->memory;
  DescriptorChain chain;
  std::vector<uint8_t> bytes;
  while (!pending_.empty() && q.pop_valid(mem, chain)) {
    uint64_t n = std::min<uint64_t>(chain.writable_bytes, pending_.size());
    bytes.assign(pending_.begin(), pending_.begin() + n);
    write_to_buffers(mem, chain.writable, 0, bytes.data(), n);
    pending_.erase(pending_.begin(), pending_.begin() + n);
    q.push(mem, chain.head, static_cast<uint32_t>(n));
  }
}

size_t VirtioConsole::push_input(std::span<const uint8_t> bytes) {
  std::lock_guard lock(mutex_);
  size_t room = kInputBuffer - std::min(kInputBuffer, pending_.size());
  size_t n = std::min(room, bytes.size());
  pending_.insert(pending_.end(), bytes.begin(), bytes.begin() + n);
  if (n < bytes.size()) refused_ = true;
  if (ctx_) {
    SplitQueue& q = *ctx_->queues[kReceiveQueue];
    try {
      receive_locked();
      if (q.should_notify(ctx_->memory)) ctx_->interrupt.signal_queue(kReceiveQueue);
    } catch (const QueueError& e) {
      q.mark_broken();
      ctx_->interrupt.queue_broken(kReceiveQueue, e.what());
    }
  }
  return n;
}

void VirtioConsole::save_device_state(state::SectionWriter& out) {
  std::lock_guard lock(mutex_);
  std::vector<uint8_t> pending(pending_.begin(), pending_.end());
  out.bytes("console_input", pending);
}

void VirtioConsole::restore_device_state(const state::SectionReader& in) {
  auto pending = in.bytes("console_input", kInputBuffer);
  std::lock_guard lock(mutex_);
  pending_.assign(pending.begin(), pending.end());
}

}  // namespace keel
