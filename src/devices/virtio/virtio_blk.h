// VirtioBlk: virtio block device (5.2) over a BlockBackend (raw, qcow2: backends/block/).
//
// Threads: notify() (vCPU thread, or the KVM ioeventfd itself) only signals the kick eventfd. One
// worker thread per disk owns the request queue: it walks the available ring, parses each request
// (parse_blk_request, all bounds checked), submits reads, writes and flushes to io_uring straight
// from/to guest RAM, and on completion writes the status byte, fills the used ring and raises the
// queue's MSI-X vector. A slow disk therefore never stalls a vCPU. Without io_uring (old kernel,
// seccomp), for backends without a direct descriptor (qcow2) and for discard / write-zeroes, the
// same worker calls the backend synchronously.
#pragma once

#include "sandbox/syscalls.h"

#include <atomic>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "backends/block/block_backend.h"
#include "base/counter.h"
#include "base/eventfd.h"
#include "devices/virtio/virtio_device.h"

namespace keel {

namespace virtio_blk {
inline constexpr uint32_t kTypeIn = 0;
inline constexpr uint32_t kTypeOut = 1;
inline constexpr uint32_t kTypeFlush = 4;
inline constexpr uint32_t kTypeGetId = 8;
inline constexpr uint32_t kTypeDiscard = 11;
inline constexpr uint32_t kTypeWriteZeroes = 13;
inline constexpr uint8_t kStatusOk = 0;
inline constexpr uint8_t kStatusIoErr = 1;
inline constexpr uint8_t kStatusUnsupported = 2;
inline constexpr uint32_t kSectorSize = 512;
inline constexpr uint32_t kIdBytes = 20;
inline constexpr int kFeatureSegMax = 2;
inline constexpr int kFeatureRo = 5;
inline constexpr int kFeatureBlkSize = 6;
inline constexpr int kFeatureFlush = 9;
inline constexpr int kFeatureDiscard = 13;
inline constexpr int kFeatureWriteZeroes = 14;
// Discard / write-zeroes: segments per request and sectors per segment.
inline constexpr uint32_t kMaxDiscardSegments = 32;
inline constexpr uint32_t kMaxDiscardSectors = 1u << 22;  // 2 GiB
// Data segments per request: the queue size (256) minus the header and status descriptors, so a
// request of kSegMax pages still fits the ring without indirect descriptors. A larger value halves
// the requests Linux splits 1 MiB O_DIRECT I/O into (4 KiB pages: 126 -> 3 requests, 254 -> 2).
inline constexpr uint32_t kSegMax = 254;
}  // namespace virtio_blk

// A request as parsed from one descriptor chain.
struct BlkRequest {
  enum Action { kRead, kWrite, kFlush, kGetId, kDiscard, kWriteZeroes, kComplete } action = kComplete;
  struct Range {
    uint64_t offset, length;  // bytes
    bool unmap;               // write-zeroes may deallocate
  };
  uint16_t head = 0;
  uint64_t offset = 0;                 // byte offset in the image
  uint64_t length = 0;                 // data bytes
  std::vector<GuestBuffer> data;       // guest buffers for the data (without header/status)
  std::vector<Range> ranges;           // discard / write-zeroes segments
  std::optional<uint64_t> status_gpa;  // none: the chain has no room for a status byte
  uint8_t status = virtio_blk::kStatusOk;  // for kComplete
  std::string error;                   // why it was refused, for the log
};

// Parses one chain: header in the device-readable part, status in the last device-writable byte,
// data between. Any inconsistency (direction, alignment, range beyond `capacity_sectors`, a write
// to a read-only disk) yields kComplete with an error status. Never touches memory outside RAM.
BlkRequest parse_blk_request(const GuestMemory& memory, const DescriptorChain& chain,
                             uint64_t capacity_sectors, bool readonly);

class VirtioBlk : public VirtioDevice {
 public:
  // `serial` is what GET_ID returns (up to 20 bytes). `use_io_uring` false forces the synchronous
  // worker (tests cover both paths).
  VirtioBlk(std::unique_ptr<BlockBackend> image, std::string serial, bool use_io_uring = true);
  ~VirtioBlk() override;

  // The worker thread's system calls (seccomp, sandbox/): io_uring or the synchronous fallback.
  static sandbox::AllowList worker_syscalls();

  std::string name() const override { return "virtio-blk " + image_->path(); }
  uint16_t device_id() const override;
  uint64_t features() const override;
  uint16_t num_queues() const override { return 1; }
  uint32_t config_size() const override;
  void read_config(uint64_t offset, std::span<uint8_t> data) override;
  void activate(const VirtioContext& ctx) override;
  void notify(uint16_t queue) override;
  void reset() override;
  int kick_fd(uint16_t queue) const override { return kick_.fd(); }

  uint64_t capacity_sectors() const { return image_->size() / virtio_blk::kSectorSize; }
  // The disk's backend; only while the device is not active (the worker owns it then).
  BlockBackend& backend() { return *image_; }

  // Completed requests (metrics), written by the worker thread only.
  struct Counters {
    Counter read_bytes, write_bytes, reads, writes, flushes, errors;
  };
  const Counters& counters() const { return counters_; }

 private:
  class Worker;
  std::unique_ptr<BlockBackend> image_;
  std::string serial_;
  bool use_io_uring_;
  EventFd kick_;
  std::unique_ptr<Worker> worker_;
  Counters counters_;
};

}  // namespace keel
