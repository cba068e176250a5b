#include "arch/x86/acpi/aml.h"

#include <gtest/gtest.h>

#include "arch/x86/acpi/acpi_tables.h"
#include "base/error.h"
#include "iasl.h"

namespace keel::x86::acpi::aml {
namespace {

using B = Bytes;

TEST(AmlBuilder, PkgLengthPicksTheShortestEncodingThatCountsItself) {
  EXPECT_EQ(pkg_length(0), B({0x01}));
  EXPECT_EQ(pkg_length(62), B({0x3F}));              // 63 total: the 1-byte maximum
  EXPECT_EQ(pkg_length(63), B({0x41, 0x04}));        // 65 = 0x041
  EXPECT_EQ(pkg_length(0xFFD), B({0x4F, 0xFF}));     // 0xFFF total: the 2-byte maximum
  EXPECT_EQ(pkg_length(0xFFE), B({0x81, 0x00, 0x01}));  // 0x1001
  EXPECT_EQ(pkg_length(0xFFFFC), B({0x8F, 0xFF, 0xFF}));
  EXPECT_EQ(pkg_length(0xFFFFD), B({0xC1, 0x00, 0x00, 0x01}));
  EXPECT_THROW(pkg_length(0x1000'0000), Error);
}

TEST(AmlBuilder, NameStrings) {
  EXPECT_EQ(name_string("_S5"), B({'_', 'S', '5', '_'}));
  EXPECT_EQ(name_string("PCI0"), B({'P', 'C', 'I', '0'}));
  EXPECT_EQ(name_string("\\_SB"), B({'\\', '_', 'S', 'B', '_'}));
  EXPECT_EQ(name_string("\\_SB.PCI0"),
            B({'\\', 0x2E, '_', 'S', 'B', '_', 'P', 'C', 'I', '0'}));
  EXPECT_EQ(name_string("\\_SB.PCI0.S08"),
            B({'\\', 0x2F, 3, '_', 'S', 'B', '_', 'P', 'C', 'I', '0', 'S', '0', '8', '_'}));
  EXPECT_EQ(name_string("^^FOO"), B({'^', '^', 'F', 'O', 'O', '_'}));
  EXPECT_EQ(name_string("\\"), B({'\\', 0x00}));
  for (const char* bad : {"", "TOOLONG", "0ABC", "pci0", "A..B", "A.", ".A", "A-B", "\\_SB."})
    EXPECT_THROW(name_string(bad), Error) << bad;
}

TEST(AmlBuilder, Integers) {
  EXPECT_EQ(integer(0), B({0x00}));
  EXPECT_EQ(integer(1), B({0x01}));
  EXPECT_EQ(integer(5), B({0x0A, 0x05}));
  EXPECT_EQ(integer(0x1234), B({0x0B, 0x34, 0x12}));
  EXPECT_EQ(integer(0xFEC00000), B({0x0C, 0x00, 0x00, 0xC0, 0xFE}));
  EXPECT_EQ(integer(0x1'0000'0000), B({0x0E, 0, 0, 0, 0, 1, 0, 0, 0}));
}

TEST(AmlBuilder, StringsEisaIdsPackagesBuffers) {
  EXPECT_EQ(string("ab"), B({0x0D, 'a', 'b', 0}));
  EXPECT_THROW(string(std::string_view("a\0b", 3)), Error);
  EXPECT_EQ(eisa_id("PNP0A03"), B({0x0C, 0x41, 0xD0, 0x0A, 0x03}));
  EXPECT_EQ(eisa_id("PNP0C0C"), B({0x0C, 0x41, 0xD0, 0x0C, 0x0C}));
  EXPECT_THROW(eisa_id("PNP0A0"), Error);
  EXPECT_THROW(eisa_id("pnp0A03"), Error);
  EXPECT_THROW(eisa_id("PNP0A0G"), Error);
  // Package (2) {5, Zero}: op, PkgLength, count, elements.
  EXPECT_EQ(package({integer(5), integer(0)}), B({0x12, 0x05, 0x02, 0x0A, 0x05, 0x00}));
  // Buffer (2) {0xAA, 0xBB}: op, PkgLength, BufferSize, bytes.
  EXPECT_EQ(buffer({0xAA, 0xBB}), B({0x11, 0x05, 0x0A, 0x02, 0xAA, 0xBB}));
}

TEST(AmlBuilder, NamedObjectsAndMethods) {
  EXPECT_EQ(name("_UID", integer(0)), B({0x08, '_', 'U', 'I', 'D', 0x00}));
  EXPECT_EQ(scope("\\_SB", {}), B({0x10, 0x06, '\\', '_', 'S', 'B', '_'}));
  EXPECT_EQ(device("PWRB", {}), B({0x5B, 0x82, 0x05, 'P', 'W', 'R', 'B'}));
  // Method (_STA, 0, NotSerialized) { Return (0x0F) }
  EXPECT_EQ(method("_STA", 0, false, {return_value(integer(0x0F))}),
            B({0x14, 0x09, '_', 'S', 'T', 'A', 0x00, 0xA4, 0x0A, 0x0F}));
  EXPECT_EQ(method("M1", 2, true, {})[6], 0x0A);  // 2 args | Serialized
  EXPECT_THROW(method("M1", 8, false, {}), Error);
}

TEST(AmlBuilder, ResourceTemplateDescriptors) {
  const B crs = ResourceTemplate().io(0x3F8, 0x3F8, 1, 8).irq(4).build();
  // Buffer op, PkgLength, BufferSize (13), IO descriptor, IRQNoFlags, End Tag.
  EXPECT_EQ(crs, B({0x11, 0x10, 0x0A, 0x0D, 0x47, 0x01, 0xF8, 0x03, 0xF8, 0x03, 0x01, 0x08, 0x22,
                    0x10, 0x00, 0x79, 0x00}));
  EXPECT_THROW(ResourceTemplate().irq(16), Error);
  EXPECT_THROW(ResourceTemplate().word_io(2, 1), Error);
}

// A DSDT using every builder function must disassemble and recompile cleanly with iasl.
TEST(AmlBuilder, DsdtWithEveryConstructPassesIasl) {
  if (!testing::have_iasl()) GTEST_SKIP() << "iasl (acpica-tools) is not installed";
  AcpiConfig config;
  config.sb_devices.push_back(device(
      "PCI0", {name("_HID", eisa_id("PNP0A03")), name("_UID", integer(0)),
               name("_CRS", ResourceTemplate()
                                .word_bus_number(0, 0xFF)
                                .io(0xCF8, 0xCF8, 1, 8)
                                .word_io(0x0000, 0x0CF7)
                                .word_io(0x0D00, 0xFFFF)
                                .dword_memory(0xC000'0000, 0xFEBF'FFFF, false)
                                .qword_memory(0x80'0000'0000, 0x8F'FFFF'FFFF, false)
                                .build())}));
  config.sb_devices.push_back(device(
      "COM1", {name("_HID", eisa_id("PNP0501")), name("_UID", integer(1)),
               name("_DDN", string("keel serial")),
               method("_STA", 0, false, {return_value(integer(0x0F))}),
               name("_CRS", ResourceTemplate().io(0x3F8, 0x3F8, 1, 8).irq(4).build())}));
  const auto r = testing::iasl_check("dsdt", build_dsdt(config));
  EXPECT_EQ(r.problems, "");
  for (const char* want : {"Device (PCI0)", "EisaId (\"PNP0A03\")", "WordBusNumber", "0xFEBFFFFF",
                           "QWordMemory", "0x0000008FFFFFFFFF", "Device (COM1)", "\"keel serial\"",
                           "Method (_STA, 0, NotSerialized)", "Return (0x0F)", "IRQNoFlags ()",
                           "{4}", "Name (\\_S5, Package (0x04)"})
    EXPECT_NE(r.dsl.find(want), std::string::npos) << want << "\n" << r.dsl;
}

}  // namespace
}  // namespace keel::x86::acpi::aml
