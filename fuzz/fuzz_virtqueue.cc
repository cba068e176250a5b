// libFuzzer target for the split-virtqueue chain walker and ring handling: the input becomes the
// contents of a small guest RAM (descriptor table, rings, indirect tables all guest-controlled),
// then the device side pops and completes chains the way every virtio device does.
#include <cstddef>
#include <cstdint>
#include <cstring>

#include "devices/virtio/descriptor_chain.h"
#include "devices/virtio/split_queue.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 8) return 0;
  static keel::GuestMemory memory(64 * 1024);
  // Header: queue size (any value, power of two or not), ring placement, feature bits.
  uint16_t queue_size = data[0] | (data[1] << 8);
  uint64_t desc = (data[2] << 8) & 0xfff0;
  uint64_t avail = (data[3] << 8) | 0x2;
  uint64_t used = (data[4] << 8) & 0xfffc;
  bool indirect = data[5] & 1;
  bool event_idx = data[5] & 2;
  data += 8;
  size -= 8;
  auto ram = memory.write_span(0, memory.ram_size());
  std::memset(ram.data(), 0, ram.size());
  std::memcpy(ram.data(), data, std::min(size, ram.size()));

  // The walker on its own, from every head.
  for (uint16_t head = 0; head < std::min<uint16_t>(queue_size, 64); ++head) {
    try {
      keel::DescriptorChain c = keel::walk_chain(memory, desc, queue_size, head, indirect);
      uint8_t buf[64];
      keel::read_from_buffers(memory, c.readable, 0, buf, sizeof buf);
      keel::write_to_buffers(memory, c.writable, 1, buf, sizeof buf);
    } catch (const keel::ChainError&) {
    }
  }

  // The queue as a device drives it.
  keel::SplitQueue q(1024);
  q.set_size(queue_size);
  q.set_desc_addr(desc);
  q.set_avail_addr(avail);
  q.set_used_addr(used);
  try {
    q.enable(memory);
  } catch (const keel::QueueError&) {
    return 0;
  }
  q.set_features(indirect, event_idx);
  try {
    keel::DescriptorChain chain;
    for (int i = 0; i < 256 && q.pop_valid(memory, chain); ++i) {
      q.add_used(memory, chain.head, static_cast<uint32_t>(chain.writable_bytes));
      q.publish_used(memory);
      q.should_notify(memory);
    }
  } catch (const keel::QueueError&) {
  }
  return 0;
}
