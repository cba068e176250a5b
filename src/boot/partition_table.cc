#include "boot/partition_table.h"

#include <zlib.h>

#include <cstring>

#include "base/error.h"

namespace keel::boot {
namespace {

constexpr uint64_t kSector = 512;

uint32_t le32(const uint8_t* p) { return uint32_t{p[0]} | uint32_t{p[1]} << 8 | uint32_t{p[2]} << 16 | uint32_t{p[3]} << 24; }
uint64_t le64(const uint8_t* p) { return le32(p) | uint64_t{le32(p + 4)} << 32; }

std::vector<Partition> read_gpt(BlockBackend& disk) {
  const std::string where = "disk " + disk.path() + ": GPT";
  uint8_t h[kSector];
  disk.read_bytes(kSector, h, sizeof h);
  if (std::memcmp(h, "EFI PART", 8) != 0) throw Error(where + ": protective MBR but no GPT header at LBA 1");
  uint32_t header_size = le32(h + 12);
  if (header_size < 92 || header_size > kSector) throw Error(where + ": header size " + std::to_string(header_size));
  uint32_t crc = le32(h + 16);
  std::memset(h + 16, 0, 4);
  if (crc32(0, h, header_size) != crc) throw Error(where + ": header CRC mismatch");
  uint64_t entries_lba = le64(h + 72);
  uint32_t count = le32(h + 80), entry_size = le32(h + 84);
  if (entry_size < 128 || entry_size % 8 || entry_size > 4096 || count > 4096)
    throw Error(where + ": " + std::to_string(count) + " entries of " + std::to_string(entry_size) + " bytes");
  uint64_t bytes = uint64_t{count} * entry_size;
  if (entries_lba > disk.size() / kSector || bytes > disk.size() - entries_lba * kSector)
    throw Error(where + ": partition entries outside the disk image");
  std::vector<uint8_t> entries(bytes);
  disk.read_bytes(entries_lba * kSector, entries.data(), bytes);
  if (crc32(0, entries.data(), static_cast<uInt>(bytes)) != le32(h + 88))
    throw Error(where + ": partition entries CRC mismatch");
  std::vector<Partition> out;
  static const uint8_t kUnused[16] = {};
  for (uint32_t i = 0; i < count; ++i) {
    const uint8_t* e = &entries[uint64_t{i} * entry_size];
    if (std::memcmp(e, kUnused, 16) == 0) continue;
    uint64_t first = le64(e + 32), last = le64(e + 40);
    if (last < first || last >= disk.size() / kSector || first <= entries_lba)
      throw Error(where + ": partition " + std::to_string(i + 1) + " (sectors " + std::to_string(first) + "-" +
                  std::to_string(last) + ") lies outside the disk image (" + std::to_string(disk.size()) + " bytes)");
    out.push_back({i + 1, first * kSector, (last - first + 1) * kSector, "gpt"});
  }
  return out;
}

Partition mbr_entry(BlockBackend& disk, const uint8_t* e, uint64_t base_lba, uint32_t number) {
  uint64_t first = base_lba + le32(e + 8), sectors = le32(e + 12);
  if (sectors == 0 || first == 0 || first + sectors > disk.size() / kSector)
    throw Error("disk " + disk.path() + ": MBR partition " + std::to_string(number) + " (sectors " +
                std::to_string(first) + "+" + std::to_string(sectors) + ") lies outside the disk image (" +
                std::to_string(disk.size()) + " bytes)");
  return {number, first * kSector, sectors * kSector, "mbr"};
}

bool is_extended(uint8_t type) { return type == 0x05 || type == 0x0f || type == 0x85; }

}  // namespace

std::vector<Partition> read_partitions(BlockBackend& disk) {
  if (disk.size() < 2 * kSector) return {{0, 0, disk.size(), "none"}};
  uint8_t mbr[kSector];
  disk.read_bytes(0, mbr, sizeof mbr);
  if (mbr[510] != 0x55 || mbr[511] != 0xaa) return {{0, 0, disk.size(), "none"}};
  // A file system boot sector also ends in 55 AA (FAT): a table has sane status bytes.
  for (int i = 0; i < 4; ++i) {
    uint8_t status = mbr[446 + 16 * i];
    if (status != 0 && status != 0x80) return {{0, 0, disk.size(), "none"}};
  }
  for (int i = 0; i < 4; ++i)
    if (mbr[446 + 16 * i + 4] == 0xee) return read_gpt(disk);
  std::vector<Partition> out;
  uint64_t extended = 0;
  for (uint32_t i = 0; i < 4; ++i) {
    const uint8_t* e = mbr + 446 + 16 * i;
    if (e[4] == 0) continue;
    Partition p = mbr_entry(disk, e, 0, i + 1);
    if (is_extended(e[4]))
      extended = p.offset / kSector;
    else
      out.push_back(p);
  }
  // Logical partitions: a chain of EBRs inside the extended partition, numbered from 5.
  uint64_t ebr = extended;
  for (uint32_t n = 5; ebr && n < 5 + 128; ++n) {
    uint8_t b[kSector];
    disk.read_bytes(ebr * kSector, b, sizeof b);
    if (b[510] != 0x55 || b[511] != 0xaa) throw Error("disk " + disk.path() + ": broken extended partition chain");
    if (b[446 + 4]) out.push_back(mbr_entry(disk, b + 446, ebr, n));
    uint64_t next = b[462 + 4] ? extended + le32(b + 462 + 8) : 0;
    if (next && next <= ebr) throw Error("disk " + disk.path() + ": extended partition chain loops");
    ebr = next;
  }
  if (out.empty()) return {{0, 0, disk.size(), "none"}};
  return out;
}

}  // namespace keel::boot
