#include "backends/block/qcow2_format.h"

#include <cstring>

#include "base/error.h"

namespace keel::qcow2 {

uint64_t be64(const uint8_t* p) {
  uint64_t v = 0;
  for (int i = 0; i < 8; ++i) v = v << 8 | p[i];
  return v;
}
uint32_t be32(const uint8_t* p) {
  return uint32_t{p[0]} << 24 | uint32_t{p[1]} << 16 | uint32_t{p[2]} << 8 | p[3];
}
void put_be64(uint8_t* p, uint64_t v) {
  for (int i = 7; i >= 0; --i, v >>= 8) p[i] = static_cast<uint8_t>(v);
}
void put_be32(uint8_t* p, uint32_t v) {
  for (int i = 3; i >= 0; --i, v >>= 8) p[i] = static_cast<uint8_t>(v);
}

namespace {

[[noreturn]] void refuse(const std::string& why) { throw Error("qcow2 header: " + why); }

std::string hex(uint64_t v) {
  char buf[24];
  std::snprintf(buf, sizeof buf, "%#llx", static_cast<unsigned long long>(v));
  return buf;
}

// A table of `bytes` at `offset`: cluster aligned and inside the file.
void check_table(const char* what, uint64_t offset, uint64_t bytes, uint64_t cluster_size,
                 uint64_t file_size) {
  if (offset % cluster_size) refuse(std::string(what) + " offset " + hex(offset) + " is not cluster aligned");
  if (offset == 0 && bytes) refuse(std::string(what) + " overlaps the header");
  if (offset > file_size || bytes > file_size - offset)
    refuse(std::string(what) + " at " + hex(offset) + " (" + std::to_string(bytes) +
           " bytes) is outside the file (" + std::to_string(file_size) + " bytes)");
}

}  // namespace

Header parse_header(std::span<const uint8_t> c0, uint64_t file_size) {
  if (c0.size() < 72) refuse("file too short for a qcow2 header (" + std::to_string(c0.size()) + " bytes)");
  const uint8_t* p = c0.data();
  if (be32(p) != kMagic) refuse("bad magic");
  Header h;
  h.version = be32(p + 4);
  if (h.version != 2 && h.version != 3) refuse("version " + std::to_string(h.version) + " (keel reads 2 and 3)");
  h.backing_file_offset = be64(p + 8);
  h.backing_file_size = be32(p + 16);
  h.cluster_bits = be32(p + 20);
  h.size = be64(p + 24);
  h.crypt_method = be32(p + 32);
  h.l1_size = be32(p + 36);
  h.l1_table_offset = be64(p + 40);
  h.refcount_table_offset = be64(p + 48);
  h.refcount_table_clusters = be32(p + 56);
  h.nb_snapshots = be32(p + 60);
  h.snapshots_offset = be64(p + 64);
  if (h.cluster_bits < kMinClusterBits || h.cluster_bits > kMaxClusterBits)
    refuse("cluster_bits " + std::to_string(h.cluster_bits) + " outside 9-21");
  const uint64_t cs = h.cluster_size();
  if (h.version == 3) {
    if (c0.size() < 104) refuse("file too short for a version 3 header");
    h.incompatible_features = be64(p + 72);
    h.compatible_features = be64(p + 80);
    h.autoclear_features = be64(p + 88);
    h.refcount_order = be32(p + 96);
    h.header_length = be32(p + 100);
    if (h.header_length < 104 || h.header_length % 8 || h.header_length > cs || h.header_length > c0.size())
      refuse("header_length " + std::to_string(h.header_length) + " is not a multiple of 8 in 104.." +
             std::to_string(std::min<uint64_t>(cs, c0.size())));
    if (h.header_length > 104) {
      uint8_t type = p[104];
      if (type > 1) refuse("unknown compression type " + std::to_string(type));
      h.compression = static_cast<Compression>(type);
    }
    if ((h.compression != Compression::kZlib) != ((h.incompatible_features & kIncompatCompressionType) != 0))
      refuse("compression type and its incompatible feature bit disagree");
  }
  if (h.refcount_order > 6) refuse("refcount_order " + std::to_string(h.refcount_order) + " above 6 (64-bit refcounts)");
  if (h.incompatible_features & kIncompatExternalData)
    refuse("the image keeps its data in an external data file, which keel does not support");
  if (h.incompatible_features & kIncompatExtendedL2)
    refuse("the image uses extended L2 entries (subclusters), which keel does not support");
  uint64_t unknown = h.incompatible_features &
                     ~(kIncompatDirty | kIncompatCorrupt | kIncompatCompressionType);
  if (unknown) refuse("unknown incompatible features " + hex(unknown));
  if (h.crypt_method != 0) refuse("the image is encrypted (crypt_method " + std::to_string(h.crypt_method) + "), which keel does not support");
  if (h.size > kMaxVirtualSize) refuse("virtual size " + std::to_string(h.size) + " is too large");

  // The L1 table must cover the virtual size.
  uint64_t l2_span = cs * h.l2_entries();
  uint64_t l1_needed = (h.size + l2_span - 1) / l2_span;
  if (uint64_t{h.l1_size} * 8 > kMaxL1Bytes) refuse("L1 table of " + std::to_string(h.l1_size) + " entries is too large");
  if (h.l1_size < l1_needed)
    refuse("L1 table of " + std::to_string(h.l1_size) + " entries does not cover the virtual size (needs " +
           std::to_string(l1_needed) + ")");
  check_table("L1 table", h.l1_table_offset, uint64_t{h.l1_size} * 8, cs, file_size);
  if (h.refcount_table_clusters == 0) refuse("no refcount table");
  if (uint64_t{h.refcount_table_clusters} * cs > kMaxRefcountTableBytes)
    refuse("refcount table of " + std::to_string(h.refcount_table_clusters) + " clusters is too large");
  check_table("refcount table", h.refcount_table_offset, uint64_t{h.refcount_table_clusters} * cs, cs,
              file_size);

  // Header extensions, up to the end marker, inside the header cluster.
  uint64_t at = h.version == 3 ? h.header_length : 72;
  uint64_t limit = std::min<uint64_t>(cs, c0.size());
  for (;;) {
    if (at + 8 > limit) refuse("header extensions run past the first cluster");
    uint32_t type = be32(p + at), len = be32(p + at + 4);
    at += 8;
    if (type == kExtEnd) break;
    if (len > limit - at) refuse("header extension " + hex(type) + " runs past the first cluster");
    if (type == kExtBackingFormat) {
      h.backing_format.assign(reinterpret_cast<const char*>(p + at), len);
      if (h.backing_format.find('\0') != std::string::npos) refuse("backing format contains a NUL byte");
    } else if (type == kExtExternalDataFile) {
      refuse("the image names an external data file, which keel does not support");
    }
    at += (uint64_t{len} + 7) & ~7ull;
  }
  if (h.backing_file_offset) {
    if (h.backing_file_size == 0 || h.backing_file_size > kMaxBackingNameBytes)
      refuse("backing file name of " + std::to_string(h.backing_file_size) + " bytes (1-1023 allowed)");
    if (h.backing_file_offset > limit || h.backing_file_size > limit - h.backing_file_offset)
      refuse("backing file name outside the first cluster");
    h.backing_file.assign(reinterpret_cast<const char*>(p + h.backing_file_offset), h.backing_file_size);
    if (h.backing_file.find('\0') != std::string::npos) refuse("backing file name contains a NUL byte");
  } else if (!h.backing_format.empty()) {
    refuse("a backing format without a backing file");
  }
  if (h.nb_snapshots && h.snapshots_offset % cs) refuse("snapshot table offset is not cluster aligned");
  return h;
}

std::vector<uint8_t> serialize_header(const Header& h) {
  std::vector<uint8_t> c(h.cluster_size(), 0);
  uint8_t* p = c.data();
  put_be32(p, kMagic);
  put_be32(p + 4, 3);
  put_be32(p + 20, h.cluster_bits);
  put_be64(p + 24, h.size);
  put_be32(p + 36, h.l1_size);
  put_be64(p + 40, h.l1_table_offset);
  put_be64(p + 48, h.refcount_table_offset);
  put_be32(p + 56, h.refcount_table_clusters);
  put_be32(p + 96, h.refcount_order);
  put_be32(p + 100, 112);  // 104 + compression type, padded to 8
  uint64_t at = 112;
  if (!h.backing_format.empty()) {
    put_be32(p + at, kExtBackingFormat);
    put_be32(p + at + 4, static_cast<uint32_t>(h.backing_format.size()));
    std::memcpy(p + at + 8, h.backing_format.data(), h.backing_format.size());
    at += 8 + ((h.backing_format.size() + 7) & ~size_t{7});
  }
  at += 8;  // end of extensions (type 0, length 0)
  if (!h.backing_file.empty()) {
    if (h.backing_file.size() > kMaxBackingNameBytes || at + h.backing_file.size() > c.size())
      throw Error("backing file name too long: " + h.backing_file);
    put_be64(p + 8, at);
    put_be32(p + 16, static_cast<uint32_t>(h.backing_file.size()));
    std::memcpy(p + at, h.backing_file.data(), h.backing_file.size());
  }
  return c;
}

CompressedRef decode_compressed(uint64_t entry, uint32_t cluster_bits) {
  uint32_t x = 62 - (cluster_bits - 8);
  uint64_t offset = entry & ((1ull << x) - 1);
  uint64_t sectors = ((entry >> x) & ((1ull << (cluster_bits - 8)) - 1)) + 1;
  return {offset, sectors * 512 - (offset & 511)};
}

uint64_t get_refcount(std::span<const uint8_t> block, uint64_t i, uint32_t order) {
  switch (order) {
    case 0: return block[i / 8] >> (i % 8) & 1;
    case 1: return block[i / 4] >> (2 * (i % 4)) & 3;
    case 2: return block[i / 2] >> (4 * (i % 2)) & 15;
    case 3: return block[i];
    case 4: return uint64_t{block[2 * i]} << 8 | block[2 * i + 1];
    case 5: return be32(&block[4 * i]);
    default: return be64(&block[8 * i]);
  }
}

void set_refcount(std::span<uint8_t> block, uint64_t i, uint32_t order, uint64_t v) {
  auto pack = [&](uint64_t per_byte, uint32_t bits) {
    uint8_t& b = block[i / per_byte];
    uint32_t shift = bits * (i % per_byte);
    uint8_t mask = static_cast<uint8_t>(((1u << bits) - 1) << shift);
    b = static_cast<uint8_t>((b & ~mask) | ((v << shift) & mask));
  };
  switch (order) {
    case 0: pack(8, 1); break;
    case 1: pack(4, 2); break;
    case 2: pack(2, 4); break;
    case 3: block[i] = static_cast<uint8_t>(v); break;
    case 4:
      block[2 * i] = static_cast<uint8_t>(v >> 8);
      block[2 * i + 1] = static_cast<uint8_t>(v);
      break;
    case 5: put_be32(&block[4 * i], static_cast<uint32_t>(v)); break;
    default: put_be64(&block[8 * i], v);
  }
}

}  // namespace keel::qcow2
