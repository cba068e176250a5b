#include "devices/pci/pci_acpi.h"

#include <initializer_list>

#include "base/error.h"
#include "devices/pci/pci_bus.h"
#include "devices/pci/pci_device.h"

namespace keel {

namespace {

void put16(std::vector<uint8_t>& v, uint16_t x) {
  v.push_back(x & 0xff);
  v.push_back(x >> 8);
}
void put32(std::vector<uint8_t>& v, uint32_t x) {
  for (int i = 0; i < 4; ++i) v.push_back(static_cast<uint8_t>(x >> (8 * i)));
}

// AML PkgLength (ACPI 6.x, 20.2.4) covering `body` plus the encoding itself.
std::vector<uint8_t> with_pkg_length(const std::vector<uint8_t>& body) {
  size_t n = body.size();
  std::vector<uint8_t> out;
  if (n + 1 < 64) {
    out.push_back(static_cast<uint8_t>(n + 1));
  } else if (n + 2 < 4096) {
    size_t len = n + 2;
    out.push_back(static_cast<uint8_t>(0x40 | (len & 0xf)));
    out.push_back(static_cast<uint8_t>(len >> 4));
  } else {
    throw Error("AML package too large");
  }
  out.insert(out.end(), body.begin(), body.end());
  return out;
}

void name_seg(std::vector<uint8_t>& v, const char (&seg)[5]) { v.insert(v.end(), seg, seg + 4); }

// Word address space descriptor (ACPI 6.x, 6.4.3.5.3): producer, min/max fixed.
void word_space(std::vector<uint8_t>& v, uint8_t type, uint8_t type_flags, uint16_t min,
                uint16_t max) {
  v.insert(v.end(), {0x88, 0x0d, 0x00, type, 0x0c, type_flags});
  put16(v, 0);  // granularity
  put16(v, min);
  put16(v, max);
  put16(v, 0);  // translation
  put16(v, static_cast<uint16_t>(max - min + 1));
}

}  // namespace

std::vector<uint8_t> pci_root_bridge_aml() {
  std::vector<uint8_t> crs;
  word_space(crs, 0x02, 0x00, 0x00, 0xff);                       // bus numbers 0-255
  crs.insert(crs.end(), {0x47, 0x01, 0xf8, 0x0c, 0xf8, 0x0c, 0x01, 0x08});  // IO 0xCF8, 8 ports
  word_space(crs, 0x01, 0x03, 0x0000, 0x0cf7);                   // I/O below the config ports
  word_space(crs, 0x01, 0x03, 0x0d00, 0xffff);                   // I/O above them
  // DWord memory descriptor: the BAR window, read/write, non-cacheable.
  crs.insert(crs.end(), {0x87, 0x17, 0x00, 0x00, 0x0c, 0x01});
  put32(crs, 0);
  put32(crs, static_cast<uint32_t>(kPciMmioWindowBase));
  put32(crs, static_cast<uint32_t>(kPciMmioWindowEnd - 1));
  put32(crs, 0);
  put32(crs, static_cast<uint32_t>(kPciMmioWindowEnd - kPciMmioWindowBase));
  crs.insert(crs.end(), {0x79, 0x00});  // end tag

  std::vector<uint8_t> buffer_body = {0x0a, static_cast<uint8_t>(crs.size())};  // BufferSize
  buffer_body.insert(buffer_body.end(), crs.begin(), crs.end());

  std::vector<uint8_t> dev;
  name_seg(dev, "PCI0");
  dev.push_back(0x08);  // Name (_HID, EisaId ("PNP0A03"))
  name_seg(dev, "_HID");
  dev.insert(dev.end(), {0x0c, 0x41, 0xd0, 0x0a, 0x03});
  dev.push_back(0x08);  // Name (_UID, Zero)
  name_seg(dev, "_UID");
  dev.push_back(0x00);
  dev.push_back(0x08);  // Name (_ADR, Zero)
  name_seg(dev, "_ADR");
  dev.push_back(0x00);
  dev.push_back(0x08);  // Name (_CRS, Buffer)
  name_seg(dev, "_CRS");
  dev.push_back(0x11);
  auto buf = with_pkg_length(buffer_body);
  dev.insert(dev.end(), buf.begin(), buf.end());

  std::vector<uint8_t> out = {0x5b, 0x82};  // DeviceOp
  auto body = with_pkg_length(dev);
  out.insert(out.end(), body.begin(), body.end());
  return out;
}

}  // namespace keel
