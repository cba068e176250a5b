// A small AML (ACPI Machine Language) builder: each function returns the encoded bytes of one
// term (ACPI 6.x, chapter 20), so DSDT content reads like the ASL it stands for:
//
//   using namespace keel::x86::acpi::aml;
//   scope("\\_SB", {
//       device("PCI0", {
//           name("_HID", eisa_id("PNP0A03")),
//           name("_CRS", ResourceTemplate().word_bus_number(0, 255).io(0xCF8, 0xCF8, 1, 8).build()),
//       }),
//   });
//
// Names are validated (1-4 characters, [A-Z_][A-Z0-9_]*, padded with '_'); an invalid name or a
// term too large for its encoding throws keel::Error. Only what keel's tables need is here; add
// opcodes as devices need them (each with a test in tests/unit/acpi_aml_test.cc).
#pragma once

#include <cstdint>
#include <string_view>
#include <vector>

namespace keel::x86::acpi::aml {

using Bytes = std::vector<uint8_t>;

// PkgLength for a body of `body_size` bytes (the encoding counts its own bytes).
Bytes pkg_length(size_t body_size);

// A NameString: "_S5", "PCI0", "\\_SB.PCI0", "^FOO", "\\" (the root).
Bytes name_string(std::string_view path);

// Data objects.
Bytes integer(uint64_t value);          // Zero, One, or the shortest Byte/Word/DWord/QWord const
Bytes string(std::string_view text);    // ASCII, NUL-terminated
Bytes eisa_id(std::string_view id);     // "PNP0A03" -> compressed EISA id (a DWord const)
Bytes package(const std::vector<Bytes>& elements);
Bytes buffer(const Bytes& data);

// Named objects and scopes.
Bytes name(std::string_view path, const Bytes& value);
Bytes scope(std::string_view path, const std::vector<Bytes>& terms);
Bytes device(std::string_view path, const std::vector<Bytes>& terms);
Bytes method(std::string_view path, uint8_t arg_count, bool serialized,
             const std::vector<Bytes>& terms);

// Statements.
Bytes return_value(const Bytes& value);

// A resource template (the byte buffer _CRS returns), ended by an End Tag.
class ResourceTemplate {
 public:
  // IO (Decode16, min, max, alignment, length).
  ResourceTemplate& io(uint16_t min, uint16_t max, uint8_t alignment, uint8_t length);
  // IRQNoFlags () {irq}: edge-triggered, active-high, exclusive ISA interrupt.
  ResourceTemplate& irq(uint8_t irq);
  // Producer ranges of a host bridge (ResourceProducer, MinFixed, MaxFixed, PosDecode).
  ResourceTemplate& word_bus_number(uint16_t min, uint16_t max);
  ResourceTemplate& word_io(uint16_t min, uint16_t max);
  ResourceTemplate& dword_memory(uint32_t min, uint32_t max, bool cacheable);
  ResourceTemplate& qword_memory(uint64_t min, uint64_t max, bool cacheable);
  // The descriptors + End Tag, wrapped in a Buffer object.
  Bytes build() const;

 private:
  Bytes bytes_;
};

}  // namespace keel::x86::acpi::aml
