// qcow2 backend: images made by qemu-img read byte for byte as `qemu-img convert -O raw` gives
// them; writes, discards and zeroing leave images `qemu-img check` finds clean and `qemu-img
// compare` finds equal to a raw reference; a writer killed mid-loop leaves a checkable image;
// malformed images, other formats and backing loops are refused with messages naming the cause.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <random>

#include "backends/block/image_format.h"
#include "backends/block/qcow2_image.h"
#include "backends/block/raw_image.h"
#include "base/error.h"
#include "qemu_img.h"

namespace keel {
namespace {

namespace fs = std::filesystem;
using testing::Shell;
using testing::TempDir;
using testing::sh;

constexpr uint64_t kDiskBytes = (4ull << 20) + 3 * 512;  // not a whole number of clusters

// A raw file with data, zero runs and a hole, deterministic.
void write_pattern(const fs::path& path, uint64_t size, uint32_t seed) {
  std::vector<uint8_t> data(size);
  std::mt19937 rng(seed);
  for (uint64_t i = 0; i < size; i += 4096) {
    uint32_t kind = rng() % 4;
    for (uint64_t j = i; j < std::min(size, i + 4096); ++j)
      data[j] = kind == 0 ? 0 : kind == 1 ? static_cast<uint8_t>(j) : static_cast<uint8_t>(rng());
  }
  std::ofstream(path, std::ios::binary).write(reinterpret_cast<const char*>(data.data()), data.size());
}

std::vector<uint8_t> read_file(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

std::vector<uint8_t> read_all(BlockBackend& disk) {
  std::vector<uint8_t> out(disk.size());
  // In odd-sized pieces, so reads start and end inside clusters.
  for (uint64_t at = 0; at < out.size();) {
    uint64_t n = std::min<uint64_t>(out.size() - at, 12345 * 512 % (3 << 20) + 512);
    disk.read_bytes(at, out.data() + at, n);
    at += n;
  }
  return out;
}

struct MadeImage {
  std::string name;
  std::string convert_options;  // qemu-img convert -O qcow2 -o ...
  bool compressed = false;
  bool backing = false;  // over a qcow2 base holding the pattern; the overlay rewrites part
  bool raw_backing = false;
};

class Qcow2Read : public ::testing::TestWithParam<MadeImage> {};

TEST_P(Qcow2Read, MatchesQemuImgConvert) {
  const MadeImage& m = GetParam();
  TempDir dir;
  fs::path raw = dir / "data.raw", img = dir / "disk.qcow2", expect = dir / "expect.raw";
  write_pattern(raw, kDiskBytes, 1);
  if (m.backing || m.raw_backing) {
    fs::path base = dir / (m.raw_backing ? "base.raw" : "base.qcow2");
    if (m.raw_backing)
      fs::rename(raw, base);
    else
      ASSERT_EQ(sh("qemu-img convert -O qcow2 " + raw.string() + " " + base.string()).status, 0);
    // Relative backing name, resolved against the overlay's directory.
    ASSERT_EQ(sh("cd " + dir.str() + " && qemu-img create -q -f qcow2 -o " + m.convert_options + " -b " +
                 base.filename().string() + " -F " + (m.raw_backing ? "raw" : "qcow2") + " disk.qcow2")
                  .status,
              0);
    // Overwrite some of it, zero some (zero clusters), discard some.
    ASSERT_EQ(sh("qemu-io -c 'write -P 0xab 100k 300k' -c 'write -z 1M 256k' -c 'write -z 2M 64k' "
                 "-c 'discard 3M 128k' " + img.string()).status, 0);
  } else {
    ASSERT_EQ(sh(std::string("qemu-img convert ") + (m.compressed ? "-c " : "") + "-O qcow2 -o " +
                 m.convert_options + " " + raw.string() + " " + img.string()).status, 0);
  }
  ASSERT_EQ(sh("qemu-img convert -O raw " + img.string() + " " + expect.string()).status, 0);
  auto disk = Qcow2Image::open(img.string(), true);
  EXPECT_EQ(disk->size(), fs::file_size(expect));
  EXPECT_TRUE(read_all(*disk) == read_file(expect));
}

INSTANTIATE_TEST_SUITE_P(
    Images, Qcow2Read,
    ::testing::Values(MadeImage{"v2", "compat=0.10"}, MadeImage{"v3", "compat=1.1"},
                      MadeImage{"v3_512", "cluster_size=512"}, MadeImage{"v3_4k", "cluster_size=4096"},
                      MadeImage{"v3_2m", "cluster_size=2M"},
                      MadeImage{"refcount1", "refcount_bits=1"}, MadeImage{"refcount64", "refcount_bits=64"},
                      MadeImage{"zlib", "compat=1.1", true},
                      MadeImage{"zstd", "compression_type=zstd", true},
                      MadeImage{"v2_zlib", "compat=0.10", true},
                      MadeImage{"qcow2_backing", "compat=1.1", false, true},
                      MadeImage{"v2_backing", "compat=0.10", false, true},
                      MadeImage{"raw_backing", "compat=1.1", false, false, true}),
    [](const auto& info) { return info.param.name; });

// --- writing

// Random writes, rewrites, discards and zeroing through keel, mirrored into a raw reference.
void exercise(BlockBackend& disk, std::vector<uint8_t>& ref, uint32_t seed, int ops) {
  std::mt19937 rng(seed);
  const uint64_t sectors = disk.size() / 512;
  for (int i = 0; i < ops; ++i) {
    uint64_t at = rng() % sectors * 512;
    uint64_t n = std::min<uint64_t>((rng() % 300 + 1) * 512, disk.size() - at);
    switch (rng() % 6) {
      case 0:
        disk.discard(at, n);  // freed clusters read as zeros or as the backing file's data
        disk.read_bytes(at, ref.data() + at, n);
        break;
      case 1:
        disk.write_zeroes(at, n, rng() % 2);
        std::fill(ref.begin() + at, ref.begin() + at + n, 0);
        break;
      default: {
        std::vector<uint8_t> data(n);
        for (auto& b : data) b = static_cast<uint8_t>(rng());
        disk.write_bytes(at, data.data(), n);
        std::copy(data.begin(), data.end(), ref.begin() + at);
      }
    }
    if (i % 17 == 0) disk.flush();
  }
}

struct WriteCase {
  std::string name;
  std::string create;  // qemu-img create -o
  bool backing = false;
};

class Qcow2Write : public ::testing::TestWithParam<WriteCase> {};

TEST_P(Qcow2Write, CheckCleanAndEqualToRawReference) {
  const WriteCase& c = GetParam();
  TempDir dir;
  fs::path img = dir / "disk.qcow2", ref_path = dir / "ref.raw";
  std::string backing;
  if (c.backing) {
    write_pattern(dir / "base.raw", kDiskBytes, 2);
    ASSERT_EQ(sh("qemu-img convert -c -O qcow2 " + (dir / "base.raw").string() + " " +
                 (dir / "base.qcow2").string()).status, 0);
    backing = " -b base.qcow2 -F qcow2";
  }
  ASSERT_EQ(sh("cd " + dir.str() + " && qemu-img create -q -f qcow2 -o " + c.create + backing +
               " disk.qcow2 " + std::to_string(kDiskBytes)).status, 0);
  std::vector<uint8_t> ref;
  {
    auto disk = Qcow2Image::open(img.string(), false);
    ref = read_all(*disk);
    exercise(*disk, ref, 7, 400);
    exercise(*disk, ref, 8, 200);  // rewrites over what the discards left
    EXPECT_TRUE(read_all(*disk) == ref);
  }
  std::ofstream(ref_path, std::ios::binary).write(reinterpret_cast<const char*>(ref.data()), ref.size());
  Shell check = sh("qemu-img check " + img.string());
  EXPECT_EQ(check.status, 0) << check.out;
  Shell cmp = sh("qemu-img compare -f qcow2 -F raw " + img.string() + " " + ref_path.string());
  EXPECT_EQ(cmp.status, 0) << cmp.out;
  // And keel reads back what QEMU reads.
  auto again = Qcow2Image::open(img.string(), true);
  EXPECT_TRUE(read_all(*again) == ref);
}

INSTANTIATE_TEST_SUITE_P(
    Images, Qcow2Write,
    ::testing::Values(WriteCase{"v3", "compat=1.1"}, WriteCase{"v2", "compat=0.10"},
                      // 512-byte clusters: many refcount blocks, the refcount table grows
                      WriteCase{"v3_512", "cluster_size=512"},
                      WriteCase{"refcount1", "refcount_bits=1,cluster_size=4096"},
                      WriteCase{"backing_compressed", "compat=1.1", true},
                      WriteCase{"v2_backing", "compat=0.10", true}),
    [](const auto& info) { return info.param.name; });

TEST(Qcow2Write, DiscardFreesClustersAndCloseTrimsTheFile) {
  TempDir dir;
  fs::path img = dir / "disk.qcow2";
  ASSERT_EQ(sh("qemu-img create -q -f qcow2 " + img.string() + " 64M").status, 0);
  const uint64_t empty = fs::file_size(img);
  std::vector<uint8_t> data(8 << 20, 0x5a);
  {
    auto disk = Qcow2Image::open(img.string(), false);
    disk->write_bytes(0, data.data(), data.size());
    disk->flush();
  }
  EXPECT_GE(fs::file_size(img), empty + data.size());
  {
    auto disk = Qcow2Image::open(img.string(), false);
    disk->discard(0, data.size());
  }
  EXPECT_EQ(sh("qemu-img check " + img.string()).status, 0);
  // Every data cluster was at the end and is free again: the file is back to its metadata (plus
  // the L2 table the writes needed; qemu-img leaves the L1 table's cluster short).
  EXPECT_LE(fs::file_size(img), empty + (128 << 10)) << "the freed tail was not trimmed";
  // Freed clusters are reused rather than appended.
  {
    auto disk = Qcow2Image::open(img.string(), false);
    disk->write_bytes(16 << 20, data.data(), 1 << 20);
  }
  EXPECT_LE(fs::file_size(img), empty + (2 << 20));
  EXPECT_EQ(sh("qemu-img check " + img.string()).status, 0);
}

TEST(Qcow2Write, RefcountTableGrowsWhenTheImageDoes) {
  TempDir dir;
  fs::path img = dir / "disk.qcow2", ref = dir / "ref.raw";
  // 512-byte clusters: one refcount table cluster covers 64 blocks of 256 clusters (8 MiB).
  ASSERT_EQ(sh("qemu-img create -q -f qcow2 -o cluster_size=512 " + img.string() + " 24M").status, 0);
  write_pattern(ref, 24 << 20, 12);
  std::vector<uint8_t> data = read_file(ref);
  {
    auto disk = Qcow2Image::open(img.string(), false);
    for (uint64_t at = 0; at < data.size(); at += 1 << 20) disk->write_bytes(at, data.data() + at, 1 << 20);
    EXPECT_GT(disk->header().refcount_table_clusters, 1u);
  }
  Shell check = sh("qemu-img check " + img.string());
  EXPECT_EQ(check.status, 0) << check.out;
  EXPECT_EQ(sh("qemu-img compare -f qcow2 -F raw " + img.string() + " " + ref.string()).status, 0);
}

TEST(Qcow2Write, InternalSnapshotIsCopiedOnWrite) {
  TempDir dir;
  fs::path img = dir / "disk.qcow2", raw = dir / "data.raw", snap = dir / "snap.raw";
  write_pattern(raw, kDiskBytes, 3);
  ASSERT_EQ(sh("qemu-img convert -O qcow2 " + raw.string() + " " + img.string()).status, 0);
  ASSERT_EQ(sh("qemu-img snapshot -c before " + img.string()).status, 0);
  std::vector<uint8_t> ref;
  {
    auto disk = Qcow2Image::open(img.string(), false);
    ref = read_all(*disk);
    exercise(*disk, ref, 9, 150);
  }
  EXPECT_EQ(sh("qemu-img check " + img.string()).status, 0) << sh("qemu-img check " + img.string()).out;
  // The snapshot still holds the original data.
  ASSERT_EQ(sh("qemu-img convert -l snapshot.name=before -O raw " + img.string() + " " + snap.string()).status, 0);
  EXPECT_TRUE(read_file(snap) == read_file(raw));
}

// A writer SIGKILLed in the middle of its loop: the image has at most leaked clusters.
TEST(Qcow2Write, KilledWriterLeavesACheckableImage) {
  TempDir dir;
  fs::path img = dir / "disk.qcow2";
  ASSERT_EQ(sh("qemu-img create -q -f qcow2 -o cluster_size=4096 " + img.string() + " 256M").status, 0);
  int ready[2];
  ASSERT_EQ(pipe(ready), 0);
  pid_t pid = fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    close(ready[0]);
    auto disk = Qcow2Image::open(img.string(), false);
    std::mt19937 rng(11);
    std::vector<uint8_t> data(64 << 10, 0x77);
    for (uint64_t i = 0;; ++i) {
      uint64_t at = rng() % ((256ull << 20) / 512 - 128) * 512;
      if (i % 5 == 4)
        disk->discard(at, data.size());
      else
        disk->write_bytes(at, data.data(), data.size());
      if (i == 200) (void)!write(ready[1], "r", 1);  // well inside the loop; it keeps going
    }
  }
  close(ready[1]);
  char byte;
  ASSERT_EQ(read(ready[0], &byte, 1), 1);
  kill(pid, SIGKILL);
  int status;
  waitpid(pid, &status, 0);
  close(ready[0]);
  ASSERT_TRUE(WIFSIGNALED(status));
  Shell check = sh("qemu-img check " + img.string());
  // 0: clean; 3: leaked clusters only ("waste of disk space, but no harm to data").
  EXPECT_TRUE(check.status == 0 || check.status == 3) << check.out;
  EXPECT_EQ(check.out.find("ERROR"), std::string::npos) << check.out;
  // And keel opens it again and writes on.
  auto disk = Qcow2Image::open(img.string(), false);
  std::vector<uint8_t> data(4096, 1);
  disk->write_bytes(0, data.data(), data.size());
}

// --- refusals

void patch(const fs::path& path, uint64_t offset, std::vector<uint8_t> bytes) {
  std::fstream f(path, std::ios::in | std::ios::out | std::ios::binary);
  f.seekp(static_cast<std::streamoff>(offset));
  f.write(reinterpret_cast<const char*>(bytes.data()), bytes.size());
}

std::vector<uint8_t> be64(uint64_t v) {
  std::vector<uint8_t> b(8);
  for (int i = 7; i >= 0; --i, v >>= 8) b[i] = static_cast<uint8_t>(v);
  return b;
}

std::string open_error(const fs::path& path, bool readonly = true) {
  try {
    auto disk = open_block_backend(path.string(), ImageFormat::kAuto, readonly);
    std::vector<uint8_t> buf(disk->size());
    disk->read_bytes(0, buf.data(), buf.size());
  } catch (const Error& e) {
    return e.what();
  }
  return "(no error)";
}

TEST(Qcow2Refuse, MalformedHeaders) {
  TempDir dir;
  fs::path img = dir / "disk.qcow2";
  auto fresh = [&] {
    fs::remove(img);
    EXPECT_EQ(sh("qemu-img create -q -f qcow2 " + img.string() + " 16M").status, 0);
  };
  fresh();
  patch(img, 4, {0, 0, 0, 4});
  EXPECT_NE(open_error(img).find("qcow2 version 4"), std::string::npos) << open_error(img);
  fresh();
  patch(img, 20, {0, 0, 0, 30});
  EXPECT_NE(open_error(img).find("cluster_bits 30"), std::string::npos) << open_error(img);
  fresh();
  patch(img, 40, be64(1ull << 40));  // L1 table far outside the file
  EXPECT_NE(open_error(img).find("L1 table at"), std::string::npos) << open_error(img);
  fresh();
  patch(img, 48, be64(1ull << 40));
  EXPECT_NE(open_error(img).find("refcount table at"), std::string::npos) << open_error(img);
  fresh();
  patch(img, 36, {0, 0, 0, 0});  // an L1 table that cannot cover 16 MiB
  EXPECT_NE(open_error(img).find("does not cover the virtual size"), std::string::npos) << open_error(img);
  fresh();
  patch(img, 96, {0, 0, 0, 7});
  EXPECT_NE(open_error(img).find("refcount_order 7"), std::string::npos) << open_error(img);
  fresh();
  patch(img, 72, be64(1ull << 40));
  EXPECT_NE(open_error(img).find("unknown incompatible features"), std::string::npos) << open_error(img);
  fresh();
  patch(img, 0, {'Q', 'F', 'I', 0xfb});
  patch(img, 100, {0, 0, 0, 99});  // header_length not a multiple of 8
  EXPECT_NE(open_error(img).find("header_length"), std::string::npos) << open_error(img);

  fs::remove(img);
  ASSERT_EQ(sh("qemu-img create -q -f qcow2 -o extended_l2=on " + img.string() + " 16M").status, 0);
  EXPECT_NE(open_error(img).find("subclusters"), std::string::npos) << open_error(img);
  fresh();
  patch(img, 32, {0, 0, 0, 2});  // crypt_method LUKS
  EXPECT_NE(open_error(img).find("encrypted"), std::string::npos) << open_error(img);
}

// Where qemu-img put the first L2 table: the first L1 entry's offset.
uint64_t first_l2(const fs::path& img) {
  auto d = Qcow2Image::open(img.string(), true);
  std::vector<uint8_t> e(8);
  int fd = ::open(img.c_str(), O_RDONLY);
  (void)!pread(fd, e.data(), 8, static_cast<off_t>(d->header().l1_table_offset));
  close(fd);
  return qcow2::be64(e.data()) & qcow2::kOffsetMask;
}

TEST(Qcow2Refuse, TablesPointingOutsideTheFileOrAtMetadata) {
  TempDir dir;
  fs::path img = dir / "disk.qcow2";
  ASSERT_EQ(sh("qemu-img create -q -f qcow2 " + img.string() + " 16M && qemu-io -c 'write 0 64k' " +
               img.string()).status, 0);
  uint64_t l2 = first_l2(img);
  auto h = Qcow2Image::open(img.string(), true)->header();
  patch(img, l2, be64(qcow2::kCopied | (1ull << 40)));  // data cluster far past the end
  EXPECT_NE(open_error(img).find("beyond the end of the file"), std::string::npos) << open_error(img);
  patch(img, h.l1_table_offset, be64(qcow2::kCopied | (1ull << 40)));  // L2 table past the end
  EXPECT_NE(open_error(img).find("L1 entry 0 points at"), std::string::npos) << open_error(img);
  // An L2 entry that maps guest data onto the L1 table: reads pass, writes are refused.
  patch(img, h.l1_table_offset, be64(qcow2::kCopied | l2));
  patch(img, l2, be64(qcow2::kCopied | h.l1_table_offset));
  auto disk = Qcow2Image::open(img.string(), false);
  std::vector<uint8_t> buf(512, 1);
  try {
    disk->write_bytes(0, buf.data(), buf.size());
    ADD_FAILURE() << "a write onto the L1 table went through";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("points at qcow2 metadata"), std::string::npos) << e.what();
  }
}

TEST(Qcow2Refuse, RefcountUnderflowIsCorruption) {
  TempDir dir;
  fs::path img = dir / "disk.qcow2";
  ASSERT_EQ(sh("qemu-img create -q -f qcow2 " + img.string() + " 16M && qemu-io -c 'write 0 64k' " +
               img.string()).status, 0);
  auto h = Qcow2Image::open(img.string(), true)->header();
  // Zero the refcount block: the data cluster is referenced but counted 0.
  std::vector<uint8_t> e(8);
  int fd = ::open(img.c_str(), O_RDONLY);
  (void)!pread(fd, e.data(), 8, static_cast<off_t>(h.refcount_table_offset));
  close(fd);
  patch(img, qcow2::be64(e.data()), std::vector<uint8_t>(h.cluster_size(), 0));
  auto disk = Qcow2Image::open(img.string(), false);
  try {
    disk->discard(0, 64 << 10);
    ADD_FAILURE() << "discard of a cluster counted 0 went through";
  } catch (const Error& err) {
    EXPECT_NE(std::string(err.what()).find("refcount is 0"), std::string::npos) << err.what();
  }
}

TEST(Qcow2Refuse, BackingLoopsAndMissingBackingFiles) {
  TempDir dir;
  ASSERT_EQ(sh("cd " + dir.str() + " && qemu-img create -q -f qcow2 a.qcow2 16M && "
               "qemu-img create -q -f qcow2 -b a.qcow2 -F qcow2 b.qcow2 && "
               "qemu-img rebase -u -b b.qcow2 -F qcow2 a.qcow2").status, 0);
  EXPECT_NE(open_error(dir / "b.qcow2").find("backing chain loop"), std::string::npos)
      << open_error(dir / "b.qcow2");
  ASSERT_EQ(sh("cd " + dir.str() + " && qemu-img create -q -f qcow2 -u -b b.qcow2 -F qcow2 c.qcow2 16M && "
               "qemu-img rebase -u -b c.qcow2 -F qcow2 c.qcow2").status, 0);
  EXPECT_NE(open_error(dir / "c.qcow2").find("backing chain loop"), std::string::npos);
  ASSERT_EQ(sh("cd " + dir.str() + " && qemu-img create -q -f qcow2 -b gone.qcow2 -F qcow2 -u d.qcow2 16M")
                .status, 0);
  std::string err = open_error(dir / "d.qcow2");
  EXPECT_NE(err.find("backing file"), std::string::npos) << err;
  EXPECT_NE(err.find("gone.qcow2"), std::string::npos) << err;
}

TEST(ImageFormat, OtherFormatsAreRefusedWithTheConvertCommand) {
  TempDir dir;
  for (auto [fmt, name] : std::vector<std::pair<std::string, std::string>>{
           {"vmdk", "vmdk"}, {"vdi", "vdi"}, {"vhdx", "vhdx"}, {"qcow", "qcow (version 1)"},
           {"qed", "qed"}, {"vpc", "vpc (VHD)"}, {"parallels", "parallels"}}) {
    fs::path img = dir / ("disk." + fmt);
    ASSERT_EQ(sh("qemu-img create -q -f " + fmt + " " + img.string() + " 16M").status, 0) << fmt;
    std::string err = open_error(img);
    EXPECT_NE(err.find("is a " + name + " image"), std::string::npos) << err;
    EXPECT_NE(err.find("qemu-img convert -f " + fmt + " -O qcow2 " + img.string()), std::string::npos) << err;
  }
}

TEST(ImageFormat, DetectionPicksTheBackend) {
  TempDir dir;
  ASSERT_EQ(sh("qemu-img create -q -f qcow2 " + (dir / "a.qcow2").string() + " 1M").status, 0);
  write_pattern(dir / "b.img", 1 << 20, 4);
  EXPECT_EQ(open_block_backend((dir / "a.qcow2").string(), ImageFormat::kAuto, true)->format(), ImageFormat::kQcow2);
  EXPECT_EQ(open_block_backend((dir / "b.img").string(), ImageFormat::kAuto, true)->format(), ImageFormat::kRaw);
  // format=raw reads a qcow2 file as the raw bytes it is.
  auto raw = open_block_backend((dir / "a.qcow2").string(), ImageFormat::kRaw, true);
  EXPECT_EQ(raw->format(), ImageFormat::kRaw);
  EXPECT_EQ(raw->size(), fs::file_size(dir / "a.qcow2"));
}

TEST(ImageFormat, ProbedRawImageRefusesAGuestWriteThatForgesAHeader) {
  TempDir dir;
  write_pattern(dir / "b.img", 1 << 20, 5);
  std::vector<uint8_t> forged(512, 0);
  const uint8_t magic[] = {'Q', 'F', 'I', 0xfb, 0, 0, 0, 3};
  std::copy(std::begin(magic), std::end(magic), forged.begin());
  {
    auto probed = open_block_backend((dir / "b.img").string(), ImageFormat::kAuto, false);
    EXPECT_EQ(probed->direct_fd(0, 512), -1);  // the first sector goes through the check
    EXPECT_GE(probed->direct_fd(4096, 512), 0);
    EXPECT_THROW(probed->write_bytes(0, forged.data(), forged.size()), Error);
    std::vector<uint8_t> fine(512, 0x11);
    probed->write_bytes(0, fine.data(), fine.size());
  }
  auto given = open_block_backend((dir / "b.img").string(), ImageFormat::kRaw, false);
  given->write_bytes(0, forged.data(), forged.size());  // format=raw: the user said so
}

TEST(Qcow2Create, ImagesQemuImgAccepts) {
  TempDir dir;
  fs::path base = dir / "base.raw";
  write_pattern(base, 3 << 20, 6);
  Qcow2Image::create((dir / "a.qcow2").string(), 5ull << 30);
  Qcow2Image::create((dir / "small.qcow2").string(), 100 << 20, {}, ImageFormat::kAuto, 9);
  Qcow2Image::create((dir / "over.qcow2").string(), 0, "base.raw");
  for (const char* name : {"a.qcow2", "small.qcow2", "over.qcow2"}) {
    Shell check = sh("qemu-img check " + (dir / name).string());
    EXPECT_EQ(check.status, 0) << name << ": " << check.out;
  }
  Shell info = sh("qemu-img info " + (dir / "over.qcow2").string());
  EXPECT_NE(info.out.find("backing file: base.raw"), std::string::npos) << info.out;
  EXPECT_NE(info.out.find("backing file format: raw"), std::string::npos) << info.out;
  EXPECT_NE(info.out.find("virtual size: 3 MiB"), std::string::npos) << info.out;
  EXPECT_EQ(sh("qemu-img compare " + (dir / "over.qcow2").string() + " " + base.string()).status, 0);
  EXPECT_THROW(Qcow2Image::create((dir / "a.qcow2").string(), 1 << 20), Error);  // never overwrites
}

}  // namespace
}  // namespace keel
