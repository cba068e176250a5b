// The qcow2 on-disk format (QEMU's docs/interop/qcow2.txt), versions 2 and 3: the header and
// its extensions, the L1/L2 entry and refcount encodings, and the header checks. Parsing is
// separate from Qcow2Image so it can be fuzzed without files (fuzz/fuzz_qcow2.cc).
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <vector>

namespace keel::qcow2 {

inline constexpr uint32_t kMagic = 0x514649fb;  // "QFI\xfb"
inline constexpr uint32_t kMinClusterBits = 9;   // 512 bytes
inline constexpr uint32_t kMaxClusterBits = 21;  // 2 MiB, QEMU's limit
inline constexpr uint64_t kMaxL1Bytes = 32ull << 20;
inline constexpr uint64_t kMaxRefcountTableBytes = 8ull << 20;
inline constexpr uint64_t kMaxVirtualSize = 1ull << 56;
inline constexpr uint32_t kMaxBackingNameBytes = 1023;

// Incompatible feature bits (v3).
inline constexpr uint64_t kIncompatDirty = 1ull << 0;
inline constexpr uint64_t kIncompatCorrupt = 1ull << 1;
inline constexpr uint64_t kIncompatExternalData = 1ull << 2;
inline constexpr uint64_t kIncompatCompressionType = 1ull << 3;
inline constexpr uint64_t kIncompatExtendedL2 = 1ull << 4;

// Header extension types.
inline constexpr uint32_t kExtEnd = 0;
inline constexpr uint32_t kExtBackingFormat = 0xe2792aca;
inline constexpr uint32_t kExtFeatureNames = 0x6803f857;
inline constexpr uint32_t kExtExternalDataFile = 0x44415441;

// L1/L2 entries.
inline constexpr uint64_t kOffsetMask = 0x00fffffffffffe00ull;  // bits 9-55
inline constexpr uint64_t kCopied = 1ull << 63;       // refcount is exactly 1: writable in place
inline constexpr uint64_t kCompressed = 1ull << 62;
inline constexpr uint64_t kZero = 1ull << 0;          // v3: reads as zeros
inline constexpr uint64_t kL1Reserved = ~(kOffsetMask | kCopied);
inline constexpr uint64_t kL2Reserved = ~(kOffsetMask | kCopied | kCompressed | kZero);
inline constexpr uint64_t kRefTableReserved = ~kOffsetMask;

enum class Compression : uint8_t { kZlib = 0, kZstd = 1 };

struct Header {
  uint32_t version = 3;
  uint64_t backing_file_offset = 0;
  uint32_t backing_file_size = 0;
  uint32_t cluster_bits = 16;
  uint64_t size = 0;
  uint32_t crypt_method = 0;
  uint32_t l1_size = 0;
  uint64_t l1_table_offset = 0;
  uint64_t refcount_table_offset = 0;
  uint32_t refcount_table_clusters = 0;
  uint32_t nb_snapshots = 0;
  uint64_t snapshots_offset = 0;
  uint64_t incompatible_features = 0;
  uint64_t compatible_features = 0;
  uint64_t autoclear_features = 0;
  uint32_t refcount_order = 4;
  uint32_t header_length = 72;
  Compression compression = Compression::kZlib;

  std::string backing_file;    // empty: none
  std::string backing_format;  // from the backing-format extension; empty: detect

  uint64_t cluster_size() const { return 1ull << cluster_bits; }
  uint64_t l2_entries() const { return cluster_size() / 8; }
  uint64_t refblock_entries() const { return cluster_size() * 8 >> refcount_order; }
};

// Byte offsets of the header fields keel rewrites.
inline constexpr uint64_t kRefcountTableOffsetField = 48;  // + refcount_table_clusters at 56
inline constexpr uint64_t kAutoclearField = 88;

// Parses and checks the header in `cluster0` (the image's first cluster, or as much of it as the
// file has) against a file of `file_size` bytes. Throws Error naming the field and the problem:
// bad magic or version, cluster size, encryption, unknown incompatible features, external data
// files, extended L2 entries, tables outside the file or too large, an L1 table too small for
// the virtual size, a malformed extension or backing file name.
Header parse_header(std::span<const uint8_t> cluster0, uint64_t file_size);

// The header cluster of a new image (version 3, 16-bit refcounts, zlib), for Qcow2Image::create.
std::vector<uint8_t> serialize_header(const Header& header);

// Compressed-cluster descriptor (L2 entry with kCompressed).
struct CompressedRef {
  uint64_t offset;  // host byte offset of the compressed data
  uint64_t bytes;   // how many bytes it may span (whole 512-byte sectors from its sector)
};
CompressedRef decode_compressed(uint64_t entry, uint32_t cluster_bits);

// Big-endian field access.
uint64_t be64(const uint8_t* p);
uint32_t be32(const uint8_t* p);
void put_be64(uint8_t* p, uint64_t v);
void put_be32(uint8_t* p, uint32_t v);

// One refcount in a refcount block of 2^order-bit big-endian entries (orders 0-2 pack the
// entries into bytes from the least significant bit, as QEMU does).
uint64_t get_refcount(std::span<const uint8_t> block, uint64_t index, uint32_t order);
void set_refcount(std::span<uint8_t> block, uint64_t index, uint32_t order, uint64_t value);

}  // namespace keel::qcow2
