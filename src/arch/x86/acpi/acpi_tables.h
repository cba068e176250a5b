// ACPI tables for direct Linux boot, written into guest memory below 1 MiB:
//
//   0xE0000  RSDP (ACPI 2.0+, 36 bytes) -> XSDT; also found by the kernel's legacy 0xE0000-0xFFFFF
//            scan, and passed in the zero page (boot_params.acpi_rsdp_addr)
//   then, 64-byte aligned, up to 0x100000:
//            XSDT -> FADT, MADT
//            FADT (revision 6): PM1a event/control blocks and RESET_REG in port I/O
//                   (devices/legacy/acpi_pm.h), SCI on IRQ 9, no SMM, DSDT, FACS
//            FACS
//            DSDT: \_S5 (so `poweroff` reaches AcpiPm) and Scope (\_SB) with the devices the
//                  machine passes in (the PCI0 host bridge from devices/pci/pci_acpi.h, ...)
//            MADT: one local APIC per vCPU (APIC id = index), the IOAPIC at 0xFEC00000 with GSI
//                  base 0, ISA overrides IRQ0 -> GSI2 (AcpiConfig::irq0_to_gsi2) and IRQ9
//                  level/active-high, LINT1 = NMI
//
// The area lies in the e820-reserved range [0xA0000, 0x100000) (boot/memory_map.h), so the
// kernel never reuses it as RAM.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "arch/x86/acpi/aml.h"
#include "memory/guest_memory.h"

namespace keel::x86::acpi {

inline constexpr uint64_t kRsdpAddr = 0xE0000;
inline constexpr uint64_t kTablesEnd = 0x100000;
inline constexpr uint64_t kIoApicAddr = 0xFEC0'0000;
inline constexpr uint64_t kLocalApicAddr = 0xFEE0'0000;
inline constexpr uint32_t kMaxVcpus = 255;  // xAPIC ids 0..254 (0xFF is the broadcast id)

struct AcpiConfig {
  uint32_t vcpus = 1;
  // AML terms placed inside Scope (\_SB) of the DSDT, e.g. pci_root_bridge_aml().
  std::vector<aml::Bytes> sb_devices;
  // The PC convention: the MADT overrides ISA IRQ0 (the PIT) to GSI 2, so Linux expects the timer
  // on IOAPIC pin 2. Right for emu (its PIT pulses GSI 0 and 2) and for an engine that routes the
  // PIT to pin 2 (QEMU does so with KVM); set false for an engine whose PIT reaches pin 0 (KVM's
  // default GSI routing), and the MADT then carries no IRQ0 override.
  bool irq0_to_gsi2 = true;
};

struct AcpiTable {
  std::string signature;  // "RSDP" for the RSDP, else the table's signature
  uint64_t gpa = 0;
  uint64_t size = 0;
};

struct AcpiTables {
  uint64_t rsdp = 0;                // for boot_params.acpi_rsdp_addr
  std::vector<AcpiTable> tables;    // RSDP first, then in address order
};

// Builds every table and writes them at kRsdpAddr and above. Throws Error if the configuration is
// invalid (0 or more than kMaxVcpus vCPUs, malformed AML), if the tables outgrow [kRsdpAddr,
// kTablesEnd), or (GuestMemoryError) if guest RAM does not cover that range.
AcpiTables write_acpi_tables(GuestMemory& memory, const AcpiConfig& config);

// The pieces, for tests: each returns a complete table with its checksum set.
std::vector<uint8_t> build_rsdp(uint64_t xsdt_addr);
std::vector<uint8_t> build_xsdt(std::span<const uint64_t> table_addrs);
std::vector<uint8_t> build_fadt(uint64_t dsdt_addr, uint64_t facs_addr);
std::vector<uint8_t> build_facs();
std::vector<uint8_t> build_dsdt(const AcpiConfig& config);
std::vector<uint8_t> build_madt(uint32_t vcpus, bool irq0_to_gsi2 = true);

// The 8-bit sum of `bytes` (0 for a table with a correct checksum).
uint8_t byte_sum(std::span<const uint8_t> bytes);

}  // namespace keel::x86::acpi
