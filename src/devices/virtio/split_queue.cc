#include "devices/virtio/split_queue.h"

#include <atomic>

#include "base/log.h"

namespace keel {

namespace {

constexpr uint16_t kAvailFlagNoInterrupt = 1;

// Ring layouts (2.7): avail = flags, idx, ring[size], used_event; used = flags, idx,
// ring[size] of {id, len}, avail_event.
uint64_t avail_bytes(uint16_t size) { return 6 + 2ull * size; }
uint64_t used_bytes(uint16_t size) { return 6 + 8ull * size; }

}  // namespace

std::string SplitQueue::validate(const GuestMemory& memory) const {
  if (size_ == 0 || (size_ & (size_ - 1)) != 0)
    return "queue size " + std::to_string(size_) + " is not a power of two";
  if (size_ > max_size_)
    return "queue size " + std::to_string(size_) + " exceeds the maximum " +
           std::to_string(max_size_);
  if (desc_ % 16 || avail_ % 2 || used_ % 4) return "misaligned ring address";
  if (!memory.contains(desc_, 16ull * size_)) return "descriptor table outside guest RAM";
  if (!memory.contains(avail_, avail_bytes(size_))) return "available ring outside guest RAM";
  if (!memory.contains(used_, used_bytes(size_))) return "used ring outside guest RAM";
  return {};
}

void SplitQueue::enable(const GuestMemory& memory) {
  if (std::string error = validate(memory); !error.empty()) throw QueueError(error);
  enabled_ = true;
}

void SplitQueue::reset() {
  size_ = max_size_;
  desc_ = avail_ = used_ = 0;
  enabled_ = indirect_ = event_idx_ = broken_ = false;
  last_avail_ = used_idx_ = published_ = signalled_ = 0;
}

uint16_t SplitQueue::read_avail_idx(const GuestMemory& memory) const {
  try {
    uint16_t idx = memory.read_obj<uint16_t>(avail_ + 2);
    std::atomic_thread_fence(std::memory_order_acquire);  // ring entries after the index
    return idx;
  } catch (const GuestMemoryError& e) {
    throw QueueError(std::string("available ring unreadable: ") + e.what());
  }
}

uint16_t SplitQueue::available(const GuestMemory& memory) const {
  if (!enabled_) return 0;
  uint16_t n = read_avail_idx(memory) - last_avail_;
  if (n > size_)
    throw QueueError("available index moved by " + std::to_string(n) + ", more than the queue size " +
                     std::to_string(size_));
  return n;
}

SplitQueue::Popped SplitQueue::pop(GuestMemory& memory) {
  Popped out;
  if (!enabled_ || broken_) return out;
  uint16_t n = available(memory);
  if (n == 0 && event_idx_) {
    // Ask for a kick when the driver adds the next chain, then look again: a chain added between
    // the first look and the avail_event write would otherwise wait for the next kick.
    try {
      memory.write_obj<uint16_t>(used_ + 4 + 8ull * size_, last_avail_);
    } catch (const GuestMemoryError& e) {
      throw QueueError(std::string("used ring unwritable: ") + e.what());
    }
    std::atomic_thread_fence(std::memory_order_seq_cst);
    n = available(memory);
  }
  if (n == 0) return out;
  uint16_t head;
  try {
    head = memory.read_obj<uint16_t>(avail_ + 4 + 2ull * (last_avail_ % size_));
  } catch (const GuestMemoryError& e) {
    throw QueueError(std::string("available ring unreadable: ") + e.what());
  }
  if (head >= size_)
    throw QueueError("available ring entry " + std::to_string(head) + " is not a descriptor index");
  ++last_avail_;
  try {
    out.chain = walk_chain(memory, desc_, size_, head, indirect_);
    out.kind = Popped::kChain;
  } catch (const ChainError& e) {
    out.kind = Popped::kBadChain;
    out.chain = {};
    out.chain.head = head;
    out.error = e.what();
  }
  return out;
}

bool SplitQueue::pop_valid(GuestMemory& memory, DescriptorChain& chain) {
  for (;;) {
    Popped p = pop(memory);
    if (p.kind == Popped::kEmpty) return false;
    if (p.kind == Popped::kChain) {
      chain = std::move(p.chain);
      return true;
    }
    log::warn("virtio: refusing descriptor chain {}: {}", p.chain.head, p.error);
    push(memory, p.chain.head, 0);
  }
}

void SplitQueue::add_used(GuestMemory& memory, uint16_t head, uint32_t len) {
  uint64_t elem = used_ + 4 + 8ull * (used_idx_ % size_);
  uint32_t v[2] = {head, len};
  try {
    memory.write(elem, v, sizeof v);
  } catch (const GuestMemoryError& e) {
    throw QueueError(std::string("used ring unwritable: ") + e.what());
  }
  ++used_idx_;
}

void SplitQueue::publish_used(GuestMemory& memory) {
  std::atomic_thread_fence(std::memory_order_release);  // elements before the index
  try {
    memory.write_obj<uint16_t>(used_ + 2, used_idx_);
  } catch (const GuestMemoryError& e) {
    throw QueueError(std::string("used ring unwritable: ") + e.what());
  }
  published_ = used_idx_;
}

bool SplitQueue::should_notify(const GuestMemory& memory) {
  if (!enabled_ || broken_ || published_ == signalled_) return false;
  std::atomic_thread_fence(std::memory_order_seq_cst);  // used index before the driver's flags
  bool notify;
  try {
    if (event_idx_) {
      uint16_t used_event = memory.read_obj<uint16_t>(avail_ + 4 + 2ull * size_);
      // vring_need_event(): did the index pass used_event since the last interrupt?
      notify = static_cast<uint16_t>(published_ - used_event - 1) <
               static_cast<uint16_t>(published_ - signalled_);
    } else {
      notify = !(memory.read_obj<uint16_t>(avail_) & kAvailFlagNoInterrupt);
    }
  } catch (const GuestMemoryError& e) {
    throw QueueError(std::string("available ring unreadable: ") + e.what());
  }
  signalled_ = published_;
  return notify;
}

void SplitQueue::save_state(state::SectionWriter& out, const std::string& p) const {
  out.u16(p + "size", size_);
  out.u64(p + "desc", desc_);
  out.u64(p + "avail", avail_);
  out.u64(p + "used", used_);
  out.boolean(p + "enabled", enabled_);
  out.boolean(p + "indirect", indirect_);
  out.boolean(p + "event_idx", event_idx_);
  out.boolean(p + "broken", broken_);
  out.u16(p + "last_avail", last_avail_);
  out.u16(p + "used_idx", used_idx_);
  out.u16(p + "published", published_);
  out.u16(p + "signalled", signalled_);
}

void SplitQueue::restore_state(const state::SectionReader& in, const std::string& p,
                               const GuestMemory& memory) {
  SplitQueue q(max_size_);
  q.size_ = in.u16(p + "size");
  q.desc_ = in.u64(p + "desc");
  q.avail_ = in.u64(p + "avail");
  q.used_ = in.u64(p + "used");
  q.enabled_ = in.boolean(p + "enabled");
  q.indirect_ = in.boolean(p + "indirect");
  q.event_idx_ = in.boolean(p + "event_idx");
  q.broken_ = in.boolean(p + "broken");
  q.last_avail_ = in.u16(p + "last_avail");
  q.used_idx_ = in.u16(p + "used_idx");
  q.published_ = in.u16(p + "published");
  q.signalled_ = in.u16(p + "signalled");
  if (q.enabled_)
    if (std::string error = q.validate(memory); !error.empty())
      in.fail("queue " + p + ": " + error);
  // The device completes chains in order of their arrival: it can never have used more than it
  // took, nor published more than it used.
  if (static_cast<uint16_t>(q.last_avail_ - q.used_idx_) > q.size_ && q.enabled_)
    in.fail("queue " + p + ": more chains used than taken");
  *this = q;
}

}  // namespace keel
