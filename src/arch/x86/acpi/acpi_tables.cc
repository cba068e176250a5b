#include "arch/x86/acpi/acpi_tables.h"

#include <fmt/format.h>

#include <cstring>

#include "base/error.h"
#include "devices/legacy/acpi_pm.h"

namespace keel::x86::acpi {

namespace {

constexpr size_t kHeaderSize = 36;
constexpr char kOemId[] = "KEEL  ";      // 6 characters
constexpr char kOemTableId[] = "KEELVM  ";  // 8 characters
constexpr uint32_t kOemRevision = 1;
constexpr char kCreatorId[] = "KEEL";
constexpr uint32_t kCreatorRevision = 1;

constexpr uint8_t kFadtRevision = 6;   // ACPI 6.0
constexpr size_t kFadtSize = 276;
constexpr uint8_t kMadtRevision = 4;   // ACPI 6.0
constexpr uint8_t kDsdtRevision = 2;   // 64-bit AML integers
constexpr uint8_t kXsdtRevision = 1;
constexpr size_t kFacsSize = 64;

// Little-endian writes into a zero-filled table at fixed offsets.
template <typename T>
void put(std::vector<uint8_t>& t, size_t offset, T v) {
  if (t.size() < offset + sizeof(T)) t.resize(offset + sizeof(T), 0);
  for (size_t i = 0; i < sizeof(T); ++i) t[offset + i] = uint8_t(uint64_t(v) >> (8 * i));
}

void put_chars(std::vector<uint8_t>& t, size_t offset, const char* s, size_t n) {
  if (t.size() < offset + n) t.resize(offset + n, 0);
  std::memcpy(t.data() + offset, s, n);
}

std::vector<uint8_t> header(const char (&signature)[5], uint8_t revision) {
  std::vector<uint8_t> t(kHeaderSize, 0);
  put_chars(t, 0, signature, 4);
  t[8] = revision;
  put_chars(t, 10, kOemId, 6);
  put_chars(t, 16, kOemTableId, 8);
  put<uint32_t>(t, 24, kOemRevision);
  put_chars(t, 28, kCreatorId, 4);
  put<uint32_t>(t, 32, kCreatorRevision);
  return t;
}

// Sets the length and the checksum (offset 9) once the table is complete.
std::vector<uint8_t> finish(std::vector<uint8_t> t) {
  put<uint32_t>(t, 4, uint32_t(t.size()));
  t[9] = 0;
  t[9] = uint8_t(-byte_sum(t));
  return t;
}

// Generic Address Structure (ACPI 6.x, 5.2.3.2) for a port-I/O register.
constexpr uint8_t kSystemIo = 1;
constexpr uint8_t kAccessByte = 1;
constexpr uint8_t kAccessWord = 2;
void put_gas(std::vector<uint8_t>& t, size_t offset, uint8_t space, uint8_t bit_width,
             uint8_t access_size, uint64_t address) {
  put<uint8_t>(t, offset, space);
  put<uint8_t>(t, offset + 1, bit_width);
  put<uint8_t>(t, offset + 2, 0);
  put<uint8_t>(t, offset + 3, access_size);
  put<uint64_t>(t, offset + 4, address);
}

uint64_t align_up(uint64_t v, uint64_t a) { return (v + a - 1) & ~(a - 1); }

}  // namespace

uint8_t byte_sum(std::span<const uint8_t> bytes) {
  uint8_t sum = 0;
  for (uint8_t b : bytes) sum = uint8_t(sum + b);
  return sum;
}

std::vector<uint8_t> build_rsdp(uint64_t xsdt_addr) {
  std::vector<uint8_t> t(36, 0);
  put_chars(t, 0, "RSD PTR ", 8);
  put_chars(t, 9, kOemId, 6);
  t[15] = 2;                  // revision: ACPI 2.0+ (XSDT)
  put<uint32_t>(t, 16, 0);    // no RSDT
  put<uint32_t>(t, 20, 36);   // length
  put<uint64_t>(t, 24, xsdt_addr);
  t[8] = uint8_t(-byte_sum(std::span(t).first(20)));  // checksum of the ACPI 1.0 part
  t[32] = uint8_t(-byte_sum(t));                      // extended checksum of all 36 bytes
  return t;
}

std::vector<uint8_t> build_xsdt(std::span<const uint64_t> table_addrs) {
  auto t = header("XSDT", kXsdtRevision);
  for (uint64_t addr : table_addrs) put<uint64_t>(t, t.size(), addr);
  return finish(std::move(t));
}

std::vector<uint8_t> build_fadt(uint64_t dsdt_addr, uint64_t facs_addr) {
  auto t = header("FACP", kFadtRevision);
  t.resize(kFadtSize, 0);
  put<uint32_t>(t, 36, uint32_t(facs_addr));   // FIRMWARE_CTRL
  put<uint32_t>(t, 40, uint32_t(dsdt_addr));   // DSDT
  put<uint8_t>(t, 45, 0);                      // Preferred_PM_Profile: unspecified
  put<uint16_t>(t, 46, uint16_t(AcpiPm::kSciIrq));
  put<uint32_t>(t, 48, 0);                     // SMI_CMD: no SMM, always in ACPI mode
  put<uint32_t>(t, 56, AcpiPm::kPm1EventPort);    // PM1a_EVT_BLK
  put<uint32_t>(t, 64, AcpiPm::kPm1ControlPort);  // PM1a_CNT_BLK
  put<uint8_t>(t, 88, AcpiPm::kPm1EventLength);   // PM1_EVT_LEN
  put<uint8_t>(t, 89, AcpiPm::kPm1ControlLength); // PM1_CNT_LEN
  put<uint16_t>(t, 96, 0x0FFF);                // P_LVL2_LAT > 100: no C2
  put<uint16_t>(t, 98, 0x0FFF);                // P_LVL3_LAT > 1000: no C3
  put<uint8_t>(t, 108, 0x32);                  // CENTURY: CMOS register (devices/legacy/cmos_rtc)
  // IAPC_BOOT_ARCH: LEGACY_DEVICES | 8042 | VGA Not Present.
  put<uint16_t>(t, 109, (1 << 0) | (1 << 1) | (1 << 2));
  // Flags: WBINVD | PROC_C1 | SLP_BUTTON (no fixed sleep button) | RESET_REG_SUP. PWR_BUTTON stays
  // clear: the power button is the fixed-feature one (PM1 PWRBTN_STS/EN).
  put<uint32_t>(t, 112, (1u << 0) | (1u << 2) | (1u << 5) | (1u << 10));
  put_gas(t, 116, kSystemIo, 8, kAccessByte, AcpiPm::kResetPort);  // RESET_REG
  put<uint8_t>(t, 128, AcpiPm::kResetValue);
  put<uint8_t>(t, 131, 0);                     // FADT minor version: 6.0
  put<uint64_t>(t, 132, facs_addr);            // X_FIRMWARE_CTRL
  put<uint64_t>(t, 140, dsdt_addr);            // X_DSDT
  put_gas(t, 148, kSystemIo, 8 * AcpiPm::kPm1EventLength, kAccessWord, AcpiPm::kPm1EventPort);
  put_gas(t, 172, kSystemIo, 8 * AcpiPm::kPm1ControlLength, kAccessWord, AcpiPm::kPm1ControlPort);
  put_chars(t, 268, "KEELVMM", 7);             // hypervisor vendor identity
  return finish(std::move(t));
}

std::vector<uint8_t> build_facs() {
  std::vector<uint8_t> t(kFacsSize, 0);
  put_chars(t, 0, "FACS", 4);
  put<uint32_t>(t, 4, kFacsSize);
  put<uint8_t>(t, 32, 2);  // version
  return t;                // the FACS has no checksum
}

std::vector<uint8_t> build_dsdt(const AcpiConfig& config) {
  using namespace aml;
  auto t = header("DSDT", kDsdtRevision);
  // \_S5: SLP_TYPa, SLP_TYPb, reserved, reserved. Linux writes SLP_TYPa | SLP_EN to PM1a_CNT.
  const Bytes s5 = name("\\_S5", package({integer(AcpiPm::kSlpTypS5),
                                          integer(AcpiPm::kSlpTypS5), integer(0), integer(0)}));
  const Bytes sb = scope("\\_SB", config.sb_devices);
  t.insert(t.end(), s5.begin(), s5.end());
  t.insert(t.end(), sb.begin(), sb.end());
  return finish(std::move(t));
}

std::vector<uint8_t> build_madt(uint32_t vcpus, bool irq0_to_gsi2) {
  if (vcpus == 0 || vcpus > kMaxVcpus)
    throw Error(fmt::format("MADT: {} vCPUs (keel's xAPIC tables take 1 to {})", vcpus, kMaxVcpus));
  auto t = header("APIC", kMadtRevision);
  put<uint32_t>(t, 36, uint32_t(kLocalApicAddr));
  put<uint32_t>(t, 40, 1);  // PCAT_COMPAT: dual 8259s present (masked once the IOAPIC is used)
  auto entry = [&](std::initializer_list<uint8_t> bytes) { t.insert(t.end(), bytes); };
  for (uint32_t i = 0; i < vcpus; ++i)  // Processor Local APIC: UID i, APIC id i, enabled
    entry({0, 8, uint8_t(i), uint8_t(i), 1, 0, 0, 0});
  // I/O APIC id 0 at kIoApicAddr, GSI base 0.
  entry({1, 12, 0, 0});
  put<uint32_t>(t, t.size(), uint32_t(kIoApicAddr));
  put<uint32_t>(t, t.size(), 0);
  // Interrupt source overrides: ISA IRQ0 (PIT) -> GSI 2, edge/high (bus default); ISA IRQ9 (SCI)
  // -> GSI 9, level-triggered (flags bits 2-3 = 3), active high (bits 0-1 = 1).
  if (irq0_to_gsi2) entry({2, 10, 0, 0, 2, 0, 0, 0, 0x00, 0x00});
  entry({2, 10, 0, uint8_t(AcpiPm::kSciIrq), uint8_t(AcpiPm::kSciIrq), 0, 0, 0, 0x0D, 0x00});
  // Local APIC NMI: every processor (UID 0xFF), LINT1, bus-default polarity and trigger.
  entry({4, 6, 0xFF, 0x00, 0x00, 1});
  return finish(std::move(t));
}

AcpiTables write_acpi_tables(GuestMemory& memory, const AcpiConfig& config) {
  const auto madt = build_madt(config.vcpus, config.irq0_to_gsi2);
  const auto dsdt = build_dsdt(config);
  const auto facs = build_facs();

  // Fixed order; every table 64-byte aligned (the FACS must be).
  const uint64_t xsdt_addr = align_up(kRsdpAddr + 36, 64);
  const uint64_t fadt_addr = align_up(xsdt_addr + kHeaderSize + 2 * 8, 64);
  const uint64_t facs_addr = align_up(fadt_addr + kFadtSize, 64);
  const uint64_t madt_addr = align_up(facs_addr + facs.size(), 64);
  const uint64_t dsdt_addr = align_up(madt_addr + madt.size(), 64);
  const uint64_t end = dsdt_addr + dsdt.size();
  if (end > kTablesEnd)
    throw Error(fmt::format("ACPI tables need [{:#x}, {:#x}), more than the {} KiB below 1 MiB "
                            "keel reserves for them (DSDT is {} bytes)",
                            kRsdpAddr, end, (kTablesEnd - kRsdpAddr) / 1024, dsdt.size()));

  const auto fadt = build_fadt(dsdt_addr, facs_addr);
  const uint64_t xsdt_entries[] = {fadt_addr, madt_addr};
  const auto xsdt = build_xsdt(xsdt_entries);
  const auto rsdp = build_rsdp(xsdt_addr);

  // Clear the whole area first so nothing stale survives between tables.
  auto area = memory.write_span(kRsdpAddr, kTablesEnd - kRsdpAddr);
  std::fill(area.begin(), area.end(), 0);
  AcpiTables out;
  out.rsdp = kRsdpAddr;
  auto place = [&](const char* sig, uint64_t addr, const std::vector<uint8_t>& bytes) {
    memory.write(addr, bytes.data(), bytes.size());
    out.tables.push_back({sig, addr, bytes.size()});
  };
  place("RSDP", kRsdpAddr, rsdp);
  place("XSDT", xsdt_addr, xsdt);
  place("FACP", fadt_addr, fadt);
  place("FACS", facs_addr, facs);
  place("APIC", madt_addr, madt);
  place("DSDT", dsdt_addr, dsdt);
  return out;
}

}  // namespace keel::x86::acpi
