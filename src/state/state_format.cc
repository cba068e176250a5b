#include "state/state_format.h"

#include <zlib.h>

#include <algorithm>
#include <cstring>

namespace keel::state {

namespace {

void put_le(std::vector<uint8_t>& out, uint64_t v, unsigned width) {
  for (unsigned i = 0; i < width; ++i) out.push_back(static_cast<uint8_t>(v >> (8 * i)));
}

uint64_t get_le(const uint8_t* p, unsigned width) {
  uint64_t v = 0;
  for (unsigned i = 0; i < width; ++i) v |= uint64_t{p[i]} << (8 * i);
  return v;
}

std::string quoted(std::string_view s) { return "'" + std::string(s) + "'"; }

}  // namespace

uint32_t crc32(std::span<const uint8_t> bytes, uint32_t crc) {
  // zlib takes uInt lengths: feed large spans in pieces.
  while (!bytes.empty()) {
    size_t n = std::min<size_t>(bytes.size(), 1u << 30);
    crc = static_cast<uint32_t>(::crc32(crc, bytes.data(), static_cast<uInt>(n)));
    bytes = bytes.subspan(n);
  }
  return crc;
}

// ---------------------------------------------------------------------------------------------
// SectionWriter

void SectionWriter::header(std::string_view field, size_t length) {
  if (field.empty() || field.size() > kMaxNameLength)
    throw StateError("state: field name " + quoted(field) + " has an invalid length");
  if (length > kMaxPayload)
    throw StateError("state: section " + quoted(name_) + ": field " + quoted(field) + " too large");
  payload_.push_back(static_cast<uint8_t>(field.size()));
  payload_.insert(payload_.end(), field.begin(), field.end());
  put_le(payload_, length, 4);
}

void SectionWriter::integer(std::string_view field, uint64_t v, unsigned width) {
  header(field, width);
  put_le(payload_, v, width);
}

void SectionWriter::bytes(std::string_view field, std::span<const uint8_t> v) {
  header(field, v.size());
  payload_.insert(payload_.end(), v.begin(), v.end());
}

void SectionWriter::str(std::string_view field, std::string_view v) {
  bytes(field, {reinterpret_cast<const uint8_t*>(v.data()), v.size()});
}

void SectionWriter::u64s(std::string_view field, std::span<const uint64_t> v) {
  header(field, v.size() * 8);
  for (uint64_t x : v) put_le(payload_, x, 8);
}

void SectionWriter::u32s(std::string_view field, std::span<const uint32_t> v) {
  header(field, v.size() * 4);
  for (uint32_t x : v) put_le(payload_, x, 4);
}

// ---------------------------------------------------------------------------------------------
// SectionReader

SectionReader::SectionReader(std::string name, uint32_t version, std::vector<uint8_t> payload)
    : name_(std::move(name)), version_(version), payload_(std::move(payload)) {
  size_t pos = 0;
  while (pos < payload_.size()) {
    size_t name_len = payload_[pos++];
    if (name_len == 0) fail("empty field name at offset " + std::to_string(pos - 1));
    if (payload_.size() - pos < name_len + 4) fail("truncated field header");
    std::string field(reinterpret_cast<const char*>(&payload_[pos]), name_len);
    pos += name_len;
    size_t len = get_le(&payload_[pos], 4);
    pos += 4;
    if (payload_.size() - pos < len) fail("field " + quoted(field) + " runs past the record");
    if (!fields_.emplace(field, std::make_pair(pos, len)).second)
      fail("field " + quoted(field) + " appears twice");
    pos += len;
  }
}

void SectionReader::fail(const std::string& what) const {
  throw StateError("state: section " + quoted(name_) + ": " + what);
}

std::span<const uint8_t> SectionReader::field(std::string_view name) const {
  auto it = fields_.find(name);
  if (it == fields_.end()) fail("field " + quoted(name) + " is missing");
  return {payload_.data() + it->second.first, it->second.second};
}

uint64_t SectionReader::integer(std::string_view name, unsigned width) const {
  auto f = field(name);
  if (f.size() != width)
    fail("field " + quoted(name) + " has " + std::to_string(f.size()) + " bytes, expected " +
         std::to_string(width));
  return get_le(f.data(), width);
}

bool SectionReader::boolean(std::string_view name) const {
  uint64_t v = integer(name, 1);
  if (v > 1) fail("field " + quoted(name) + " is not a boolean (" + std::to_string(v) + ")");
  return v == 1;
}

std::span<const uint8_t> SectionReader::bytes(std::string_view name, size_t max) const {
  auto f = field(name);
  if (f.size() > max)
    fail("field " + quoted(name) + " has " + std::to_string(f.size()) + " bytes, at most " +
         std::to_string(max) + " allowed");
  return f;
}

void SectionReader::bytes_exact(std::string_view name, std::span<uint8_t> out) const {
  auto f = field(name);
  if (f.size() != out.size())
    fail("field " + quoted(name) + " has " + std::to_string(f.size()) + " bytes, expected " +
         std::to_string(out.size()));
  if (!out.empty()) std::memcpy(out.data(), f.data(), out.size());
}

std::string SectionReader::str(std::string_view name, size_t max) const {
  auto f = bytes(name, max);
  return std::string(reinterpret_cast<const char*>(f.data()), f.size());
}

std::vector<uint64_t> SectionReader::u64s(std::string_view name, size_t max_count) const {
  auto f = field(name);
  if (f.size() % 8 || f.size() / 8 > max_count)
    fail("field " + quoted(name) + " is not a list of at most " + std::to_string(max_count) +
         " 64-bit values");
  std::vector<uint64_t> out(f.size() / 8);
  for (size_t i = 0; i < out.size(); ++i) out[i] = get_le(f.data() + 8 * i, 8);
  return out;
}

std::vector<uint32_t> SectionReader::u32s(std::string_view name, size_t max_count) const {
  auto f = field(name);
  if (f.size() % 4 || f.size() / 4 > max_count)
    fail("field " + quoted(name) + " is not a list of at most " + std::to_string(max_count) +
         " 32-bit values");
  std::vector<uint32_t> out(f.size() / 4);
  for (size_t i = 0; i < out.size(); ++i) out[i] = static_cast<uint32_t>(get_le(f.data() + 4 * i, 4));
  return out;
}

uint64_t SectionReader::u64_in(std::string_view name, uint64_t lo, uint64_t hi) const {
  uint64_t v = u64(name);
  if (v < lo || v > hi)
    fail("field " + quoted(name) + " = " + std::to_string(v) + " is outside [" +
         std::to_string(lo) + ", " + std::to_string(hi) + "]");
  return v;
}

void check_version(const SectionReader& section, uint32_t max_version) {
  if (section.version() == 0 || section.version() > max_version)
    section.fail("version " + std::to_string(section.version()) +
                 " is not supported (this keel reads versions 1 to " +
                 std::to_string(max_version) + ")");
}

// ---------------------------------------------------------------------------------------------
// Writer and the record encoding

SectionWriter& Writer::section(std::string name, uint32_t version) {
  sections_.push_back(std::make_unique<SectionWriter>(std::move(name), version));
  return *sections_.back();
}

std::vector<uint8_t> encode_header() {
  std::vector<uint8_t> out(kMagic, kMagic + 8);
  put_le(out, kFormatVersion, 4);
  put_le(out, crc32(out), 4);
  return out;
}

void append_record(std::vector<uint8_t>& out, const SectionWriter& s) {
  if (s.name().empty() || s.name().size() > kMaxNameLength)
    throw StateError("state: section name '" + s.name() + "' has an invalid length");
  if (s.payload().size() > kMaxPayload)
    throw StateError("state: section '" + s.name() + "' is larger than " +
                     std::to_string(kMaxPayload) + " bytes");
  size_t start = out.size();
  put_le(out, s.name().size(), 2);
  out.insert(out.end(), s.name().begin(), s.name().end());
  put_le(out, s.version(), 4);
  put_le(out, s.payload().size(), 4);
  out.insert(out.end(), s.payload().begin(), s.payload().end());
  put_le(out, crc32({out.data() + start, out.size() - start}), 4);
}

std::vector<uint8_t> Writer::finish() const {
  std::vector<uint8_t> out = encode_header();
  for (const auto& s : sections_) append_record(out, *s);
  SectionWriter end(std::string(kEndRecord), 1);
  end.u64("records", sections_.size());
  append_record(out, end);
  return out;
}

void check_header(std::span<const uint8_t> h, std::string_view what) {
  std::string w(what);
  if (h.size() < kHeaderSize) throw StateError(w + ": truncated (no complete header)");
  if (std::memcmp(h.data(), kMagic, 8) != 0) throw StateError(w + ": not a keel state stream (bad magic)");
  if (crc32(h.first(12)) != get_le(h.data() + 12, 4))
    throw StateError(w + ": header fails its checksum");
  uint32_t version = static_cast<uint32_t>(get_le(h.data() + 8, 4));
  if (version != kFormatVersion)
    throw StateError(w + ": state format version " + std::to_string(version) +
                     " is not supported (this keel reads version " +
                     std::to_string(kFormatVersion) + ")");
}

// ---------------------------------------------------------------------------------------------
// RecordReader

void RecordReader::read(std::span<uint8_t> buf, const std::string& where) {
  if (!source_(buf))
    throw StateError(what_ + ": truncated " + where +
                     (last_.empty() ? std::string(" (no record read)") : " after section '" + last_ + "'"));
}

void RecordReader::header() {
  uint8_t h[kHeaderSize];
  read(h, "in the header");
  check_header(h, what_);
}

SectionReader RecordReader::next() {
  std::vector<uint8_t> head(2);
  read(head, "at a record header");
  size_t name_len = get_le(head.data(), 2);
  if (name_len == 0 || name_len > kMaxNameLength)
    throw StateError(what_ + ": record with an invalid name length " + std::to_string(name_len) +
                     (last_.empty() ? std::string() : " after section '" + last_ + "'"));
  head.resize(2 + name_len + 8);
  read({head.data() + 2, name_len + 8}, "at a record header");
  std::string name(reinterpret_cast<const char*>(&head[2]), name_len);
  uint32_t version = static_cast<uint32_t>(get_le(&head[2 + name_len], 4));
  uint32_t length = static_cast<uint32_t>(get_le(&head[6 + name_len], 4));
  if (length > kMaxPayload)
    throw StateError(what_ + ": section '" + name + "' declares " + std::to_string(length) +
                     " bytes, more than the limit of " + std::to_string(kMaxPayload));
  std::vector<uint8_t> payload(length);
  read(payload, "in section '" + name + "'");
  uint8_t crc_bytes[4];
  read(crc_bytes, "in section '" + name + "'");
  uint32_t crc = crc32(head);
  crc = crc32(payload, crc);
  if (crc != get_le(crc_bytes, 4)) throw StateError(what_ + ": section '" + name + "' fails its checksum");
  last_ = name;
  return SectionReader(std::move(name), version, std::move(payload));
}

// ---------------------------------------------------------------------------------------------
// Document

Document Document::parse(std::span<const uint8_t> bytes, std::string what) {
  Document doc;
  doc.what_ = what;
  size_t pos = 0;
  RecordReader reader(
      [&](std::span<uint8_t> buf) {
        if (bytes.size() - pos < buf.size()) return false;
        std::memcpy(buf.data(), bytes.data() + pos, buf.size());
        pos += buf.size();
        return true;
      },
      what);
  reader.header();
  uint64_t count = 0;
  for (;;) {
    SectionReader s = reader.next();
    if (s.name() == kEndRecord) {
      if (s.u64("records") != count)
        throw StateError(what + ": the end record counts " + std::to_string(s.u64("records")) +
                         " sections, the file has " + std::to_string(count));
      break;
    }
    std::string name = s.name();
    if (!doc.sections_.emplace(name, std::move(s)).second)
      throw StateError(what + ": section '" + name + "' appears twice");
    ++count;
  }
  if (pos != bytes.size())
    throw StateError(what + ": " + std::to_string(bytes.size() - pos) +
                     " bytes of trailing data after the end record");
  return doc;
}

const SectionReader& Document::section(std::string_view name, uint32_t max_version) const {
  auto it = sections_.find(name);
  if (it == sections_.end())
    throw StateError(what_ + ": section '" + std::string(name) + "' is missing");
  check_version(it->second, max_version);
  return it->second;
}

std::vector<std::string> Document::names() const {
  std::vector<std::string> out;
  for (const auto& [name, s] : sections_) out.push_back(name);
  return out;
}

}  // namespace keel::state
