#include "arch/x86/acpi/aml.h"

#include <fmt/format.h>

#include "base/error.h"

namespace keel::x86::acpi::aml {

namespace {

// Opcodes (ACPI 6.x, 20.3).
constexpr uint8_t kZeroOp = 0x00;
constexpr uint8_t kOneOp = 0x01;
constexpr uint8_t kNameOp = 0x08;
constexpr uint8_t kBytePrefix = 0x0A;
constexpr uint8_t kWordPrefix = 0x0B;
constexpr uint8_t kDWordPrefix = 0x0C;
constexpr uint8_t kStringPrefix = 0x0D;
constexpr uint8_t kQWordPrefix = 0x0E;
constexpr uint8_t kScopeOp = 0x10;
constexpr uint8_t kBufferOp = 0x11;
constexpr uint8_t kPackageOp = 0x12;
constexpr uint8_t kMethodOp = 0x14;
constexpr uint8_t kDualNamePrefix = 0x2E;
constexpr uint8_t kMultiNamePrefix = 0x2F;
constexpr uint8_t kExtOpPrefix = 0x5B;
constexpr uint8_t kDeviceOp = 0x82;
constexpr uint8_t kRootChar = '\\';
constexpr uint8_t kParentPrefixChar = '^';
constexpr uint8_t kReturnOp = 0xA4;

void append(Bytes& out, const Bytes& more) { out.insert(out.end(), more.begin(), more.end()); }

template <typename T>
void put_le(Bytes& out, T v) {
  for (size_t i = 0; i < sizeof(T); ++i) out.push_back(static_cast<uint8_t>(uint64_t(v) >> (8 * i)));
}

// op [ext] PkgLength body
Bytes with_length(std::initializer_list<uint8_t> ops, const Bytes& body) {
  Bytes out(ops);
  append(out, pkg_length(body.size()));
  append(out, body);
  return out;
}

Bytes concat(const std::vector<Bytes>& terms) {
  Bytes out;
  for (const auto& t : terms) append(out, t);
  return out;
}

void name_seg(Bytes& out, std::string_view seg, std::string_view path) {
  auto bad = [&](const char* why) {
    return Error(fmt::format("invalid AML name \"{}\": segment \"{}\" {}", path, seg, why));
  };
  if (seg.empty() || seg.size() > 4) throw bad("must have 1 to 4 characters");
  for (size_t i = 0; i < seg.size(); ++i) {
    const char c = seg[i];
    const bool ok = (c >= 'A' && c <= 'Z') || c == '_' || (i > 0 && c >= '0' && c <= '9');
    if (!ok) throw bad("may hold only A-Z, _ and (after the first) 0-9");
  }
  for (size_t i = 0; i < 4; ++i) out.push_back(i < seg.size() ? uint8_t(seg[i]) : uint8_t('_'));
}

uint8_t hex_digit(char c, std::string_view id) {
  if (c >= '0' && c <= '9') return uint8_t(c - '0');
  if (c >= 'A' && c <= 'F') return uint8_t(c - 'A' + 10);
  throw Error(fmt::format("invalid EISA id \"{}\": '{}' is not an upper-case hex digit", id, c));
}

}  // namespace

Bytes pkg_length(size_t body_size) {
  // The encoding's own bytes count: pick the shortest form whose range holds body + itself.
  if (body_size + 1 <= 0x3F) return {uint8_t(body_size + 1)};
  for (size_t n = 2; n <= 4; ++n) {
    const uint64_t total = body_size + n;
    if (total < (uint64_t(1) << (4 + 8 * (n - 1)))) {
      Bytes out{uint8_t(((n - 1) << 6) | (total & 0xF))};
      for (size_t i = 1; i < n; ++i) out.push_back(uint8_t(total >> (4 + 8 * (i - 1))));
      return out;
    }
  }
  throw Error(fmt::format("AML package of {} bytes is too large for a PkgLength", body_size));
}

Bytes name_string(std::string_view path) {
  Bytes out;
  std::string_view rest = path;
  if (!rest.empty() && rest.front() == kRootChar) {
    out.push_back(kRootChar);
    rest.remove_prefix(1);
  } else {
    while (!rest.empty() && rest.front() == kParentPrefixChar) {
      out.push_back(kParentPrefixChar);
      rest.remove_prefix(1);
    }
  }
  std::vector<std::string_view> segs;
  while (!rest.empty()) {
    const size_t dot = rest.find('.');
    segs.push_back(rest.substr(0, dot));
    rest = dot == std::string_view::npos ? std::string_view() : rest.substr(dot + 1);
    if (dot != std::string_view::npos && rest.empty()) segs.push_back(rest);  // trailing dot
  }
  if (segs.empty()) {
    if (out.empty()) throw Error("invalid AML name: empty");
    out.push_back(0x00);  // NullName: "\" or "^" alone
    return out;
  }
  if (segs.size() > 255) throw Error(fmt::format("invalid AML name \"{}\": too many segments", path));
  if (segs.size() == 2) out.push_back(kDualNamePrefix);
  if (segs.size() > 2) {
    out.push_back(kMultiNamePrefix);
    out.push_back(uint8_t(segs.size()));
  }
  for (auto seg : segs) name_seg(out, seg, path);
  return out;
}

Bytes integer(uint64_t value) {
  if (value == 0) return {kZeroOp};
  if (value == 1) return {kOneOp};
  Bytes out;
  if (value <= 0xFF) {
    out.push_back(kBytePrefix);
    put_le<uint8_t>(out, uint8_t(value));
  } else if (value <= 0xFFFF) {
    out.push_back(kWordPrefix);
    put_le<uint16_t>(out, uint16_t(value));
  } else if (value <= 0xFFFF'FFFF) {
    out.push_back(kDWordPrefix);
    put_le<uint32_t>(out, uint32_t(value));
  } else {
    out.push_back(kQWordPrefix);
    put_le<uint64_t>(out, value);
  }
  return out;
}

Bytes string(std::string_view text) {
  Bytes out{kStringPrefix};
  for (char c : text) {
    if (c == 0 || uint8_t(c) > 0x7F)
      throw Error("AML strings must be ASCII without NUL bytes");
    out.push_back(uint8_t(c));
  }
  out.push_back(0);
  return out;
}

Bytes eisa_id(std::string_view id) {
  if (id.size() != 7) throw Error(fmt::format("invalid EISA id \"{}\": expected 3 letters + 4 hex digits", id));
  for (int i = 0; i < 3; ++i)
    if (id[i] < 'A' || id[i] > 'Z')
      throw Error(fmt::format("invalid EISA id \"{}\": '{}' is not an upper-case letter", id, id[i]));
  const uint32_t c0 = id[0] - 0x40, c1 = id[1] - 0x40, c2 = id[2] - 0x40;
  // Three 5-bit letters and four nibbles, stored big-endian within the DWord.
  const uint8_t b0 = uint8_t((c0 << 2) | (c1 >> 3));
  const uint8_t b1 = uint8_t(((c1 & 7) << 5) | c2);
  const uint8_t b2 = uint8_t((hex_digit(id[3], id) << 4) | hex_digit(id[4], id));
  const uint8_t b3 = uint8_t((hex_digit(id[5], id) << 4) | hex_digit(id[6], id));
  return {kDWordPrefix, b0, b1, b2, b3};
}

Bytes package(const std::vector<Bytes>& elements) {
  if (elements.size() > 255) throw Error("AML Package with more than 255 elements");
  Bytes body{uint8_t(elements.size())};
  append(body, concat(elements));
  return with_length({kPackageOp}, body);
}

Bytes buffer(const Bytes& data) {
  Bytes body = integer(data.size());
  append(body, data);
  return with_length({kBufferOp}, body);
}

Bytes name(std::string_view path, const Bytes& value) {
  Bytes out{kNameOp};
  append(out, name_string(path));
  append(out, value);
  return out;
}

Bytes scope(std::string_view path, const std::vector<Bytes>& terms) {
  Bytes body = name_string(path);
  append(body, concat(terms));
  return with_length({kScopeOp}, body);
}

Bytes device(std::string_view path, const std::vector<Bytes>& terms) {
  Bytes body = name_string(path);
  append(body, concat(terms));
  return with_length({kExtOpPrefix, kDeviceOp}, body);
}

Bytes method(std::string_view path, uint8_t arg_count, bool serialized,
             const std::vector<Bytes>& terms) {
  if (arg_count > 7) throw Error("AML methods take at most 7 arguments");
  Bytes body = name_string(path);
  body.push_back(uint8_t(arg_count | (serialized ? 0x08 : 0)));
  append(body, concat(terms));
  return with_length({kMethodOp}, body);
}

Bytes return_value(const Bytes& value) {
  Bytes out{kReturnOp};
  append(out, value);
  return out;
}

// --- resource descriptors (ACPI 6.x, 6.4) ---

namespace {

constexpr uint8_t kGeneralFlagsProducerFixed = 0x0C;  // producer, positive decode, min+max fixed

}  // namespace

ResourceTemplate& ResourceTemplate::io(uint16_t min, uint16_t max, uint8_t alignment,
                                       uint8_t length) {
  bytes_.insert(bytes_.end(), {0x47, 0x01});  // small item IO, 7 bytes; Decode16
  put_le(bytes_, min);
  put_le(bytes_, max);
  bytes_.push_back(alignment);
  bytes_.push_back(length);
  return *this;
}

ResourceTemplate& ResourceTemplate::irq(uint8_t irq) {
  if (irq > 15) throw Error(fmt::format("IRQ descriptor for IRQ {} (ISA IRQs are 0-15)", irq));
  bytes_.push_back(0x22);  // small item IRQ, 2 bytes: no flags byte = edge, high, exclusive
  put_le<uint16_t>(bytes_, uint16_t(1u << irq));
  return *this;
}

ResourceTemplate& ResourceTemplate::word_bus_number(uint16_t min, uint16_t max) {
  if (max < min) throw Error("WordBusNumber with max < min");
  bytes_.insert(bytes_.end(), {0x88, 0x0D, 0x00, 0x02, kGeneralFlagsProducerFixed, 0x00});
  for (uint16_t v : {uint16_t(0), min, max, uint16_t(0), uint16_t(max - min + 1)}) put_le(bytes_, v);
  return *this;
}

ResourceTemplate& ResourceTemplate::word_io(uint16_t min, uint16_t max) {
  if (max < min) throw Error("WordIO with max < min");
  // Type-specific flags 0x03: EntireRange (ISA and non-ISA ports).
  bytes_.insert(bytes_.end(), {0x88, 0x0D, 0x00, 0x01, kGeneralFlagsProducerFixed, 0x03});
  for (uint16_t v : {uint16_t(0), min, max, uint16_t(0), uint16_t(max - min + 1)}) put_le(bytes_, v);
  return *this;
}

ResourceTemplate& ResourceTemplate::dword_memory(uint32_t min, uint32_t max, bool cacheable) {
  if (max < min) throw Error("DWordMemory with max < min");
  // Type-specific flags: read/write (bit 0), cacheable (bits 1-2: 1 = cacheable).
  const uint8_t flags = uint8_t(0x01 | (cacheable ? 0x02 : 0x00));
  bytes_.insert(bytes_.end(), {0x87, 0x17, 0x00, 0x00, kGeneralFlagsProducerFixed, flags});
  for (uint32_t v : {uint32_t(0), min, max, uint32_t(0), uint32_t(max - min + 1)}) put_le(bytes_, v);
  return *this;
}

ResourceTemplate& ResourceTemplate::qword_memory(uint64_t min, uint64_t max, bool cacheable) {
  if (max < min) throw Error("QWordMemory with max < min");
  const uint8_t flags = uint8_t(0x01 | (cacheable ? 0x02 : 0x00));
  bytes_.insert(bytes_.end(), {0x8A, 0x2B, 0x00, 0x00, kGeneralFlagsProducerFixed, flags});
  for (uint64_t v : {uint64_t(0), min, max, uint64_t(0), uint64_t(max - min + 1)}) put_le(bytes_, v);
  return *this;
}

Bytes ResourceTemplate::build() const {
  Bytes data = bytes_;
  data.insert(data.end(), {0x79, 0x00});  // End Tag; checksum 0 = "treat as correct"
  return buffer(data);
}

}  // namespace keel::x86::acpi::aml
