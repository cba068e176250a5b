#include "devices/virtio/virtio_blk.h"

#include <linux/virtio_blk.h>
#include <liburing.h>
#include <poll.h>
#include <sys/uio.h>
#include <unistd.h>

#include <cstring>

#include "base/log.h"
#include "devices/virtio/virtio.h"

namespace keel {

using namespace virtio_blk;

namespace {

constexpr uint64_t kHeaderBytes = 16;
constexpr size_t kMaxSegments = 1024;  // IOV_MAX
constexpr unsigned kRingDepth = 256;
constexpr unsigned kMaxInflight = kRingDepth - 8;  // room for the two polls
constexpr uint64_t kKickTag = 1;
constexpr uint64_t kStopTag = 2;

struct BlkHeader {
  uint32_t type;
  uint32_t reserved;
  uint64_t sector;
};

// Splits `buffers` into [0, n) and the rest; returns the first part.
std::vector<GuestBuffer> take_bytes(const std::vector<GuestBuffer>& buffers, uint64_t skip,
                                    uint64_t n) {
  std::vector<GuestBuffer> out;
  for (const auto& b : buffers) {
    if (n == 0) break;
    if (skip >= b.len) {
      skip -= b.len;
      continue;
    }
    uint64_t take = std::min<uint64_t>(b.len - skip, n);
    if (take) out.push_back({b.gpa + skip, static_cast<uint32_t>(take)});
    n -= take;
    skip = 0;
  }
  return out;
}

}  // namespace

BlkRequest parse_blk_request(const GuestMemory& memory, const DescriptorChain& chain,
                             uint64_t capacity_sectors, bool readonly) {
  BlkRequest req;
  req.head = chain.head;
  req.action = BlkRequest::kComplete;
  req.status = kStatusIoErr;
  // The status byte is the last device-writable byte.
  if (chain.writable_bytes == 0) {
    req.status_gpa.reset();
    req.error = "no device-writable status byte";
    return req;
  }
  for (auto it = chain.writable.rbegin(); it != chain.writable.rend(); ++it)
    if (it->len) {
      req.status_gpa = it->gpa + it->len - 1;
      break;
    }
  if (chain.readable_bytes < kHeaderBytes) {
    req.error = "request header missing or not device-readable";
    return req;
  }
  BlkHeader h;
  read_from_buffers(memory, chain.readable, 0, &h, sizeof h);
  uint64_t in_bytes = chain.writable_bytes - 1;           // device-writable data
  uint64_t out_bytes = chain.readable_bytes - kHeaderBytes;  // device-readable data

  auto check_range = [&](uint64_t len) {
    if (len % kSectorSize) {
      req.error = "data length " + std::to_string(len) + " is not a multiple of 512";
      return false;
    }
    if (h.sector > capacity_sectors || len / kSectorSize > capacity_sectors - h.sector) {
      req.error = "sector " + std::to_string(h.sector) + " + " + std::to_string(len / kSectorSize) +
                  " beyond the disk's " + std::to_string(capacity_sectors) + " sectors";
      return false;
    }
    return true;
  };

  switch (h.type) {
    case kTypeIn:
      if (out_bytes) {
        req.error = "read request with device-readable data";
        return req;
      }
      if (!check_range(in_bytes)) return req;
      req.action = BlkRequest::kRead;
      req.length = in_bytes;
      req.data = take_bytes(chain.writable, 0, in_bytes);
      break;
    case kTypeOut:
      if (in_bytes) {
        req.error = "write request with device-writable data";
        return req;
      }
      if (readonly) {
        req.error = "write to a read-only disk";
        return req;
      }
      if (!check_range(out_bytes)) return req;
      req.action = BlkRequest::kWrite;
      req.length = out_bytes;
      req.data = take_bytes(chain.readable, kHeaderBytes, out_bytes);
      break;
    case kTypeFlush:
      req.action = BlkRequest::kFlush;
      break;
    case kTypeDiscard:
    case kTypeWriteZeroes: {
      bool zeroes = h.type == kTypeWriteZeroes;
      if (in_bytes) {
        req.error = "discard/write-zeroes request with device-writable data";
        return req;
      }
      if (readonly) {
        req.error = "discard/write-zeroes on a read-only disk";
        return req;
      }
      constexpr uint64_t kSegBytes = sizeof(virtio_blk_discard_write_zeroes);
      if (out_bytes == 0 || out_bytes % kSegBytes || out_bytes / kSegBytes > kMaxDiscardSegments) {
        req.error = "discard/write-zeroes payload of " + std::to_string(out_bytes) + " bytes";
        return req;
      }
      for (uint64_t i = 0; i < out_bytes / kSegBytes; ++i) {
        virtio_blk_discard_write_zeroes seg;
        read_from_buffers(memory, chain.readable, kHeaderBytes + i * kSegBytes, &seg, sizeof seg);
        uint32_t allowed = zeroes ? VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP : 0;
        if (seg.flags & ~allowed) {
          req.status = kStatusUnsupported;
          req.error = "discard/write-zeroes flags " + std::to_string(seg.flags);
          return req;
        }
        if (seg.num_sectors > kMaxDiscardSectors || seg.sector > capacity_sectors ||
            seg.num_sectors > capacity_sectors - seg.sector) {
          req.error = "discard/write-zeroes of sectors " + std::to_string(seg.sector) + " + " +
                      std::to_string(seg.num_sectors) + " beyond the disk's " +
                      std::to_string(capacity_sectors) + " sectors";
          return req;
        }
        req.ranges.push_back({seg.sector * kSectorSize, uint64_t{seg.num_sectors} * kSectorSize,
                              (seg.flags & VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP) != 0});
      }
      req.action = zeroes ? BlkRequest::kWriteZeroes : BlkRequest::kDiscard;
      req.status = kStatusOk;
      return req;
    }
    case kTypeGetId:
      req.action = BlkRequest::kGetId;
      req.length = std::min<uint64_t>(in_bytes, kIdBytes);
      req.data = take_bytes(chain.writable, 0, req.length);
      break;
    default:
      req.status = kStatusUnsupported;
      req.error = "unsupported request type " + std::to_string(h.type);
      return req;
  }
  if (req.data.size() > kMaxSegments) {
    req.action = BlkRequest::kComplete;
    req.error = "too many data segments";
    return req;
  }
  req.offset = h.sector * kSectorSize;  // check_range bounded it
  req.status = kStatusOk;
  return req;
}

// The per-disk worker thread (see the header for the threading story).
class VirtioBlk::Worker {
 public:
  Worker(VirtioBlk& blk, const VirtioContext& ctx)
      : blk_(blk), ctx_(ctx), queue_(*ctx.queues[0]), memory_(ctx.memory) {
    thread_ = start_device_thread(ctx, "keel-blk", [this] { run(); });
  }
  ~Worker() {
    stop_.signal();
    thread_.join();
  }

 private:
  struct Inflight {
    BlkRequest req;
    std::vector<iovec> iov;
  };

  void run() {
    try {
      io_uring ring;
      int err = blk_.use_io_uring_ ? io_uring_queue_init(kRingDepth, &ring, 0) : -ENOSYS;
      if (err == 0) {
        try {
          run_uring(ring);
        } catch (...) {
          drain(ring);
          io_uring_queue_exit(&ring);
          throw;
        }
        io_uring_queue_exit(&ring);
      } else {
        if (blk_.use_io_uring_)
          log::info("{}: io_uring unavailable ({}), using synchronous I/O", blk_.name(),
                    std::strerror(-err));
        run_sync();
      }
    } catch (const QueueError& e) {
      queue_.mark_broken();
      ctx_.interrupt.queue_broken(0, e.what());
      wait_for_stop();
    } catch (const std::exception& e) {
      log::error("{}: worker stopped: {}", blk_.name(), e.what());
      queue_.mark_broken();
      ctx_.interrupt.queue_broken(0, e.what());
      wait_for_stop();
    }
  }

  // After a failure: wait for the I/O still in flight (it writes guest RAM), completing nothing.
  void drain(io_uring& ring) {
    while (inflight_ > 0) {
      io_uring_cqe* cqe;
      if (io_uring_wait_cqe(&ring, &cqe) < 0) break;
      uint64_t tag = io_uring_cqe_get_data64(cqe);
      if (tag != kKickTag && tag != kStopTag) {
        delete static_cast<Inflight*>(io_uring_cqe_get_data(cqe));
        --inflight_;
      }
      io_uring_cqe_seen(&ring, cqe);
    }
  }

  void wait_for_stop() {
    pollfd p{stop_.fd(), POLLIN, 0};
    while (::poll(&p, 1, -1) < 0 && errno == EINTR) {
    }
  }

  // Next request that needs I/O; requests that need none are completed on the way. Returns
  // nullptr when the queue is empty.
  std::unique_ptr<Inflight> next_io() {
    DescriptorChain chain;
    while (queue_.pop_valid(memory_, chain)) {
      auto in = std::make_unique<Inflight>();
      in->req = parse_blk_request(memory_, chain, blk_.capacity_sectors(), blk_.image_->readonly());
      BlkRequest& req = in->req;
      if (req.action == BlkRequest::kComplete) {
        log::debug("{}: request refused: {}", blk_.name(), req.error);
        complete(req, req.status, 0);
        continue;
      }
      if (req.action == BlkRequest::kGetId) {
        char id[kIdBytes] = {};
        std::memcpy(id, blk_.serial_.data(), std::min<size_t>(blk_.serial_.size(), kIdBytes));
        write_to_buffers(memory_, req.data, 0, id, req.length);
        complete(req, kStatusOk, req.length);
        continue;
      }
      if ((req.action == BlkRequest::kRead || req.action == BlkRequest::kWrite) && req.length == 0) {
        complete(req, kStatusOk, 0);
        continue;
      }
      for (const auto& b : req.data)  // bounds were checked by the chain walker
        in->iov.push_back({memory_.host_ptr(b.gpa, b.len), b.len});
      return in;
    }
    return nullptr;
  }

  void complete(BlkRequest& req, uint8_t status, uint64_t data_written) {
    if (req.action == BlkRequest::kRead && status == kStatusOk)
      for (const auto& b : req.data) memory_.notify_write(b.gpa, b.len);  // DMA landed
    if (req.status_gpa) memory_.write_obj(*req.status_gpa, status);
    queue_.add_used(memory_, req.head, static_cast<uint32_t>(data_written + (req.status_gpa ? 1 : 0)));
    dirty_ = true;
  }

  void publish() {
    if (!dirty_) return;
    dirty_ = false;
    queue_.publish_used(memory_);
    if (queue_.should_notify(memory_)) ctx_.interrupt.signal_queue(0);
  }

  void finish_io(Inflight& in, int64_t result) {
    BlkRequest& req = in.req;
    bool ok = result == static_cast<int64_t>(req.length);  // 0 for flush, discard, write-zeroes
    if (!ok)
      log::warn("{}: I/O error at offset {}: {}", blk_.name(), req.offset,
                result < 0 ? std::strerror(-result) : "short transfer");
    Counters& c = blk_.counters_;
    if (!ok) c.errors.add();
    else if (req.action == BlkRequest::kFlush) c.flushes.add();
    else if (req.action == BlkRequest::kRead) c.reads.add(), c.read_bytes.add(req.length);
    else c.writes.add(), c.write_bytes.add(req.length);
    complete(req, ok ? kStatusOk : kStatusIoErr, ok && req.action == BlkRequest::kRead ? req.length : 0);
  }

  // Runs a request on the calling (worker) thread through the backend: the synchronous
  // fallback, backends without a direct descriptor (qcow2), discard and write-zeroes.
  int64_t do_sync(Inflight& in) {
    BlockBackend& image = *blk_.image_;
    BlkRequest& req = in.req;
    try {
      switch (req.action) {
        case BlkRequest::kRead: image.read(req.offset, in.iov); break;
        case BlkRequest::kWrite: image.write(req.offset, in.iov); break;
        case BlkRequest::kFlush: image.flush(); break;
        case BlkRequest::kDiscard:
          for (const auto& r : req.ranges) image.discard(r.offset, r.length);
          break;
        case BlkRequest::kWriteZeroes:
          for (const auto& r : req.ranges) image.write_zeroes(r.offset, r.length, r.unmap);
          break;
        default: return -EINVAL;
      }
    } catch (const std::exception& e) {
      log::warn("{}: {}", blk_.name(), e.what());
      return -EIO;
    }
    return static_cast<int64_t>(req.length);
  }

  // The descriptor io_uring may use for this request, or -1 to run it through do_sync().
  int direct_fd(const BlkRequest& req) const {
    switch (req.action) {
      case BlkRequest::kRead:
      case BlkRequest::kWrite: return blk_.image_->direct_fd(req.offset, req.length);
      case BlkRequest::kFlush: return blk_.image_->direct_fd(0, 0);
      default: return -1;
    }
  }

  void run_sync() {
    pollfd fds[2] = {{blk_.kick_.fd(), POLLIN, 0}, {stop_.fd(), POLLIN, 0}};
    for (;;) {
      while (auto in = next_io()) finish_io(*in, do_sync(*in));
      publish();
      if (::poll(fds, 2, -1) < 0 && errno != EINTR) throw_errno("poll");
      if (fds[1].revents) return;
      blk_.kick_.consume();
    }
  }

  io_uring_sqe* get_sqe(io_uring& ring) {
    io_uring_sqe* sqe = io_uring_get_sqe(&ring);
    if (!sqe) {
      io_uring_submit(&ring);
      sqe = io_uring_get_sqe(&ring);
    }
    if (!sqe) throw Error("io_uring submission queue full");
    return sqe;
  }

  void arm_poll(io_uring& ring, int fd, uint64_t tag) {
    io_uring_sqe* sqe = get_sqe(ring);
    io_uring_prep_poll_add(sqe, fd, POLLIN);
    io_uring_sqe_set_data64(sqe, tag);
  }

  void submit_available(io_uring& ring) {
    while (inflight_ < kMaxInflight) {
      std::unique_ptr<Inflight> in = next_io();
      if (!in) break;
      int fd = direct_fd(in->req);
      if (fd < 0) {
        finish_io(*in, do_sync(*in));
        continue;
      }
      io_uring_sqe* sqe = get_sqe(ring);
      BlkRequest& req = in->req;
      if (req.action == BlkRequest::kFlush)
        io_uring_prep_fsync(sqe, fd, IORING_FSYNC_DATASYNC);
      else if (req.action == BlkRequest::kRead)
        io_uring_prep_readv(sqe, fd, in->iov.data(), in->iov.size(), req.offset);
      else
        io_uring_prep_writev(sqe, fd, in->iov.data(), in->iov.size(), req.offset);
      io_uring_sqe_set_data(sqe, in.release());
      ++inflight_;
    }
  }

  void run_uring(io_uring& ring) {
    arm_poll(ring, blk_.kick_.fd(), kKickTag);
    arm_poll(ring, stop_.fd(), kStopTag);
    bool stopping = false;
    submit_available(ring);
    publish();
    for (;;) {
      int r = io_uring_submit_and_wait(&ring, 1);
      if (r < 0 && r != -EINTR && r != -EAGAIN && r != -EBUSY)
        throw Error(std::string("io_uring_submit_and_wait: ") + std::strerror(-r));
      unsigned head, seen = 0;
      io_uring_cqe* cqe;
      bool kicked = false;
      io_uring_for_each_cqe(&ring, head, cqe) {
        ++seen;
        uint64_t tag = io_uring_cqe_get_data64(cqe);
        if (tag == kKickTag) {
          kicked = true;
        } else if (tag == kStopTag) {
          stopping = true;
        } else {
          std::unique_ptr<Inflight> in(static_cast<Inflight*>(io_uring_cqe_get_data(cqe)));
          --inflight_;
          finish_io(*in, cqe->res);
        }
      }
      io_uring_cq_advance(&ring, seen);
      if (stopping) {
        publish();
        if (inflight_ == 0) return;  // in-flight I/O writes guest RAM: wait for all of it
        continue;
      }
      if (kicked) {
        blk_.kick_.consume();
        arm_poll(ring, blk_.kick_.fd(), kKickTag);
      }
      submit_available(ring);
      publish();
    }
  }

  VirtioBlk& blk_;
  VirtioContext ctx_;
  SplitQueue& queue_;
  GuestMemory& memory_;
  EventFd stop_;
  unsigned inflight_ = 0;
  bool dirty_ = false;
  std::thread thread_;  // last: started after everything above exists
};

VirtioBlk::VirtioBlk(std::unique_ptr<BlockBackend> image, std::string serial, bool use_io_uring)
    : image_(std::move(image)), serial_(std::move(serial)), use_io_uring_(use_io_uring) {}

VirtioBlk::~VirtioBlk() { reset(); }

uint16_t VirtioBlk::device_id() const { return virtio::kIdBlock; }

uint64_t VirtioBlk::features() const {
  uint64_t f = virtio::bit(kFeatureSegMax) | virtio::bit(kFeatureBlkSize) |
               virtio::bit(kFeatureFlush) | virtio::bit(virtio::kFeatureRingIndirectDesc) |
               virtio::bit(virtio::kFeatureRingEventIdx);
  if (image_->readonly())
    f |= virtio::bit(kFeatureRo);
  else  // the guest's TRIM and zeroing reach the backend (qcow2 frees clusters, raw punches holes)
    f |= virtio::bit(kFeatureDiscard) | virtio::bit(kFeatureWriteZeroes);
  return f;
}

uint32_t VirtioBlk::config_size() const {
  return offsetof(virtio_blk_config, max_secure_erase_sectors);
}

void VirtioBlk::read_config(uint64_t offset, std::span<uint8_t> data) {
  virtio_blk_config c{};  // little-endian host: the fields are stored as they are
  c.capacity = capacity_sectors();
  c.seg_max = kSegMax;
  c.blk_size = kSectorSize;
  c.max_discard_sectors = kMaxDiscardSectors;
  c.max_discard_seg = kMaxDiscardSegments;
  c.discard_sector_alignment = std::max<uint32_t>(1, image_->discard_granularity() / kSectorSize);
  c.max_write_zeroes_sectors = kMaxDiscardSectors;
  c.max_write_zeroes_seg = kMaxDiscardSegments;
  c.write_zeroes_may_unmap = 1;
  read_config_image({reinterpret_cast<const uint8_t*>(&c), config_size()}, offset, data);
}

void VirtioBlk::activate(const VirtioContext& ctx) {
  worker_.reset();
  kick_.consume();
  worker_ = std::make_unique<Worker>(*this, ctx);
}

void VirtioBlk::notify(uint16_t queue) {
  if (queue == 0) kick_.signal();
}

void VirtioBlk::reset() { worker_.reset(); }

sandbox::AllowList VirtioBlk::worker_syscalls() {
  return {
      {"io_uring_setup"}, {"io_uring_enter"}, {"io_uring_register"},  // the ring (mmap'd)
      {"preadv"},         {"pwritev"},        {"preadv2"},           {"pwritev2"},
      {"pread64"},        {"pwrite64"},       {"fdatasync"},         {"fsync"},
      {"read"},           {"poll"},           {"ppoll"},  // kick and stop eventfds
      {"fallocate"},  // raw discard / write-zeroes
      {"write"},      // a backend's warning on stderr
  };
}

}  // namespace keel
