// keel's VM state format: one versioned, self-describing binary encoding for everything a VM is
// besides its RAM (vCPUs, interrupt controllers, timers, devices). Snapshot files and the
// migration stream are the same sequence of records.
//
// A stream is a header and records:
//
//   header   "KEELSTAT" (8 bytes) | format version (u32) | CRC-32 of the 12 bytes before (u32)
//   record   name length (u16) | name | section version (u32) | payload length (u32) | payload
//            | CRC-32 of everything in the record before it (u32)
//   end      a record named "end" whose payload is one field, "records": the number of records
//            before it
//
// A payload is a list of named fields: name length (u8) | name | value length (u32) | value.
// Integers are little-endian and their width is checked on reading. Every record names its
// section ("cpu0", "dev/serial0", ...) and carries that section's own version, so a device can
// change its fields without changing the format. All integers are little-endian.
//
// Everything read is untrusted: truncation, a flipped bit (CRC-32, zlib's), an unknown format
// version, an oversized record, a missing or duplicated field or a field of the wrong width
// throw StateError with a message naming the record and field. Nothing here allocates more than
// a record's declared length, and that is capped (kMaxPayload).
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "base/error.h"

namespace keel::state {

class StateError : public Error {
 public:
  using Error::Error;
};

inline constexpr char kMagic[8] = {'K', 'E', 'E', 'L', 'S', 'T', 'A', 'T'};
inline constexpr uint32_t kFormatVersion = 1;
inline constexpr size_t kHeaderSize = 16;
inline constexpr size_t kMaxNameLength = 255;
inline constexpr uint32_t kMaxPayload = 64u << 20;
inline constexpr std::string_view kEndRecord = "end";

uint32_t crc32(std::span<const uint8_t> bytes, uint32_t crc = 0);

// The fields of one record, as a writer builds them.
class SectionWriter {
 public:
  SectionWriter(std::string name, uint32_t version) : name_(std::move(name)), version_(version) {}

  const std::string& name() const { return name_; }
  uint32_t version() const { return version_; }

  void u8(std::string_view field, uint8_t v) { integer(field, v, 1); }
  void u16(std::string_view field, uint16_t v) { integer(field, v, 2); }
  void u32(std::string_view field, uint32_t v) { integer(field, v, 4); }
  void u64(std::string_view field, uint64_t v) { integer(field, v, 8); }
  void i64(std::string_view field, int64_t v) { integer(field, static_cast<uint64_t>(v), 8); }
  void boolean(std::string_view field, bool v) { integer(field, v ? 1 : 0, 1); }
  void bytes(std::string_view field, std::span<const uint8_t> v);
  void str(std::string_view field, std::string_view v);
  void u64s(std::string_view field, std::span<const uint64_t> v);
  void u32s(std::string_view field, std::span<const uint32_t> v);

  const std::vector<uint8_t>& payload() const { return payload_; }

 private:
  void integer(std::string_view field, uint64_t v, unsigned width);
  void header(std::string_view field, size_t length);

  std::string name_;
  uint32_t version_;
  std::vector<uint8_t> payload_;
};

// The fields of one record as read back. Every accessor checks presence and width and throws
// StateError("state: section 'NAME': field 'F' ...") otherwise.
class SectionReader {
 public:
  // Parses `payload` (copied). Throws StateError on a malformed field list.
  SectionReader(std::string name, uint32_t version, std::vector<uint8_t> payload);

  const std::string& name() const { return name_; }
  uint32_t version() const { return version_; }
  bool has(std::string_view field) const { return fields_.count(std::string(field)) != 0; }

  uint8_t u8(std::string_view field) const { return static_cast<uint8_t>(integer(field, 1)); }
  uint16_t u16(std::string_view field) const { return static_cast<uint16_t>(integer(field, 2)); }
  uint32_t u32(std::string_view field) const { return static_cast<uint32_t>(integer(field, 4)); }
  uint64_t u64(std::string_view field) const { return integer(field, 8); }
  int64_t i64(std::string_view field) const { return static_cast<int64_t>(integer(field, 8)); }
  bool boolean(std::string_view field) const;
  // A byte field of at most `max` bytes.
  std::span<const uint8_t> bytes(std::string_view field, size_t max) const;
  // A byte field of exactly out.size() bytes, copied into `out`.
  void bytes_exact(std::string_view field, std::span<uint8_t> out) const;
  std::string str(std::string_view field, size_t max) const;
  std::vector<uint64_t> u64s(std::string_view field, size_t max_count) const;
  std::vector<uint32_t> u32s(std::string_view field, size_t max_count) const;
  // A value that must lie in [lo, hi].
  uint64_t u64_in(std::string_view field, uint64_t lo, uint64_t hi) const;

  // Throws StateError("state: section 'NAME': what").
  [[noreturn]] void fail(const std::string& what) const;

 private:
  std::span<const uint8_t> field(std::string_view name) const;
  uint64_t integer(std::string_view field, unsigned width) const;

  std::string name_;
  uint32_t version_;
  std::vector<uint8_t> payload_;
  std::map<std::string, std::pair<size_t, size_t>, std::less<>> fields_;  // offset, length
};

// Builds a stream: header, records in the order added, the end record.
class Writer {
 public:
  SectionWriter& section(std::string name, uint32_t version = 1);
  // Serialises everything added so far, ending with the end record.
  std::vector<uint8_t> finish() const;

 private:
  std::vector<std::unique_ptr<SectionWriter>> sections_;
};

// Encoding pieces, shared with the migration stream (which interleaves RAM records).
std::vector<uint8_t> encode_header();
void append_record(std::vector<uint8_t>& out, const SectionWriter& section);
// Checks a 16-byte header; throws StateError naming `what` (a file, "migration stream").
void check_header(std::span<const uint8_t> header, std::string_view what);

// Reads records one by one from a byte source (a file's bytes, a socket). `read(buf)` must fill
// buf completely or return false at end of input.
class RecordReader {
 public:
  using Source = std::function<bool(std::span<uint8_t>)>;
  RecordReader(Source source, std::string what) : source_(std::move(source)), what_(std::move(what)) {}
  // Reads and checks the header.
  void header();
  // The next record (the end record included); throws StateError on truncation or corruption.
  SectionReader next();
  const std::string& what() const { return what_; }

 private:
  void read(std::span<uint8_t> buf, const std::string& where);
  Source source_;
  std::string what_;
  std::string last_;  // name of the last good record, for "truncated after"
};

// A whole parsed state blob (a snapshot's state file): all records by name.
class Document {
 public:
  // Throws StateError naming `what` and the cause.
  static Document parse(std::span<const uint8_t> bytes, std::string what);

  bool has(std::string_view name) const { return sections_.count(std::string(name)) != 0; }
  // The section `name`, whose version must be in [1, max_version]. Throws StateError when it is
  // missing or newer than this keel reads.
  const SectionReader& section(std::string_view name, uint32_t max_version = 1) const;
  std::vector<std::string> names() const;
  const std::string& what() const { return what_; }

 private:
  std::string what_;
  std::map<std::string, SectionReader, std::less<>> sections_;
};

// Checks the version of a section: 1..max_version.
void check_version(const SectionReader& section, uint32_t max_version);

}  // namespace keel::state
