// Qcow2Image: a qcow2 (v2/v3) disk image read and written natively (format: qcow2_format.h).
//
// Reads: clusters mapped through L1/L2 (contiguous host runs in one preadv), unallocated
// clusters from the backing image (raw or qcow2, chains followed, loops and depth refused) or
// zeros, zero clusters, compressed clusters (zlib, or zstd when the header says so).
// Writes: in place to clusters whose L2 entry has COPIED; anything else (unallocated, zero,
// compressed, shared with an internal snapshot) is copied on write into a new cluster; L2
// tables shared with a snapshot are copied too. Discard and write-zeroes free whole clusters
// (zero flags on v3 when a backing file could otherwise show through).
//
// Crash consistency (no lazy refcounts, no dirty bit): metadata is written through, in an order
// that never lets a reference exist without its refcount:
//   - clusters are reserved in batches: their refcounts are written and fdatasync'ed before any
//     L2/L1 entry points at them; a crash leaks the unused rest (qemu-img check: leaks, no errors);
//   - a new L2 table (or refcount block) is written and synced before the L1 entry (refcount
//     table entry) that points at it;
//   - data is written before the L2 entry that maps it;
//   - freed clusters (discard, copy-on-write) have their L2 entries rewritten first; their
//     refcounts drop only after the next fdatasync (guest flush, next reservation, close).
// Closing releases the unused reservation and trims the file's free tail, so a cleanly closed
// image has no leaks.
//
// One thread at a time (the disk's virtio-blk worker). Metadata that points outside the file or
// at other metadata is refused with an Error naming the table and offset, never followed.
#pragma once

#include <cstdint>
#include <deque>
#include <list>
#include <memory>
#include <set>
#include <string>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include "backends/block/block_backend.h"
#include "backends/block/image_file.h"
#include "backends/block/qcow2_format.h"

namespace keel {

class Qcow2Image : public BlockBackend {
 public:
  struct Options {
    bool allow_backing = true;  // false: an image with a backing file is refused (fuzzing)
    uint32_t max_chain = 32;    // backing chain depth
  };

  // Throws Error ("disk PATH: ...").
  static std::unique_ptr<Qcow2Image> open(const std::string& path, bool readonly);
  static std::unique_ptr<Qcow2Image> open(const std::string& path, bool readonly, const Options& options);
  // An already open image file (fuzzing, tests); `path` names it in messages and resolves a
  // relative backing file name.
  static std::unique_ptr<Qcow2Image> open_file(const std::string& path, ImageFile file, bool readonly,
                                               const Options& options);

  // `keel img create`: a new, empty qcow2 v3 image of `size` bytes (rounded up to 512) with
  // 2^cluster_bits clusters and 16-bit refcounts, over `backing` (stored as given; format
  // detected unless `backing_format`). size 0 with a backing file takes the backing's size.
  // Refuses to overwrite an existing file.
  static void create(const std::string& path, uint64_t size, const std::string& backing = {},
                     ImageFormat backing_format = ImageFormat::kAuto, uint32_t cluster_bits = 16);

  ~Qcow2Image() override;

  const std::string& path() const override { return path_; }
  ImageFormat format() const override { return ImageFormat::kQcow2; }
  uint64_t size() const override { return header_.size; }
  bool readonly() const override { return readonly_; }
  int file_fd() const override { return file_.fd.get(); }
  void read(uint64_t offset, std::span<const iovec> iov) override;
  void write(uint64_t offset, std::span<const iovec> iov) override;
  void flush() override;
  void discard(uint64_t offset, uint64_t length) override;
  void write_zeroes(uint64_t offset, uint64_t length, bool may_unmap) override;
  uint32_t discard_granularity() const override { return static_cast<uint32_t>(cs_); }

  const qcow2::Header& header() const { return header_; }
  const BlockBackend* backing() const { return backing_.get(); }

 private:
  struct Chain;  // backing-chain bookkeeping while opening
  Qcow2Image(std::string path, ImageFile file, bool readonly, qcow2::Header header);
  static std::unique_ptr<Qcow2Image> open_in_chain(const std::string& path, ImageFile file,
                                                   bool readonly, const Options& options, Chain& chain);
  void load_tables();
  std::string where() const { return "disk " + path_; }
  [[noreturn]] void corrupt(const std::string& why) const;

  // --- mapping
  struct Mapping {
    enum Kind { kUnallocated, kZeroes, kCompressed, kNormal } kind;
    uint64_t host;  // data cluster (kNormal; kZeroes when preallocated)
  };
  Mapping classify(uint64_t entry, uint64_t guest_cluster) const;
  uint64_t l2_entry(uint64_t guest_cluster);
  std::vector<uint64_t>& l2_table(uint64_t offset);
  void read_cluster(uint64_t guest_cluster, uint64_t within, std::span<const iovec> iov);
  void check_range(const char* op, uint64_t offset, uint64_t length) const;
  // How many bytes (up to `limit`, of which the first cluster gives `first`) continue host
  // cluster `host` contiguously from guest cluster `gc` on; `writable`: COPIED, not metadata.
  uint64_t host_run(uint64_t gc, uint64_t first, uint64_t host, uint64_t limit, bool writable);
  void read_compressed(uint64_t entry, uint8_t* out);
  void check_data_cluster(uint64_t host, uint64_t guest_cluster) const;

  // --- writing
  std::vector<uint64_t>& writable_l2(uint64_t l1_index);
  void set_l2_entry(uint64_t l1_index, uint64_t l2_index, uint64_t entry);
  void write_cluster(uint64_t guest_cluster, uint64_t within, std::span<const iovec> iov);
  void write_zeroes_or_discard(uint64_t offset, uint64_t length, bool zeroes, bool may_unmap);
  void release_entry(uint64_t entry);  // queue the clusters an old L2 entry held for freeing
  void change_clusters(uint64_t offset, uint64_t bytes);  // queue frees for a byte range

  // --- refcounts and allocation
  uint64_t refcount(uint64_t cluster);
  void set_refcount(uint64_t cluster, uint64_t value);
  std::vector<uint8_t>& refblock(uint64_t rb_index);  // loaded; the block must exist
  void ensure_refblock(uint64_t cluster);
  void grow_refcount_table(uint64_t min_entries);
  void write_refblocks();
  uint64_t allocate_cluster();
  void reserve_clusters();
  void apply_pending_frees();  // after an fdatasync
  void sync();
  void close();

  std::string path_;
  ImageFile file_;
  int fd_;
  bool readonly_;
  qcow2::Header header_;
  uint64_t cs_, cluster_bits_;
  std::unique_ptr<BlockBackend> backing_;

  std::vector<uint64_t> l1_;
  std::vector<uint64_t> refcount_table_;
  uint64_t file_size_;  // bytes, grows with writes
  std::unordered_set<uint64_t> metadata_;  // host clusters holding metadata (overlap checks)

  // Write-through caches: L2 tables (bounded, least recently used evicted) and refcount blocks.
  std::unordered_map<uint64_t, std::pair<std::vector<uint64_t>, std::list<uint64_t>::iterator>> l2_cache_;
  std::list<uint64_t> l2_lru_;
  size_t l2_cache_max_;
  std::unordered_map<uint64_t, std::vector<uint8_t>> refblocks_;  // by refblock index
  std::set<uint64_t> dirty_refblocks_;

  std::deque<uint64_t> reserved_;         // clusters with refcount 1, not yet referenced
  std::vector<uint64_t> pending_free_;    // clusters to decrement after the next fdatasync
  uint64_t free_cursor_ = 0;              // no free cluster below this one
  uint64_t alloc_end_ = 0;                // clusters below this index may be in use

  std::vector<uint8_t> zbuf_;             // one cluster, for compressed reads
};

}  // namespace keel
