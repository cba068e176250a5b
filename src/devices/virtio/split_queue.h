// SplitQueue: one split virtqueue (virtio 1.x, 2.7) as the device side sees it.
//
// The transport fills in the layout the driver programs (size, ring addresses) and enables the
// queue; the device then pops descriptor chains from the available ring and returns them on the
// used ring. Every ring access goes through GuestMemory. Two kinds of failure:
//  - a malformed chain (loop, bad index, buffer outside RAM, wrong direction order, bad indirect
//    table): pop() reports it with its head so the device can return it with length 0 and go on;
//  - a broken queue (the available index moved by more than the queue size, a head index out of
//    range, rings no longer readable): pop() throws QueueError and the device marks itself
//    DEVICE_NEEDS_RESET for that queue (2.1.2); other queues go on.
//
// Not thread-safe: a device serialises access to each queue (one worker thread, or its mutex).
#pragma once

#include <cstdint>
#include <string>

#include "devices/virtio/descriptor_chain.h"
#include "memory/guest_memory.h"
#include "state/state_format.h"

namespace keel {

class QueueError : public Error {
 public:
  using Error::Error;
};

class SplitQueue {
 public:
  explicit SplitQueue(uint16_t max_size = 256) : max_size_(max_size), size_(max_size) {}

  // Layout, as programmed by the driver through the transport.
  uint16_t max_size() const { return max_size_; }
  uint16_t size() const { return size_; }
  void set_size(uint16_t size) { size_ = size; }
  uint64_t desc_addr() const { return desc_; }
  uint64_t avail_addr() const { return avail_; }
  uint64_t used_addr() const { return used_; }
  void set_desc_addr(uint64_t a) { desc_ = a; }
  void set_avail_addr(uint64_t a) { avail_ = a; }
  void set_used_addr(uint64_t a) { used_ = a; }
  bool enabled() const { return enabled_; }
  // After a QueueError the device stops using the queue until reset (pop() finds nothing).
  void mark_broken() { broken_ = true; }
  bool broken() const { return broken_; }

  // Checks the layout against the spec and guest RAM; returns an empty string when it is usable,
  // else what is wrong. enable() makes the queue live (throws QueueError when validate fails).
  std::string validate(const GuestMemory& memory) const;
  void enable(const GuestMemory& memory);
  // Negotiated ring features.
  void set_features(bool indirect, bool event_idx) {
    indirect_ = indirect;
    event_idx_ = event_idx;
  }
  // Back to the reset state: disabled, indices zero, size = max.
  void reset();

  struct Popped {
    enum Kind { kEmpty, kChain, kBadChain } kind = kEmpty;
    DescriptorChain chain;  // for kBadChain only chain.head is meaningful
    std::string error;      // for kBadChain
  };
  // Takes the next available chain. Throws QueueError when the queue is broken.
  Popped pop(GuestMemory& memory);
  // pop(), but malformed chains are returned to the driver with length 0 (and logged) and
  // skipped. Returns false when nothing is available. Throws QueueError.
  bool pop_valid(GuestMemory& memory, DescriptorChain& out);

  // Gives back the last `n` chains pop() returned (virtio-net, when a packet does not fit the
  // buffers available): they are popped again next time.
  void unpop(uint16_t n) { last_avail_ -= n; }

  // Used ring: add_used() writes an element, publish_used() makes all added elements visible to
  // the driver by moving the used index (so a multi-buffer packet appears at once).
  void add_used(GuestMemory& memory, uint16_t head, uint32_t len);
  void publish_used(GuestMemory& memory);
  void push(GuestMemory& memory, uint16_t head, uint32_t len) {
    add_used(memory, head, len);
    publish_used(memory);
  }
  // Whether the driver wants an interrupt for what was published since the last one (event index
  // or VRING_AVAIL_F_NO_INTERRUPT). Updates the "last signalled" index when it says yes.
  bool should_notify(const GuestMemory& memory);

  // How many chains are available right now (0 when disabled). Throws QueueError.
  uint16_t available(const GuestMemory& memory) const;

  // Layout, features and ring positions as fields named PREFIX + "size", ... of the owner's
  // section. restore_state() checks an enabled queue's layout against `memory` as enable() does.
  void save_state(state::SectionWriter& out, const std::string& prefix) const;
  void restore_state(const state::SectionReader& in, const std::string& prefix,
                     const GuestMemory& memory);

  uint16_t last_avail_idx() const { return last_avail_; }
  uint16_t used_idx() const { return used_idx_; }

 private:
  uint16_t read_avail_idx(const GuestMemory& memory) const;

  uint16_t max_size_;
  uint16_t size_;
  uint64_t desc_ = 0, avail_ = 0, used_ = 0;
  bool enabled_ = false;
  bool indirect_ = false;
  bool event_idx_ = false;
  bool broken_ = false;
  uint16_t last_avail_ = 0;  // next available-ring slot to consume
  uint16_t used_idx_ = 0;    // next used-ring slot to fill (published or not)
  uint16_t published_ = 0;   // used index the driver can see
  uint16_t signalled_ = 0;   // used index at the last interrupt
};

}  // namespace keel
