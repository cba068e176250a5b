#include "arch/x86/acpi/acpi_tables.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cstring>

#include "base/error.h"
#include "boot/memory_map.h"
#include "devices/legacy/acpi_pm.h"
#include "iasl.h"

namespace keel::x86::acpi {
namespace {

using ::testing::HasSubstr;

template <typename T>
T get(const std::vector<uint8_t>& t, size_t offset) {
  T v;
  std::memcpy(&v, t.data() + offset, sizeof v);
  return v;
}

std::vector<uint8_t> read_table(const GuestMemory& mem, uint64_t gpa) {
  const auto len = mem.read_obj<uint32_t>(gpa + 4);
  std::vector<uint8_t> t(len);
  mem.read(gpa, t.data(), len);
  return t;
}

size_t count(const std::string& text, const std::string& what) {
  size_t n = 0;
  for (size_t at = text.find(what); at != std::string::npos; at = text.find(what, at + 1)) ++n;
  return n;
}

// --- structure and checksums in guest memory ------------------------------------------------

TEST(AcpiTables, WrittenTablesLinkUpAndChecksum) {
  GuestMemory mem(64 << 20);
  const auto tables = write_acpi_tables(mem, {.vcpus = 4, .sb_devices = {}});
  ASSERT_EQ(tables.rsdp, kRsdpAddr);

  std::vector<uint8_t> rsdp(36);
  mem.read(kRsdpAddr, rsdp.data(), 36);
  EXPECT_EQ(std::string(rsdp.begin(), rsdp.begin() + 8), "RSD PTR ");
  EXPECT_EQ(rsdp[15], 2);  // ACPI 2.0+
  EXPECT_EQ(byte_sum(std::span(rsdp).first(20)), 0);
  EXPECT_EQ(byte_sum(rsdp), 0);
  EXPECT_EQ(get<uint32_t>(rsdp, 20), 36u);

  const auto xsdt = read_table(mem, get<uint64_t>(rsdp, 24));
  EXPECT_EQ(std::string(xsdt.begin(), xsdt.begin() + 4), "XSDT");
  EXPECT_EQ(byte_sum(xsdt), 0);
  ASSERT_EQ(xsdt.size(), 36u + 2 * 8);
  const auto fadt = read_table(mem, get<uint64_t>(xsdt, 36));
  const auto madt = read_table(mem, get<uint64_t>(xsdt, 44));
  EXPECT_EQ(std::string(fadt.begin(), fadt.begin() + 4), "FACP");
  EXPECT_EQ(std::string(madt.begin(), madt.begin() + 4), "APIC");
  EXPECT_EQ(byte_sum(fadt), 0);
  EXPECT_EQ(byte_sum(madt), 0);
  EXPECT_EQ(fadt[8], 6);  // FADT revision 6
  EXPECT_EQ(fadt.size(), 276u);

  // FADT -> DSDT and FACS (32- and 64-bit fields agree).
  EXPECT_EQ(get<uint32_t>(fadt, 40), get<uint64_t>(fadt, 140));
  EXPECT_EQ(get<uint32_t>(fadt, 36), get<uint64_t>(fadt, 132));
  const auto dsdt = read_table(mem, get<uint64_t>(fadt, 140));
  EXPECT_EQ(std::string(dsdt.begin(), dsdt.begin() + 4), "DSDT");
  EXPECT_EQ(byte_sum(dsdt), 0);
  const uint64_t facs = get<uint64_t>(fadt, 132);
  EXPECT_EQ(facs % 64, 0u);
  EXPECT_EQ(mem.read_obj<uint32_t>(facs), 0x53434146u);  // "FACS"

  // The FADT's PM registers are AcpiPm's ports; SCI is IRQ 9; reset writes 1 to the reset port.
  EXPECT_EQ(get<uint16_t>(fadt, 46), AcpiPm::kSciIrq);
  EXPECT_EQ(get<uint32_t>(fadt, 56), AcpiPm::kPm1EventPort);
  EXPECT_EQ(get<uint32_t>(fadt, 64), AcpiPm::kPm1ControlPort);
  EXPECT_EQ(get<uint64_t>(fadt, 116 + 4), AcpiPm::kResetPort);
  EXPECT_EQ(fadt[128], AcpiPm::kResetValue);
  EXPECT_TRUE(get<uint32_t>(fadt, 112) & (1u << 10));  // RESET_REG_SUP
  EXPECT_FALSE(get<uint32_t>(fadt, 112) & (1u << 4));  // fixed-feature power button

  // Every table inside the reserved area, none overlapping.
  uint64_t prev_end = 0;
  for (const auto& t : tables.tables) {
    EXPECT_GE(t.gpa, prev_end) << t.signature;
    EXPECT_GE(t.gpa, kRsdpAddr);
    EXPECT_LE(t.gpa + t.size, kTablesEnd);
    prev_end = t.gpa + t.size;
  }
  EXPECT_GE(kRsdpAddr, boot::kLowReservedStart);
  EXPECT_LE(kTablesEnd, boot::kLowReservedEnd);
}

TEST(AcpiTables, MadtHasOneLocalApicPerVcpuTheIoApicAndOverrides) {
  const auto madt = build_madt(3);
  EXPECT_EQ(byte_sum(madt), 0);
  EXPECT_EQ(get<uint32_t>(madt, 36), kLocalApicAddr);
  std::vector<int> apic_ids;
  int ioapics = 0, overrides = 0;
  for (size_t at = 44; at < madt.size(); at += madt[at + 1]) {
    ASSERT_GE(madt[at + 1], 2);
    switch (madt[at]) {
      case 0:
        apic_ids.push_back(madt[at + 3]);
        EXPECT_EQ(get<uint32_t>(madt, at + 4), 1u);  // enabled
        break;
      case 1:
        ++ioapics;
        EXPECT_EQ(get<uint32_t>(madt, at + 4), kIoApicAddr);
        EXPECT_EQ(get<uint32_t>(madt, at + 8), 0u);  // GSI base
        break;
      case 2: {
        ++overrides;
        const uint8_t irq = madt[at + 3];
        const uint32_t gsi = get<uint32_t>(madt, at + 4);
        const uint16_t flags = get<uint16_t>(madt, at + 8);
        if (irq == 0) {
          EXPECT_EQ(gsi, 2u);
        }
        if (irq == 9) {
          EXPECT_EQ(gsi, 9u);
          EXPECT_EQ(flags & 3, 1);         // active high
          EXPECT_EQ((flags >> 2) & 3, 3);  // level
        }
        break;
      }
    }
  }
  EXPECT_EQ(apic_ids, (std::vector<int>{0, 1, 2}));
  EXPECT_EQ(ioapics, 1);
  EXPECT_EQ(overrides, 2);
}

TEST(AcpiTables, Irq0OverrideCanBeLeftOut) {
  const auto madt = build_madt(1, /*irq0_to_gsi2=*/false);
  EXPECT_EQ(byte_sum(madt), 0);
  std::vector<int> overridden;
  for (size_t at = 44; at < madt.size(); at += madt[at + 1])
    if (madt[at] == 2) overridden.push_back(madt[at + 3]);
  EXPECT_EQ(overridden, std::vector<int>{9});
  EXPECT_EQ(build_madt(1).size(), madt.size() + 10);
}

TEST(AcpiTables, RefusesBadVcpuCountsAndOversizedDsdt) {
  GuestMemory mem(64 << 20);
  EXPECT_THROW(write_acpi_tables(mem, {.vcpus = 0, .sb_devices = {}}), Error);
  EXPECT_THAT([&] { write_acpi_tables(mem, {.vcpus = kMaxVcpus + 1, .sb_devices = {}}); },
              ::testing::ThrowsMessage<Error>(HasSubstr("vCPUs")));
  EXPECT_NO_THROW(write_acpi_tables(mem, {.vcpus = kMaxVcpus, .sb_devices = {}}));
  AcpiConfig huge;
  huge.sb_devices.push_back(aml::name("BIG", aml::buffer(aml::Bytes(200 * 1024, 0))));
  EXPECT_THAT([&] { write_acpi_tables(mem, huge); },
              ::testing::ThrowsMessage<Error>(HasSubstr("ACPI tables need")));
}

TEST(AcpiTables, RamTooSmallForTheTableAreaIsAnError) {
  GuestMemory mem(512 << 10);  // ends below 0xE0000
  EXPECT_THROW(write_acpi_tables(mem, {.vcpus = 1, .sb_devices = {}}), GuestMemoryError);
}

// --- iasl ---------------------------------------------------------------------------------

class AcpiIasl : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!testing::have_iasl()) GTEST_SKIP() << "iasl (acpica-tools) is not installed";
  }
};

TEST_F(AcpiIasl, FadtDisassemblesCleanly) {
  const auto r = testing::iasl_check("facp", build_fadt(0xE0400, 0xE0200));
  EXPECT_EQ(r.problems, "");
  for (const char* want : {"Revision : 06", "SCI Interrupt : 0009",
                           "PM1A Event Block Address : 00000600",
                           "PM1A Control Block Address : 00000604",
                           "Reset Register Supported (V2) : 1", "Value to cause reset : 01",
                           "DSDT Address : 00000000000E0400", "FACS Address : 00000000000E0200",
                           "Control Method Power Button (V1) : 0", "8042 Present on ports 60/64 (V2) : 1"})
    EXPECT_NE(r.dsl.find(want), std::string::npos) << want << "\n" << r.dsl;
}

TEST_F(AcpiIasl, MadtDisassemblesCleanly) {
  for (uint32_t vcpus : {1u, 2u, 8u}) {
    const auto r = testing::iasl_check("apic", build_madt(vcpus));
    EXPECT_EQ(r.problems, "") << vcpus << " vCPUs";
    EXPECT_EQ(count(r.dsl, "[Processor Local APIC]"), vcpus);
    EXPECT_EQ(count(r.dsl, "[I/O APIC]"), 1u);
    EXPECT_EQ(count(r.dsl, "[Interrupt Source Override]"), 2u);
    EXPECT_EQ(count(r.dsl, "[Local APIC NMI]"), 1u);
  }
}

TEST_F(AcpiIasl, DsdtFacsAndXsdtDisassembleCleanly) {
  auto r = testing::iasl_check("dsdt", build_dsdt({}));
  EXPECT_EQ(r.problems, "");
  EXPECT_NE(r.dsl.find("Name (\\_S5, Package (0x04)"), std::string::npos) << r.dsl;
  EXPECT_NE(r.dsl.find("0x05"), std::string::npos) << r.dsl;
  r = testing::iasl_check("facs", build_facs());
  EXPECT_EQ(r.problems, "");
  const uint64_t addrs[] = {0xE0080, 0xE0200};
  r = testing::iasl_check("xsdt", build_xsdt(addrs));
  EXPECT_EQ(r.problems, "");
  EXPECT_NE(r.dsl.find("00000000000E0200"), std::string::npos) << r.dsl;
}

// Every table exactly as write_acpi_tables() leaves it in guest memory. (iasl cannot take an RSDP
// on its own; its checksums and links are checked above.)
TEST_F(AcpiIasl, TablesInGuestMemoryDisassembleCleanly) {
  GuestMemory mem(64 << 20);
  const auto tables = write_acpi_tables(mem, {.vcpus = 2, .sb_devices = {}});
  int checked = 0;
  for (const auto& t : tables.tables) {
    if (t.signature == "RSDP") continue;
    std::vector<uint8_t> bytes(t.size);
    mem.read(t.gpa, bytes.data(), t.size);
    std::string stem = t.signature;
    for (auto& c : stem) c = char(std::tolower(c));
    EXPECT_EQ(testing::iasl_check(stem, bytes).problems, "") << t.signature;
    ++checked;
  }
  EXPECT_EQ(checked, 5);
}

// The harness itself must catch problems, or the tests above prove nothing.
TEST_F(AcpiIasl, HarnessReportsABadChecksum) {
  auto fadt = build_fadt(0xE0400, 0xE0200);
  fadt[9] ^= 0x55;
  EXPECT_THAT(testing::iasl_check("facp", fadt).problems, HasSubstr("Incorrect checksum"));
}

}  // namespace
}  // namespace keel::x86::acpi
