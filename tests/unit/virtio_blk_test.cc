#include <fcntl.h>
#include <linux/virtio_blk.h>
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>

#include "backends/block/raw_image.h"
#include "backends/block/block_backend.h"
#include "backends/block/qcow2_image.h"
#include "devices/virtio/virtio_blk.h"
#include "qemu_img.h"
#include "virtio_harness.h"

namespace keel {
namespace {

using testing::Buf;
using testing::VirtioHarness;
using namespace virtio_blk;

constexpr uint64_t kImageBytes = 1 << 20;

class TempImage {
 public:
  TempImage() {
    path_ = std::filesystem::temp_directory_path() /
            ("keel-blk-" + std::to_string(getpid()) + "-" + std::to_string(counter_++) + ".img");
    std::ofstream f(path_, std::ios::binary);
    for (uint64_t i = 0; i < kImageBytes; ++i) f.put(static_cast<char>(pattern(i)));
  }
  ~TempImage() { std::filesystem::remove(path_); }
  static uint8_t pattern(uint64_t i) { return static_cast<uint8_t>(i * 7 + i / 512); }
  std::string path() const { return path_.string(); }
  std::vector<uint8_t> read(uint64_t offset, size_t len) const {
    std::vector<uint8_t> v(len);
    std::ifstream f(path_, std::ios::binary);
    f.seekg(offset);
    f.read(reinterpret_cast<char*>(v.data()), len);
    return v;
  }

 private:
  static inline int counter_ = 0;
  std::filesystem::path path_;
};

struct Request {
  uint16_t head;
  uint64_t data;
  uint64_t status;
};

class VirtioBlkTest : public ::testing::TestWithParam<bool> {
 protected:
  void start(bool readonly = false) { start_with(RawImage::open(image.path(), readonly)); }
  void start_with(std::unique_ptr<BlockBackend> backend) {
    auto blk = std::make_unique<VirtioBlk>(std::move(backend), "keel-serial-0001", GetParam());
    h = std::make_unique<VirtioHarness>(std::move(blk));
    ASSERT_TRUE(h->init() & virtio::kStatusDriverOk);
  }
  // Header (readable) + data (writable for reads, readable for writes) + status (writable).
  Request submit(uint32_t type, uint64_t sector, uint32_t len, bool data_writable,
                 const std::vector<uint8_t>& payload = {}) {
    struct {
      uint32_t type, reserved;
      uint64_t sector;
    } hdr{type, 0, sector};
    Request r;
    uint64_t hdr_gpa = h->put(&hdr, sizeof hdr);
    r.data = h->alloc(std::max<uint32_t>(len, 1), 512);
    if (!payload.empty()) h->memory.write(r.data, payload.data(), payload.size());
    r.status = h->alloc(1);
    h->memory.write_obj<uint8_t>(r.status, 0xee);
    std::vector<Buf> bufs = {{hdr_gpa, sizeof hdr, false}};
    if (len) bufs.push_back({r.data, len, data_writable});
    bufs.push_back({r.status, 1, true});
    r.head = h->add_chain(0, bufs);
    return r;
  }
  uint8_t status(const Request& r) { return h->memory.read_obj<uint8_t>(r.status); }
  // A discard / write-zeroes request with one segment.
  Request submit_range(uint32_t type, uint64_t sector, uint32_t sectors, uint32_t flags = 0) {
    virtio_blk_discard_write_zeroes seg{sector, sectors, flags};
    std::vector<uint8_t> payload(sizeof seg);
    std::memcpy(payload.data(), &seg, sizeof seg);
    return submit(type, 0, sizeof seg, false, payload);
  }
  uint8_t run_one(const Request& r) {
    h->kick(0);
    EXPECT_TRUE(h->next_used(0));
    return status(r);
  }

  TempImage image;
  std::unique_ptr<VirtioHarness> h;
};

TEST_P(VirtioBlkTest, ReportsCapacityAndFeatures) {
  start();
  EXPECT_EQ(h->device_cfg(0, 8), kImageBytes / 512);
  EXPECT_EQ(h->device_cfg(12, 4), kSegMax);
  EXPECT_EQ(h->cfg_read(0x02, 2), 0x1042u);
  EXPECT_TRUE(h->device_features() & virtio::bit(kFeatureFlush));
  EXPECT_FALSE(h->device_features() & virtio::bit(kFeatureRo));
}

TEST_P(VirtioBlkTest, ReadsSectors) {
  start();
  Request r = submit(kTypeIn, 3, 1024, true);
  h->kick(0);
  auto used = h->next_used(0);
  ASSERT_TRUE(used);
  EXPECT_EQ(used->id, r.head);
  EXPECT_EQ(used->len, 1025u);
  EXPECT_EQ(status(r), kStatusOk);
  std::vector<uint8_t> got(1024);
  h->memory.read(r.data, got.data(), got.size());
  EXPECT_EQ(got, image.read(3 * 512, 1024));
}

// The largest request seg_max allows, as direct descriptors: header, kSegMax scattered 512-byte
// buffers and the status fill the whole 256-entry queue.
TEST_P(VirtioBlkTest, ServesARequestOfSegMaxSegmentsInOneRing) {
  start();
  ASSERT_EQ(kSegMax + 2, 256u);
  struct {
    uint32_t type, reserved;
    uint64_t sector;
  } hdr{kTypeIn, 0, 5};
  std::vector<Buf> bufs = {{h->put(&hdr, sizeof hdr), sizeof hdr, false}};
  std::vector<uint64_t> data;
  for (uint32_t i = 0; i < kSegMax; ++i) {
    data.push_back(h->alloc(512 + 64, 512));  // not contiguous: a gap after each buffer
    bufs.push_back({data.back(), 512, true});
  }
  uint64_t status_gpa = h->alloc(1);
  bufs.push_back({status_gpa, 1, true});
  uint16_t head = h->add_chain(0, bufs);
  h->kick(0);
  auto used = h->next_used(0);
  ASSERT_TRUE(used);
  EXPECT_EQ(used->id, head);
  EXPECT_EQ(used->len, kSegMax * 512 + 1);
  EXPECT_EQ(h->memory.read_obj<uint8_t>(status_gpa), kStatusOk);
  for (uint32_t i = 0; i < kSegMax; i += 53) {
    std::vector<uint8_t> got(512);
    h->memory.read(data[i], got.data(), got.size());
    EXPECT_EQ(got, image.read((5 + i) * 512ull, 512)) << "segment " << i;
  }
}

TEST_P(VirtioBlkTest, WritesSectorsToTheImage) {
  start();
  std::vector<uint8_t> payload(2048, 0xa5);
  Request r = submit(kTypeOut, 10, 2048, false, payload);
  Request f = submit(kTypeFlush, 0, 0, false);
  h->kick(0);
  ASSERT_TRUE(h->wait_pending_used(0, 2));
  EXPECT_EQ(status(r), kStatusOk);
  EXPECT_EQ(status(f), kStatusOk);
  EXPECT_EQ(h->get_used(0)->len, 1u);
  EXPECT_EQ(image.read(10 * 512, 2048), payload);
  EXPECT_EQ(image.read(9 * 512, 1)[0], TempImage::pattern(9 * 512));  // neighbours untouched
}

TEST_P(VirtioBlkTest, ServesIndirectChainsAndManyRequestsPerKick) {
  start();
  std::vector<Request> reqs;
  for (int i = 0; i < 40; ++i) {
    struct {
      uint32_t type, reserved;
      uint64_t sector;
    } hdr{kTypeIn, 0, static_cast<uint64_t>(i)};
    Request r;
    uint64_t hdr_gpa = h->put(&hdr, sizeof hdr);
    r.data = h->alloc(512, 512);
    r.status = h->alloc(1);
    r.head = h->add_indirect_chain(0, {{hdr_gpa, 16, false}, {r.data, 512, true}, {r.status, 1, true}});
    reqs.push_back(r);
  }
  h->kick(0);
  ASSERT_TRUE(h->wait_pending_used(0, 40));
  for (int i = 0; i < 40; ++i) {
    EXPECT_EQ(status(reqs[i]), kStatusOk);
    std::vector<uint8_t> got(512);
    h->memory.read(reqs[i].data, got.data(), 512);
    EXPECT_EQ(got, image.read(i * 512, 512)) << i;
  }
}

TEST_P(VirtioBlkTest, GetIdReturnsTheSerial) {
  start();
  Request r = submit(kTypeGetId, 0, 20, true);
  h->kick(0);
  auto used = h->next_used(0);
  ASSERT_TRUE(used);
  EXPECT_EQ(used->len, 21u);
  char id[21] = {};
  h->memory.read(r.data, id, 20);
  EXPECT_STREQ(id, "keel-serial-0001");
}

TEST_P(VirtioBlkTest, WriteZeroesAndDiscardReachTheImage) {
  start();
  EXPECT_TRUE(h->device_features() & virtio::bit(kFeatureDiscard));
  EXPECT_TRUE(h->device_features() & virtio::bit(kFeatureWriteZeroes));
  EXPECT_EQ(h->device_cfg(36, 4), kMaxDiscardSectors);
  EXPECT_EQ(h->device_cfg(40, 4), kMaxDiscardSegments);
  EXPECT_EQ(h->device_cfg(56, 1), 1u);  // write_zeroes_may_unmap
  EXPECT_EQ(run_one(submit_range(kTypeWriteZeroes, 4, 4)), kStatusOk);
  EXPECT_EQ(image.read(4 * 512, 2048), std::vector<uint8_t>(2048, 0));
  EXPECT_EQ(image.read(8 * 512, 1)[0], TempImage::pattern(8 * 512));
  EXPECT_EQ(run_one(submit_range(kTypeWriteZeroes, 16, 8, VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP)), kStatusOk);
  EXPECT_EQ(image.read(16 * 512, 4096), std::vector<uint8_t>(4096, 0));
  EXPECT_EQ(run_one(submit_range(kTypeDiscard, 64, 64)), kStatusOk);
  // Refused: the unmap flag on a discard, a range past the end, a short payload.
  EXPECT_EQ(run_one(submit_range(kTypeDiscard, 0, 8, VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP)), kStatusUnsupported);
  EXPECT_EQ(run_one(submit_range(kTypeWriteZeroes, kImageBytes / 512 - 1, 2)), kStatusIoErr);
  EXPECT_EQ(run_one(submit(kTypeDiscard, 0, 8, false, std::vector<uint8_t>(8, 0))), kStatusIoErr);
}

TEST_P(VirtioBlkTest, ReadOnlyDiskRefusesDiscard) {
  start(/*readonly=*/true);
  EXPECT_FALSE(h->device_features() & virtio::bit(kFeatureDiscard));
  EXPECT_EQ(run_one(submit_range(kTypeWriteZeroes, 0, 8)), kStatusIoErr);
  EXPECT_EQ(image.read(0, 1)[0], TempImage::pattern(0));
}

// A qcow2 disk goes through the backend's read/write on the worker (no io_uring descriptor); the
// guest's TRIM frees clusters and the image stays consistent.
TEST_P(VirtioBlkTest, Qcow2DiskServesReadsWritesAndTrim) {
  testing::TempDir dir;
  std::string path = (dir / "disk.qcow2").string();
  Qcow2Image::create(path, 8 << 20);
  start_with(Qcow2Image::open(path, false));
  EXPECT_EQ(h->device_cfg(0, 8), (8u << 20) / 512);
  EXPECT_EQ(h->device_cfg(44, 4), 128u);  // discard alignment: one 64 KiB cluster
  std::vector<uint8_t> payload(128 << 10);
  for (size_t i = 0; i < payload.size(); ++i) payload[i] = static_cast<uint8_t>(i * 13 + i / 4096);
  EXPECT_EQ(run_one(submit(kTypeOut, 100, payload.size(), false, payload)), kStatusOk);
  EXPECT_EQ(run_one(submit(kTypeFlush, 0, 0, false)), kStatusOk);
  Request r = submit(kTypeIn, 100, payload.size(), true);
  EXPECT_EQ(run_one(r), kStatusOk);
  std::vector<uint8_t> got(payload.size());
  h->memory.read(r.data, got.data(), got.size());
  EXPECT_EQ(got, payload);
  EXPECT_EQ(run_one(submit_range(kTypeDiscard, 0, 1024)), kStatusOk);
  Request z = submit(kTypeIn, 128, 65536, true);
  EXPECT_EQ(run_one(z), kStatusOk);
  h->memory.read(z.data, got.data(), 65536);
  EXPECT_EQ(std::vector<uint8_t>(got.begin(), got.begin() + 65536), std::vector<uint8_t>(65536, 0));
  h.reset();  // closes the image
  testing::Shell check = testing::sh("qemu-img check " + path);
  EXPECT_EQ(check.status, 0) << check.out;
}

TEST_P(VirtioBlkTest, ReadOnlyDiskRefusesWritesWithIoError) {
  start(/*readonly=*/true);
  EXPECT_TRUE(h->device_features() & virtio::bit(kFeatureRo));
  Request r = submit(kTypeOut, 0, 512, false, std::vector<uint8_t>(512, 0));
  h->kick(0);
  ASSERT_TRUE(h->next_used(0));
  EXPECT_EQ(status(r), kStatusIoErr);
  EXPECT_EQ(image.read(0, 1)[0], TempImage::pattern(0));
}

TEST_P(VirtioBlkTest, MalformedRequestsGetErrorsAndTheQueueGoesOn) {
  start();
  Request beyond = submit(kTypeIn, kImageBytes / 512 - 1, 1024, true);  // past the end
  Request huge = submit(kTypeIn, ~0ull / 2, 512, true);                  // sector overflow
  Request odd = submit(kTypeIn, 0, 100, true);                           // not 512-aligned
  Request wrong_dir = submit(kTypeIn, 0, 512, false);                    // data device-readable
  Request write_dir = submit(kTypeOut, 0, 512, true);                    // data device-writable
  Request unknown = submit(77, 0, 0, false);
  // A descriptor loop: refused with length 0.
  uint64_t hdr = h->alloc(16);
  uint16_t loop = h->queues[0].next_desc;
  h->write_desc(0, loop, hdr, 16, kDescFlagNext, loop + 1);
  h->write_desc(0, loop + 1, hdr, 16, kDescFlagNext, loop);
  h->make_available(0, loop);
  h->queues[0].next_desc += 2;
  // A buffer outside guest RAM.
  uint16_t outside = h->queues[0].next_desc;
  h->write_desc(0, outside, 0x1'0000'0000ull + (64 << 20), 16, 0, 0);
  h->make_available(0, outside);
  h->queues[0].next_desc += 1;
  Request good = submit(kTypeIn, 1, 512, true);
  h->kick(0);
  ASSERT_TRUE(h->wait_pending_used(0, 9));
  EXPECT_EQ(status(beyond), kStatusIoErr);
  EXPECT_EQ(status(huge), kStatusIoErr);
  EXPECT_EQ(status(odd), kStatusIoErr);
  EXPECT_EQ(status(wrong_dir), kStatusIoErr);
  EXPECT_EQ(status(write_dir), kStatusIoErr);
  EXPECT_EQ(status(unknown), kStatusUnsupported);
  EXPECT_EQ(status(good), kStatusOk);
  std::map<uint16_t, uint32_t> lens;
  while (auto u = h->get_used(0)) lens[u->id] = u->len;
  EXPECT_EQ(lens.at(loop), 0u);
  EXPECT_EQ(lens.at(outside), 0u);
  EXPECT_EQ(lens.at(beyond.head), 1u);
  EXPECT_EQ(lens.at(good.head), 513u);
  EXPECT_FALSE(h->status() & virtio::kStatusNeedsReset);
  EXPECT_EQ(image.read(0, 1)[0], TempImage::pattern(0));
}

TEST_P(VirtioBlkTest, BrokenAvailableRingNeedsReset) {
  start();
  h->memory.write_obj<uint16_t>(h->queues[0].avail + 2, 1000);
  h->kick(0);
  ASSERT_TRUE(h->msi.wait(VirtioHarness::kMsiBase, 1));  // config interrupt
  EXPECT_TRUE(h->status() & virtio::kStatusNeedsReset);
  // Reset and the disk works again.
  h->set_common(0x14, 1, 0);
  ASSERT_TRUE(h->init() & virtio::kStatusDriverOk);
  EXPECT_FALSE(h->status() & virtio::kStatusNeedsReset);
  Request r = submit(kTypeIn, 0, 512, true);
  h->kick(0);
  ASSERT_TRUE(h->next_used(0));
  EXPECT_EQ(status(r), kStatusOk);
}

INSTANTIATE_TEST_SUITE_P(IoPaths, VirtioBlkTest, ::testing::Values(true, false),
                         [](const auto& info) { return info.param ? "IoUring" : "Sync"; });

TEST(RawImage, RefusesMissingFilesNamingThem) {
  try {
    RawImage::open("/nonexistent/keel-disk.img", false);
    FAIL() << "opened a missing file";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("/nonexistent/keel-disk.img"), std::string::npos);
  }
}

TEST(RawImage, RefusesDirectories) {
  EXPECT_THROW(RawImage::open("/tmp", true), Error);
}

TEST(RawImage, RefusesAnImageAnotherKeelHasOpen) {
  TempImage image;
  auto first = RawImage::open(image.path(), false);
  try {
    RawImage::open(image.path(), false);
    FAIL() << "opened a locked image";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("locked"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find(image.path()), std::string::npos) << e.what();
  }
  EXPECT_THROW(RawImage::open(image.path(), true), Error);  // read-only cannot share a writer
  first.reset();
  auto a = RawImage::open(image.path(), true);  // two read-only users may share
  auto b = RawImage::open(image.path(), true);
  EXPECT_THROW(RawImage::open(image.path(), false), Error);
}

}  // namespace
}  // namespace keel
