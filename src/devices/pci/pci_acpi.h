// What ACPI needs so that Linux finds PCI bus 0: the AML for a PCI0 host bridge device
// (_HID PNP0A03) whose _CRS names bus 0-255, the 0xCF8 configuration ports, the I/O ranges around
// them and the MMIO window BARs are placed in. The DSDT builder (arch/x86/acpi) appends these bytes
// inside its \_SB scope. Without a PNP0A03 device an ACPI-booted Linux never scans PCI.
#pragma once

#include <cstdint>
#include <vector>

namespace keel {

// AML for `Device (PCI0) { _HID, _UID, _ADR, _CRS }`, to be placed inside Scope (\_SB).
std::vector<uint8_t> pci_root_bridge_aml();

}  // namespace keel
