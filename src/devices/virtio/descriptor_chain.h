// The split-virtqueue descriptor chain walker: the one place where a chain the guest wrote is
// turned into lists of guest buffers. Everything in a descriptor is untrusted; walk_chain checks
// every index against the queue size, every buffer against guest RAM (through GuestMemory), the
// direction order, indirect tables (size, alignment, nesting) and the chain length, and throws
// ChainError naming the first problem. It never reads outside guest RAM. fuzz/fuzz_virtqueue.cc
// drives it with arbitrary memory contents.
#pragma once

#include <cstdint>
#include <vector>

#include "base/error.h"
#include "memory/guest_memory.h"

namespace keel {

class ChainError : public Error {
 public:
  using Error::Error;
};

struct VirtqDesc {
  uint64_t addr;
  uint32_t len;
  uint16_t flags;
  uint16_t next;
};
static_assert(sizeof(VirtqDesc) == 16);

inline constexpr uint16_t kDescFlagNext = 1;
inline constexpr uint16_t kDescFlagWrite = 2;
inline constexpr uint16_t kDescFlagIndirect = 4;

// The largest indirect table accepted (entries); Linux never builds bigger ones than the queue.
inline constexpr uint32_t kMaxIndirectEntries = 1024;

struct GuestBuffer {
  uint64_t gpa;
  uint32_t len;
};

struct DescriptorChain {
  uint16_t head = 0;
  std::vector<GuestBuffer> readable;  // device-readable, in order
  std::vector<GuestBuffer> writable;  // device-writable, in order, all after the readable ones
  uint64_t readable_bytes = 0;
  uint64_t writable_bytes = 0;
};

// Walks the chain starting at descriptor `head` of the table at `desc_table` (queue_size
// entries). `indirect` allows VIRTQ_DESC_F_INDIRECT (the driver negotiated it). Throws ChainError.
DescriptorChain walk_chain(const GuestMemory& memory, uint64_t desc_table, uint16_t queue_size,
                           uint16_t head, bool indirect);

// Copies out of / into the buffers of a chain as if they were one contiguous byte stream, starting
// `offset` bytes in. Return the number of bytes copied (short at the end of the buffers).
uint64_t read_from_buffers(const GuestMemory& memory, const std::vector<GuestBuffer>& buffers,
                           uint64_t offset, void* dst, uint64_t len);
uint64_t write_to_buffers(GuestMemory& memory, const std::vector<GuestBuffer>& buffers,
                          uint64_t offset, const void* src, uint64_t len);

}  // namespace keel
