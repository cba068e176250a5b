#include "backends/block/qcow2_image.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>
#include <zstd.h>

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <map>

#include "backends/block/image_format.h"
#include "backends/block/raw_image.h"
#include "base/error.h"
#include "base/log.h"

namespace keel {

using namespace qcow2;

namespace {

std::string hex(uint64_t v) {
  char buf[24];
  std::snprintf(buf, sizeof buf, "%#llx", static_cast<unsigned long long>(v));
  return buf;
}

uint64_t iov_total(std::span<const iovec> iov) {
  uint64_t n = 0;
  for (const auto& v : iov) n += v.iov_len;
  return n;
}

// The part [skip, skip + n) of an iovec list.
std::vector<iovec> slice(std::span<const iovec> iov, uint64_t skip, uint64_t n) {
  std::vector<iovec> out;
  for (const auto& v : iov) {
    if (n == 0) break;
    if (skip >= v.iov_len) {
      skip -= v.iov_len;
      continue;
    }
    uint64_t take = std::min<uint64_t>(v.iov_len - skip, n);
    out.push_back({static_cast<char*>(v.iov_base) + skip, take});
    n -= take;
    skip = 0;
  }
  return out;
}

void zero_iov(std::span<const iovec> iov) {
  for (const auto& v : iov) std::memset(v.iov_base, 0, v.iov_len);
}

void copy_to_iov(std::span<const iovec> iov, const uint8_t* src) {
  for (const auto& v : iov) {
    std::memcpy(v.iov_base, src, v.iov_len);
    src += v.iov_len;
  }
}

void copy_from_iov(uint8_t* dst, std::span<const iovec> iov) {
  for (const auto& v : iov) {
    std::memcpy(dst, v.iov_base, v.iov_len);
    dst += v.iov_len;
  }
}

std::vector<uint8_t> to_be(const std::vector<uint64_t>& table) {
  std::vector<uint8_t> out(table.size() * 8);
  for (size_t i = 0; i < table.size(); ++i) put_be64(&out[i * 8], table[i]);
  return out;
}

}  // namespace

// Where a relative backing file name is looked up: the image's directory, also when the daemon
// handed the image over as /proc/self/fd/N.
static std::filesystem::path image_directory(const std::string& path) {
  std::error_code ec;
  if (path.rfind("/proc/self/fd/", 0) == 0)
    if (auto target = std::filesystem::read_symlink(path, ec); !ec) return target.parent_path();
  return std::filesystem::path(path).parent_path();
}

struct Qcow2Image::Chain {
  std::set<std::pair<uint64_t, uint64_t>> seen;  // (device, inode) of every image in the chain
  uint32_t depth = 0;
};

Qcow2Image::Qcow2Image(std::string path, ImageFile file, bool readonly, Header header)
    : path_(std::move(path)),
      file_(std::move(file)),
      fd_(file_.fd.get()),
      readonly_(readonly),
      header_(std::move(header)),
      cs_(header_.cluster_size()),
      cluster_bits_(header_.cluster_bits),
      file_size_(file_.size),
      l2_cache_max_(std::max<uint64_t>(16, (32ull << 20) / header_.cluster_size())) {}

std::unique_ptr<Qcow2Image> Qcow2Image::open(const std::string& path, bool readonly) {
  return open(path, readonly, Options{});
}

std::unique_ptr<Qcow2Image> Qcow2Image::open(const std::string& path, bool readonly,
                                             const Options& options) {
  return open_file(path, open_image_file(path, readonly), readonly, options);
}

std::unique_ptr<Qcow2Image> Qcow2Image::open_file(const std::string& path, ImageFile file,
                                                  bool readonly, const Options& options) {
  Chain chain;
  return open_in_chain(path, std::move(file), readonly, options, chain);
}

std::unique_ptr<Qcow2Image> Qcow2Image::open_in_chain(const std::string& path, ImageFile file,
                                                      bool readonly, const Options& options,
                                                      Chain& chain) {
  const std::string what = "disk " + path;
  if (!chain.seen.insert({file.device, file.inode}).second)
    throw Error(what + ": backing chain loop (" + path + " is its own backing file)");
  std::vector<uint8_t> head(std::min<uint64_t>(file.size, 1ull << kMaxClusterBits));
  pread_all(file.fd.get(), head.data(), head.size(), 0, what);
  Header h;
  try {
    h = parse_header(head, file.size);
  } catch (const Error& e) {
    throw Error(what + ": " + e.what());
  }
  if (!readonly && (h.incompatible_features & kIncompatDirty))
    throw Error(what + ": its refcounts may be stale (written with lazy refcounts and not closed "
                "cleanly); repair it with `qemu-img check -r all " + path + "`");
  if (!readonly && (h.incompatible_features & kIncompatCorrupt))
    throw Error(what + ": marked corrupt by QEMU; repair it with `qemu-img check -r all " + path + "`");

  std::unique_ptr<Qcow2Image> img(new Qcow2Image(path, std::move(file), readonly, h));
  img->load_tables();

  if (!h.backing_file.empty()) {
    if (!options.allow_backing) throw Error(what + ": has a backing file (" + h.backing_file + "), not allowed here");
    if (++chain.depth >= options.max_chain)
      throw Error(what + ": backing chain deeper than " + std::to_string(options.max_chain) + " images");
    std::filesystem::path b = h.backing_file;
    if (b.is_relative()) b = image_directory(path) / b;
    ImageFile bf;
    try {
      bf = open_image_file(b.string(), true);
    } catch (const Error& e) {
      throw Error(what + ": backing file: " + e.what());
    }
    std::string format = h.backing_format;
    if (format.empty()) {
      std::vector<uint8_t> bhead(std::min<uint64_t>(bf.size, kProbeBytes));
      pread_all(bf.fd.get(), bhead.data(), bhead.size(), 0, "disk " + b.string());
      DetectedFormat d = detect_image_format(bhead, bf.size);
      if (d.format == ImageFormat::kAuto)
        throw Error(what + ": backing file: " + unsupported_format_message(b.string(), d));
      format = d.name;
    }
    if (format == "qcow2") {
      img->backing_ = open_in_chain(b.string(), std::move(bf), true, options, chain);
    } else if (format == "raw") {
      if (!chain.seen.insert({bf.device, bf.inode}).second)
        throw Error(what + ": backing chain loop (" + b.string() + " appears twice)");
      uint64_t bsize = bf.size;
      img->backing_ = std::make_unique<RawImage>(b.string(), std::move(bf.fd), bsize, true);
    } else {
      throw Error(what + ": backing file " + b.string() + " has format '" + format +
                  "'; keel reads raw and qcow2 backing files");
    }
  }
  if (!readonly && h.version == 3 && h.autoclear_features) {
    // Autoclear features (e.g. persistent bitmaps) are only valid while every writer keeps them.
    uint8_t zero[8] = {};
    pwrite_all(img->fd_, zero, 8, kAutoclearField, what);
    img->header_.autoclear_features = 0;
    img->sync();
  }
  return img;
}

Qcow2Image::~Qcow2Image() { close(); }

void Qcow2Image::corrupt(const std::string& why) const {
  throw Error(where() + ": corrupt qcow2 image: " + why + " (`qemu-img check " + path_ + "` tells more)");
}

void Qcow2Image::load_tables() {
  metadata_.insert(0);
  std::vector<uint8_t> raw(uint64_t{header_.l1_size} * 8);
  pread_all(fd_, raw.data(), raw.size(), header_.l1_table_offset, where());
  l1_.resize(header_.l1_size);
  for (size_t i = 0; i < l1_.size(); ++i) {
    uint64_t e = be64(&raw[i * 8]);
    uint64_t off = e & kOffsetMask;
    if (e & kL1Reserved) corrupt("L1 entry " + std::to_string(i) + " has reserved bits set (" + hex(e) + ")");
    if (off % cs_) corrupt("L1 entry " + std::to_string(i) + " points at unaligned offset " + hex(off));
    if (off && (off > file_size_ || cs_ > file_size_ - off))
      corrupt("L1 entry " + std::to_string(i) + " points at " + hex(off) +
              ", outside the file (" + std::to_string(file_size_) + " bytes)");
    if (off) metadata_.insert(off / cs_);
    l1_[i] = e;
  }
  for (uint64_t c = 0; c * cs_ < raw.size(); ++c) metadata_.insert(header_.l1_table_offset / cs_ + c);

  raw.resize(uint64_t{header_.refcount_table_clusters} * cs_);
  pread_all(fd_, raw.data(), raw.size(), header_.refcount_table_offset, where());
  refcount_table_.resize(raw.size() / 8);
  for (size_t i = 0; i < refcount_table_.size(); ++i) {
    uint64_t e = be64(&raw[i * 8]);
    if (e & kRefTableReserved)
      corrupt("refcount table entry " + std::to_string(i) + " has reserved bits set (" + hex(e) + ")");
    if (e && (e > file_size_ || cs_ > file_size_ - e))
      corrupt("refcount block " + std::to_string(i) + " at " + hex(e) + " is outside the file (" +
              std::to_string(file_size_) + " bytes)");
    if (e) metadata_.insert(e / cs_);
    refcount_table_[i] = e;
  }
  for (uint64_t c = 0; c < header_.refcount_table_clusters; ++c)
    metadata_.insert(header_.refcount_table_offset / cs_ + c);
  alloc_end_ = (file_size_ + cs_ - 1) / cs_;
}

// ---------------------------------------------------------------- mapping

std::vector<uint64_t>& Qcow2Image::l2_table(uint64_t offset) {
  auto it = l2_cache_.find(offset);
  if (it != l2_cache_.end()) {
    l2_lru_.splice(l2_lru_.begin(), l2_lru_, it->second.second);
    return it->second.first;
  }
  std::vector<uint8_t> raw(cs_);
  pread_all(fd_, raw.data(), raw.size(), offset, where());
  std::vector<uint64_t> table(cs_ / 8);
  for (size_t i = 0; i < table.size(); ++i) table[i] = be64(&raw[i * 8]);
  while (l2_cache_.size() >= l2_cache_max_) {
    l2_cache_.erase(l2_lru_.back());
    l2_lru_.pop_back();
  }
  l2_lru_.push_front(offset);
  auto [slot, _] = l2_cache_.emplace(offset, std::make_pair(std::move(table), l2_lru_.begin()));
  return slot->second.first;
}

uint64_t Qcow2Image::l2_entry(uint64_t gc) {
  uint64_t l2e = cs_ / 8;
  uint64_t l1i = gc / l2e;
  if (l1i >= l1_.size()) return 0;
  uint64_t off = l1_[l1i] & kOffsetMask;
  if (!off) return 0;
  return l2_table(off)[gc % l2e];
}

// What an L2 entry says about its guest cluster; reserved bits and bad offsets are corruption.
Qcow2Image::Mapping Qcow2Image::classify(uint64_t e, uint64_t gc) const {
  if (e & kCompressed) return {Mapping::kCompressed, 0};
  uint64_t reserved = kL2Reserved | (header_.version < 3 ? kZero : 0);
  if (e & reserved)
    corrupt("L2 entry for guest offset " + hex(gc * cs_) + " has reserved bits set (" + hex(e) + ")");
  uint64_t host = e & kOffsetMask;
  if (e & kZero) return {Mapping::kZeroes, host};
  if (!host) return {Mapping::kUnallocated, 0};
  if (host % cs_) corrupt("L2 entry for guest offset " + hex(gc * cs_) + " is unaligned");
  if (host >= file_size_)
    corrupt("L2 entry for guest offset " + hex(gc * cs_) + " points at " + hex(host) +
            ", beyond the end of the file (" + std::to_string(file_size_) + " bytes)");
  return {Mapping::kNormal, host};
}

void Qcow2Image::read_compressed(uint64_t entry, uint8_t* out) {
  CompressedRef ref = decode_compressed(entry, static_cast<uint32_t>(cluster_bits_));
  if (ref.offset >= file_size_ || ref.offset < cs_)
    corrupt("compressed cluster at " + hex(ref.offset) + " is outside the file");
  std::vector<uint8_t> in(ref.bytes);
  pread_all(fd_, in.data(), in.size(), ref.offset, where());  // past the end reads zeros
  bool ok = false;
  if (header_.compression == Compression::kZlib) {
    z_stream z{};
    if (inflateInit2(&z, -12) != Z_OK) throw Error(where() + ": inflateInit2 failed");
    z.next_in = in.data();
    z.avail_in = static_cast<uInt>(in.size());
    z.next_out = out;
    z.avail_out = static_cast<uInt>(cs_);
    int r = inflate(&z, Z_FINISH);
    ok = (r == Z_STREAM_END || (r == Z_BUF_ERROR && z.avail_out == 0)) && z.total_out == cs_;
    inflateEnd(&z);
  } else {
    ZSTD_DCtx* ctx = ZSTD_createDCtx();
    if (!ctx) throw Error(where() + ": ZSTD_createDCtx failed");
    ZSTD_inBuffer ib{in.data(), in.size(), 0};
    ZSTD_outBuffer ob{out, cs_, 0};
    for (;;) {
      size_t r = ZSTD_decompressStream(ctx, &ob, &ib);
      if (ZSTD_isError(r)) break;
      if (ob.pos == ob.size) {
        ok = true;
        break;
      }
      if (ib.pos == ib.size) break;
    }
    ZSTD_freeDCtx(ctx);
  }
  if (!ok) corrupt("compressed cluster at " + hex(ref.offset) + " does not decompress to one cluster");
}

void Qcow2Image::check_data_cluster(uint64_t host, uint64_t gc) const {
  if (metadata_.count(host / cs_))
    corrupt("L2 entry for guest offset " + hex(gc * cs_) + " points at qcow2 metadata at " + hex(host));
}

// One guest cluster's bytes [within, within + size(iov)), whatever its entry says.
void Qcow2Image::read_cluster(uint64_t gc, uint64_t within, std::span<const iovec> iov) {
  uint64_t e = l2_entry(gc);
  Mapping m = classify(e, gc);
  switch (m.kind) {
    case Mapping::kCompressed:
      zbuf_.resize(cs_);
      read_compressed(e, zbuf_.data());
      copy_to_iov(iov, zbuf_.data() + within);
      return;
    case Mapping::kZeroes:
      zero_iov(iov);
      return;
    case Mapping::kNormal:
      preadv_all(fd_, iov, m.host + within, where());
      return;
    case Mapping::kUnallocated:
      break;
  }
  uint64_t n = iov_total(iov);
  uint64_t at = gc * cs_ + within;
  uint64_t have = backing_ && at < backing_->size() ? std::min(n, backing_->size() - at) : 0;
  if (have) backing_->read(at, slice(iov, 0, have));
  if (have < n) zero_iov(slice(iov, have, n - have));
}

void Qcow2Image::check_range(const char* op, uint64_t offset, uint64_t len) const {
  if (offset > size() || len > size() - offset)
    throw Error(where() + ": " + op + " of " + std::to_string(len) + " bytes at " + std::to_string(offset) +
                " beyond the disk's " + std::to_string(size()) + " bytes");
}

uint64_t Qcow2Image::host_run(uint64_t gc, uint64_t first, uint64_t host, uint64_t limit, bool writable) {
  uint64_t run = first;
  for (uint64_t k = 1; run < limit; ++k) {
    uint64_t e = l2_entry(gc + k);
    Mapping m = classify(e, gc + k);
    if (m.kind != Mapping::kNormal || (writable && !(e & kCopied)) || m.host != host + k * cs_) break;
    if (writable) check_data_cluster(m.host, gc + k);
    run += std::min(cs_, limit - run);
  }
  return run;
}

void Qcow2Image::read(uint64_t offset, std::span<const iovec> iov) {
  uint64_t len = iov_total(iov);
  check_range("read", offset, len);
  uint64_t pos = 0;
  while (pos < len) {
    uint64_t off = offset + pos, gc = off >> cluster_bits_, within = off & (cs_ - 1);
    uint64_t n = std::min(cs_ - within, len - pos);
    Mapping m = classify(l2_entry(gc), gc);
    if (m.kind != Mapping::kNormal) {
      read_cluster(gc, within, slice(iov, pos, n));
      pos += n;
      continue;
    }
    // One preadv over the following clusters while they continue the same host run.
    uint64_t run = host_run(gc, n, m.host, len - pos, false);
    preadv_all(fd_, slice(iov, pos, run), m.host + within, where());
    pos += run;
  }
}

// ---------------------------------------------------------------- writing

std::vector<uint64_t>& Qcow2Image::writable_l2(uint64_t l1i) {
  uint64_t e = l1_[l1i];
  uint64_t old = e & kOffsetMask;
  if (old && (e & kCopied)) return l2_table(old);
  // A new table (zeros), or a copy of one shared with an internal snapshot.
  std::vector<uint64_t> table(cs_ / 8, 0);
  if (old) table = l2_table(old);
  uint64_t fresh = allocate_cluster();
  pwrite_all(fd_, to_be(table).data(), cs_, fresh, where());
  file_size_ = std::max(file_size_, fresh + cs_);
  sync();  // the table is on disk before the L1 entry points at it
  l1_[l1i] = fresh | kCopied;
  uint8_t be[8];
  put_be64(be, l1_[l1i]);
  pwrite_all(fd_, be, 8, header_.l1_table_offset + l1i * 8, where());
  metadata_.insert(fresh / cs_);
  if (old) pending_free_.push_back(old / cs_);
  l2_cache_.erase(fresh);
  l2_lru_.remove(fresh);
  std::vector<uint64_t>& slot = l2_table(fresh);  // reads back what was just written
  return slot;
}

void Qcow2Image::set_l2_entry(uint64_t l1i, uint64_t l2i, uint64_t entry) {
  uint64_t off = l1_[l1i] & kOffsetMask;
  l2_table(off)[l2i] = entry;
  uint8_t be[8];
  put_be64(be, entry);
  pwrite_all(fd_, be, 8, off + l2i * 8, where());
}

void Qcow2Image::release_entry(uint64_t e) {
  if (e & kCompressed) {
    CompressedRef ref = decode_compressed(e, static_cast<uint32_t>(cluster_bits_));
    change_clusters(ref.offset, ref.bytes);
    return;
  }
  if (uint64_t host = e & kOffsetMask) change_clusters(host, cs_);
}

void Qcow2Image::change_clusters(uint64_t offset, uint64_t bytes) {
  for (uint64_t c = offset / cs_; c <= (offset + bytes - 1) / cs_; ++c) {
    if (refcount(c) == 0)
      corrupt("cluster at " + hex(c * cs_) + " is in use but its refcount is 0");
    pending_free_.push_back(c);
  }
}

void Qcow2Image::write_cluster(uint64_t gc, uint64_t within, std::span<const iovec> iov) {
  const uint64_t l2e = cs_ / 8, l1i = gc / l2e, l2i = gc % l2e;
  uint64_t old = l2_entry(gc);
  Mapping m = classify(old, gc);
  writable_l2(l1i);
  // A preallocated zero cluster that is ours alone is rewritten in place.
  bool reuse = m.kind == Mapping::kZeroes && m.host && (old & kCopied);
  if (reuse) check_data_cluster(m.host, gc);
  uint64_t target = reuse ? m.host : allocate_cluster();
  uint64_t n = iov_total(iov);
  if (n == cs_) {
    pwritev_all(fd_, iov, target, where());
  } else {
    std::vector<uint8_t> buf(cs_, 0);
    if (!reuse) {
      iovec whole{buf.data(), cs_};
      read_cluster(gc, 0, {&whole, 1});  // the old contents around the written part
    }
    copy_from_iov(buf.data() + within, iov);
    pwrite_all(fd_, buf.data(), cs_, target, where());
  }
  file_size_ = std::max(file_size_, target + cs_);
  if (!reuse) release_entry(old);  // checks refcounts before anything points elsewhere
  set_l2_entry(l1i, l2i, target | kCopied);
}

void Qcow2Image::write(uint64_t offset, std::span<const iovec> iov) {
  if (readonly_) throw Error(where() + ": read-only");
  uint64_t len = iov_total(iov);
  check_range("write", offset, len);
  uint64_t pos = 0;
  while (pos < len) {
    uint64_t off = offset + pos, gc = off >> cluster_bits_, within = off & (cs_ - 1);
    uint64_t n = std::min(cs_ - within, len - pos);
    uint64_t e = l2_entry(gc);
    Mapping m = classify(e, gc);
    if (m.kind != Mapping::kNormal || !(e & kCopied)) {
      write_cluster(gc, within, slice(iov, pos, n));
      pos += n;
      continue;
    }
    check_data_cluster(m.host, gc);
    uint64_t run = host_run(gc, n, m.host, len - pos, true);
    pwritev_all(fd_, slice(iov, pos, run), m.host + within, where());
    file_size_ = std::max(file_size_, m.host + within + run);
    pos += run;
  }
}

void Qcow2Image::flush() {
  if (readonly_) return;
  sync();
  apply_pending_frees();
}

void Qcow2Image::discard(uint64_t offset, uint64_t length) {
  write_zeroes_or_discard(offset, length, /*zeroes=*/false, /*may_unmap=*/true);
}

void Qcow2Image::write_zeroes(uint64_t offset, uint64_t length, bool may_unmap) {
  write_zeroes_or_discard(offset, length, /*zeroes=*/true, may_unmap);
}

void Qcow2Image::write_zeroes_or_discard(uint64_t offset, uint64_t length, bool zeroes, bool may_unmap) {
  if (readonly_) throw Error(where() + ": read-only");
  check_range(zeroes ? "write zeroes" : "discard", offset, length);
  uint64_t end = offset + length;
  // Whole clusters only; the disk's last cluster counts as whole when the range reaches the end.
  uint64_t first = (offset + cs_ - 1) / cs_;
  uint64_t last = end == size() ? (end + cs_ - 1) / cs_ : end / cs_;
  std::vector<uint8_t> zero_buf;
  auto write_zero_bytes = [&](uint64_t at, uint64_t n) {
    if (!zeroes || n == 0) return;  // a partial discard does nothing
    zero_buf.assign(std::min(n, cs_), 0);
    while (n) {
      uint64_t k = std::min<uint64_t>(n, zero_buf.size());
      write_bytes(at, zero_buf.data(), k);
      at += k;
      n -= k;
    }
  };
  if (first >= last) {
    write_zero_bytes(offset, length);
    return;
  }
  write_zero_bytes(offset, first * cs_ - offset);
  const uint64_t l2e = cs_ / 8;
  bool has_zero_flag = header_.version >= 3;
  for (uint64_t gc = first; gc < last; ++gc) {
    uint64_t old = l2_entry(gc);
    Mapping m = classify(old, gc);
    // What the cluster becomes: unallocated where nothing shows through, else a zero cluster.
    uint64_t next = backing_ && has_zero_flag ? kZero : 0;
    bool keep_host = zeroes && !may_unmap && has_zero_flag && m.kind == Mapping::kNormal && (old & kCopied);
    if (keep_host) next = old | kZero;
    if (zeroes && backing_ && !has_zero_flag) {  // v2 over a backing file: real zeros
      write_zero_bytes(gc * cs_, std::min(cs_, size() - gc * cs_));
      continue;
    }
    if (m.kind == Mapping::kUnallocated && (next == 0 || !zeroes)) continue;  // nothing to free
    if (m.kind == Mapping::kZeroes && !m.host) continue;
    if (old == next) continue;
    writable_l2(gc / l2e);  // before the release: allocating may apply queued frees
    if (!keep_host) release_entry(old);
    set_l2_entry(gc / l2e, gc % l2e, next);
  }
  if (last * cs_ < end) write_zero_bytes(last * cs_, end - last * cs_);
}

// ---------------------------------------------------------------- refcounts

std::vector<uint8_t>& Qcow2Image::refblock(uint64_t rbi) {
  auto it = refblocks_.find(rbi);
  if (it != refblocks_.end()) return it->second;
  std::vector<uint8_t> block(cs_);
  pread_all(fd_, block.data(), block.size(), refcount_table_[rbi], where());
  return refblocks_.emplace(rbi, std::move(block)).first->second;
}

uint64_t Qcow2Image::refcount(uint64_t c) {
  uint64_t rbe = header_.refblock_entries(), rbi = c / rbe;
  if (rbi >= refcount_table_.size() || refcount_table_[rbi] == 0) return 0;
  return get_refcount(refblock(rbi), c % rbe, header_.refcount_order);
}

void Qcow2Image::set_refcount(uint64_t c, uint64_t value) {
  uint32_t order = header_.refcount_order;
  uint64_t max = order == 6 ? ~0ull : (1ull << (1u << order)) - 1;
  if (value > max)
    corrupt("refcount overflow for cluster at " + hex(c * cs_) + " (" + std::to_string(1u << order) +
            "-bit refcounts)");
  ensure_refblock(c);
  uint64_t rbe = header_.refblock_entries(), rbi = c / rbe;
  qcow2::set_refcount(refblock(rbi), c % rbe, order, value);
  dirty_refblocks_.insert(rbi);
  if (value) alloc_end_ = std::max(alloc_end_, c + 1);
}

void Qcow2Image::ensure_refblock(uint64_t c) {
  uint64_t rbe = header_.refblock_entries(), rbi = c / rbe;
  if (rbi >= refcount_table_.size()) grow_refcount_table(rbi + 1);
  if (refcount_table_[rbi]) return;
  // No block yet: every cluster it covers is free, so it describes itself from its first cluster.
  uint64_t c0 = rbi * rbe;
  std::vector<uint8_t> block(cs_, 0);
  qcow2::set_refcount(block, 0, header_.refcount_order, 1);
  pwrite_all(fd_, block.data(), cs_, c0 * cs_, where());
  file_size_ = std::max(file_size_, (c0 + 1) * cs_);
  sync();  // the block is on disk before the refcount table points at it
  refcount_table_[rbi] = c0 * cs_;
  uint8_t be[8];
  put_be64(be, c0 * cs_);
  pwrite_all(fd_, be, 8, header_.refcount_table_offset + rbi * 8, where());
  refblocks_[rbi] = std::move(block);
  metadata_.insert(c0);
  alloc_end_ = std::max(alloc_end_, c0 + 1);
}

void Qcow2Image::grow_refcount_table(uint64_t min_entries) {
  const uint64_t rbe = header_.refblock_entries(), per_cluster = cs_ / 8;
  const uint64_t old_entries = refcount_table_.size();
  // The new table and the refcount blocks it needs go past everything in use.
  const uint64_t start = std::max(alloc_end_, (file_size_ + cs_ - 1) / cs_);
  uint64_t entries = std::max(min_entries, old_entries * 2);
  uint64_t table_clusters = 0;
  std::vector<uint64_t> missing;  // refcount block indexes the area needs
  for (;;) {
    table_clusters = (entries + per_cluster - 1) / per_cluster;
    size_t nb = 0;
    for (;;) {
      uint64_t end = start + table_clusters + nb;
      missing.clear();
      for (uint64_t r = start / rbe; r <= (end - 1) / rbe; ++r)
        if (r >= old_entries || refcount_table_[r] == 0) missing.push_back(r);
      if (missing.size() == nb) break;
      nb = missing.size();
    }
    uint64_t end = start + table_clusters + missing.size();
    uint64_t need = std::max(min_entries, (end - 1) / rbe + 1);
    if (need <= entries) break;
    entries = need;
  }
  if (table_clusters * cs_ > kMaxRefcountTableBytes)
    throw Error(where() + ": the refcount table would grow past " +
                std::to_string(kMaxRefcountTableBytes >> 20) + " MiB");
  const uint64_t end = start + table_clusters + missing.size();
  std::vector<uint64_t> table(table_clusters * per_cluster, 0);
  std::copy(refcount_table_.begin(), refcount_table_.end(), table.begin());
  std::map<uint64_t, std::vector<uint8_t>> fresh;
  uint64_t next = start + table_clusters;
  for (uint64_t r : missing) {
    table[r] = (next++) * cs_;
    fresh[r].assign(cs_, 0);
  }
  for (uint64_t c = start; c < end; ++c) {
    uint64_t r = c / rbe;
    if (auto it = fresh.find(r); it != fresh.end()) {
      qcow2::set_refcount(it->second, c % rbe, header_.refcount_order, 1);
    } else {
      qcow2::set_refcount(refblock(r), c % rbe, header_.refcount_order, 1);
      dirty_refblocks_.insert(r);
    }
  }
  for (auto& [r, block] : fresh) pwrite_all(fd_, block.data(), cs_, table[r], where());
  write_refblocks();
  pwrite_all(fd_, to_be(table).data(), table_clusters * cs_, start * cs_, where());
  file_size_ = std::max(file_size_, end * cs_);
  sync();  // blocks and table on disk before the header points at them
  uint8_t field[12];
  put_be64(field, start * cs_);
  put_be32(field + 8, static_cast<uint32_t>(table_clusters));
  pwrite_all(fd_, field, sizeof field, kRefcountTableOffsetField, where());
  sync();
  const uint64_t old_offset = header_.refcount_table_offset, old_clusters = header_.refcount_table_clusters;
  header_.refcount_table_offset = start * cs_;
  header_.refcount_table_clusters = static_cast<uint32_t>(table_clusters);
  refcount_table_ = std::move(table);
  for (auto& [r, block] : fresh) {
    metadata_.insert(refcount_table_[r] / cs_);
    refblocks_[r] = std::move(block);
  }
  for (uint64_t c = start; c < start + table_clusters; ++c) metadata_.insert(c);
  alloc_end_ = std::max(alloc_end_, end);
  for (uint64_t c = 0; c < old_clusters; ++c) pending_free_.push_back(old_offset / cs_ + c);
}

void Qcow2Image::write_refblocks() {
  for (uint64_t rbi : dirty_refblocks_)
    pwrite_all(fd_, refblocks_.at(rbi).data(), cs_, refcount_table_[rbi], where());
  dirty_refblocks_.clear();
}

uint64_t Qcow2Image::allocate_cluster() {
  if (reserved_.empty()) reserve_clusters();
  uint64_t c = reserved_.front();
  reserved_.pop_front();
  return c * cs_;
}

void Qcow2Image::reserve_clusters() {
  // A batch of up to 16 MiB: one fdatasync per batch instead of one per cluster.
  const uint64_t want = std::max<uint64_t>(1, (16ull << 20) >> cluster_bits_);
  uint64_t c = free_cursor_;
  while (reserved_.size() < want) {
    ensure_refblock(c);  // may take c itself for a new refcount block
    if (refcount(c) == 0) {
      set_refcount(c, 1);
      reserved_.push_back(c);
    }
    ++c;
  }
  free_cursor_ = c;
  write_refblocks();
  sync();  // refcounts on disk before anything points at these clusters
  apply_pending_frees();
}

void Qcow2Image::apply_pending_frees() {
  if (pending_free_.empty()) return;
  std::vector<uint64_t> frees;
  frees.swap(pending_free_);
  for (uint64_t c : frees) {
    uint64_t v = refcount(c);
    if (v == 0) {
      log::warn("{}: refcount of cluster at {} is already 0; not freed", where(), hex(c * cs_));
      continue;
    }
    set_refcount(c, v - 1);
    if (v == 1) {
      metadata_.erase(c);
      if (l2_cache_.count(c * cs_)) {
        l2_lru_.erase(l2_cache_[c * cs_].second);
        l2_cache_.erase(c * cs_);
      }
      free_cursor_ = std::min(free_cursor_, c);
    }
  }
  write_refblocks();
}

void Qcow2Image::sync() {
  if (::fdatasync(fd_) != 0) throw_errno(where() + ": fdatasync");
}

void Qcow2Image::close() {
  if (readonly_) return;
  try {
    sync();
    apply_pending_frees();
    for (uint64_t c : reserved_) set_refcount(c, refcount(c) - 1);
    reserved_.clear();
    write_refblocks();
    // Trim the free tail (the unused reservation, freed clusters at the end).
    const uint64_t rbe = header_.refblock_entries();
    uint64_t used_end = 0;
    for (uint64_t rbi = refcount_table_.size(); rbi-- > 0 && !used_end;) {
      if (!refcount_table_[rbi]) continue;
      const auto& block = refblock(rbi);
      for (uint64_t i = rbe; i-- > 0;)
        if (get_refcount(block, i, header_.refcount_order)) {
          used_end = (rbi * rbe + i + 1) * cs_;
          break;
        }
    }
    struct stat st;
    if (used_end && ::fstat(fd_, &st) == 0 && used_end < static_cast<uint64_t>(st.st_size))
      if (::ftruncate(fd_, static_cast<off_t>(used_end)) != 0)
        log::warn("{}: cannot trim the file: {}", where(), std::strerror(errno));
    sync();
  } catch (const std::exception& e) {
    log::error("{}: closing: {}", where(), e.what());
  }
}

// ---------------------------------------------------------------- creation

void Qcow2Image::create(const std::string& path, uint64_t size, const std::string& backing,
                        ImageFormat backing_format, uint32_t cluster_bits) {
  const std::string what = "image " + path;
  if (cluster_bits < kMinClusterBits || cluster_bits > kMaxClusterBits)
    throw Error(what + ": cluster size must be a power of two from 512 bytes to 2 MiB");
  Header h;
  h.cluster_bits = cluster_bits;
  if (!backing.empty()) {
    std::filesystem::path b = backing;
    if (b.is_relative()) b = std::filesystem::path(path).parent_path() / b;
    auto base = open_block_backend(b.string(), backing_format, true);
    if (size == 0) size = base->size();
    h.backing_file = backing;
    h.backing_format = to_string(base->format());
  }
  size = (size + 511) & ~uint64_t{511};
  if (size > kMaxVirtualSize) throw Error(what + ": size too large");
  h.size = size;
  const uint64_t cs = h.cluster_size(), rbe = h.refblock_entries(), per_cluster = cs / 8;
  const uint64_t l2_span = cs * (cs / 8);
  h.l1_size = static_cast<uint32_t>(std::max<uint64_t>(1, (size + l2_span - 1) / l2_span));
  const uint64_t l1_clusters = (uint64_t{h.l1_size} * 8 + cs - 1) / cs;
  uint64_t rt = 1, rb = 1;
  for (;;) {
    uint64_t total = 1 + rt + rb + l1_clusters;
    uint64_t rb2 = (total + rbe - 1) / rbe, rt2 = (rb2 + per_cluster - 1) / per_cluster;
    if (rb2 == rb && rt2 == rt) break;
    rb = rb2;
    rt = rt2;
  }
  const uint64_t total = 1 + rt + rb + l1_clusters;
  h.refcount_table_offset = cs;
  h.refcount_table_clusters = static_cast<uint32_t>(rt);
  h.l1_table_offset = (1 + rt + rb) * cs;

  UniqueFd fd(::open(path.c_str(), O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0644));
  if (!fd) throw_errno(what + ": cannot create" + (errno == EEXIST ? " (it exists; keel does not overwrite images)" : ""));
  try {
    std::vector<uint8_t> header = serialize_header(h);
    pwrite_all(fd.get(), header.data(), header.size(), 0, what);
    std::vector<uint64_t> table(rt * per_cluster, 0);
    for (uint64_t i = 0; i < rb; ++i) table[i] = (1 + rt + i) * cs;
    pwrite_all(fd.get(), to_be(table).data(), rt * cs, cs, what);
    std::vector<uint8_t> blocks(rb * cs, 0);
    for (uint64_t c = 0; c < total; ++c)
      qcow2::set_refcount(std::span(blocks).subspan(c / rbe * cs, cs), c % rbe, h.refcount_order, 1);
    pwrite_all(fd.get(), blocks.data(), blocks.size(), (1 + rt) * cs, what);
    if (::ftruncate(fd.get(), static_cast<off_t>(total * cs)) != 0) throw_errno(what + ": ftruncate");
    if (::fsync(fd.get()) != 0) throw_errno(what + ": fsync");
  } catch (...) {
    ::unlink(path.c_str());
    throw;
  }
}

}  // namespace keel
