#include "devices/virtio/descriptor_chain.h"

#include <algorithm>
#include <string>

namespace keel {

namespace {

std::string hex(uint64_t v) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "0x%llx", static_cast<unsigned long long>(v));
  return buf;
}

void add_buffer(const GuestMemory& memory, DescriptorChain& chain, const VirtqDesc& d) {
  if (!memory.contains(d.addr, d.len))
    throw ChainError("descriptor buffer outside guest RAM: " + hex(d.addr) + " + " +
                     std::to_string(d.len));
  if (d.flags & kDescFlagWrite) {
    chain.writable.push_back({d.addr, d.len});
    chain.writable_bytes += d.len;
  } else {
    if (!chain.writable.empty())
      throw ChainError("device-readable descriptor after a device-writable one");
    chain.readable.push_back({d.addr, d.len});
    chain.readable_bytes += d.len;
  }
}

VirtqDesc read_desc(const GuestMemory& memory, uint64_t table, uint32_t index) {
  uint64_t gpa = table + uint64_t{index} * sizeof(VirtqDesc);
  if (!memory.contains(gpa, sizeof(VirtqDesc)))
    throw ChainError("descriptor " + std::to_string(index) + " outside guest RAM");
  return memory.read_obj<VirtqDesc>(gpa);
}

void walk_indirect(const GuestMemory& memory, DescriptorChain& chain, const VirtqDesc& d) {
  if (d.flags & kDescFlagNext)
    throw ChainError("indirect descriptor with the NEXT flag set");
  if (d.len == 0 || d.len % sizeof(VirtqDesc) != 0)
    throw ChainError("indirect table length " + std::to_string(d.len) +
                     " is not a non-zero multiple of 16");
  uint32_t entries = d.len / sizeof(VirtqDesc);
  if (entries > kMaxIndirectEntries)
    throw ChainError("indirect table of " + std::to_string(entries) + " entries is too long");
  if (!memory.contains(d.addr, d.len))
    throw ChainError("indirect table outside guest RAM: " + hex(d.addr));
  uint32_t index = 0;
  for (uint32_t count = 0;; ++count) {
    if (count >= entries) throw ChainError("indirect chain loops or runs past its table");
    VirtqDesc e = read_desc(memory, d.addr, index);
    if (e.flags & kDescFlagIndirect) throw ChainError("nested indirect descriptor");
    add_buffer(memory, chain, e);
    if (!(e.flags & kDescFlagNext)) break;
    if (e.next >= entries)
      throw ChainError("indirect next index " + std::to_string(e.next) + " out of range");
    index = e.next;
  }
}

}  // namespace

DescriptorChain walk_chain(const GuestMemory& memory, uint64_t desc_table, uint16_t queue_size,
                           uint16_t head, bool indirect) {
  if (head >= queue_size)
    throw ChainError("head index " + std::to_string(head) + " out of range");
  DescriptorChain chain;
  chain.head = head;
  uint16_t index = head;
  for (uint32_t count = 0;; ++count) {
    // A chain can hold at most queue_size descriptors; more means a loop.
    if (count >= queue_size) throw ChainError("descriptor chain loops or is longer than the queue");
    VirtqDesc d = read_desc(memory, desc_table, index);
    if (d.flags & kDescFlagIndirect) {
      if (!indirect) throw ChainError("indirect descriptor without VIRTIO_F_INDIRECT_DESC");
      walk_indirect(memory, chain, d);
      break;  // an indirect descriptor ends the chain (it must not have NEXT)
    }
    add_buffer(memory, chain, d);
    if (!(d.flags & kDescFlagNext)) break;
    if (d.next >= queue_size)
      throw ChainError("next index " + std::to_string(d.next) + " out of range");
    index = d.next;
  }
  return chain;
}

namespace {

// Walks [offset, offset + len) of `buffers` seen as one byte stream: calls copy(gpa, at, n) for
// each piece, `at` being the piece's position in the caller's memory. Returns the bytes covered.
template <typename Copy>
uint64_t for_each_piece(const std::vector<GuestBuffer>& buffers, uint64_t offset, uint64_t len,
                        Copy copy) {
  uint64_t done = 0;
  for (const auto& b : buffers) {
    if (done == len) break;
    if (offset >= b.len) {
      offset -= b.len;
      continue;
    }
    uint64_t n = std::min<uint64_t>(b.len - offset, len - done);
    copy(b.gpa + offset, done, n);
    done += n;
    offset = 0;
  }
  return done;
}

}  // namespace

uint64_t read_from_buffers(const GuestMemory& memory, const std::vector<GuestBuffer>& buffers,
                           uint64_t offset, void* dst, uint64_t len) {
  auto* out = static_cast<uint8_t*>(dst);
  return for_each_piece(buffers, offset, len, [&](uint64_t gpa, uint64_t at, uint64_t n) {
    memory.read(gpa, out + at, n);
  });
}

uint64_t write_to_buffers(GuestMemory& memory, const std::vector<GuestBuffer>& buffers,
                          uint64_t offset, const void* src, uint64_t len) {
  auto* in = static_cast<const uint8_t*>(src);
  return for_each_piece(buffers, offset, len, [&](uint64_t gpa, uint64_t at, uint64_t n) {
    memory.write(gpa, in + at, n);
  });
}

}  // namespace keel
