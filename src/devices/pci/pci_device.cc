#include "devices/pci/pci_device.h"

#include <cstdio>
#include <cstring>

#include "base/error.h"

namespace keel {

namespace {

bool is_power_of_two(uint64_t v) { return v && !(v & (v - 1)); }

}  // namespace

PciDevice::PciDevice(const Identity& id) {
  bar_owner_.fill(-1);
  write_config_raw(pci::kVendorId, 2, id.vendor_id);
  write_config_raw(pci::kDeviceId, 2, id.device_id);
  write_config_raw(pci::kRevision, 1, id.revision);
  write_config_raw(pci::kClassCode, 1, id.class_code & 0xff);
  write_config_raw(pci::kClassCode + 1, 2, (id.class_code >> 8) & 0xffff);
  write_config_raw(pci::kSubsystemVendorId, 2, id.subsystem_vendor_id);
  write_config_raw(pci::kSubsystemId, 2, id.subsystem_id);
  write_config_raw(pci::kInterruptLine, 1, 0xff);  // not connected
  // Command: I/O, memory, bus master, INTx disable. Cache line size and latency timer are
  // plain storage; interrupt line is the firmware's scratch byte.
  wmask_[pci::kCommand] = 0x07;
  wmask_[pci::kCommand + 1] = 0x04;
  wmask_[0x0C] = 0xff;
  wmask_[0x0D] = 0xff;
  wmask_[pci::kInterruptLine] = 0xff;
}

uint32_t PciDevice::read_config_locked(uint32_t offset, unsigned size) const {
  uint32_t v = 0;
  for (unsigned i = 0; i < size && offset + i < pci::kConfigSize; ++i)
    v |= uint32_t{config_[offset + i]} << (8 * i);
  return v;
}

void PciDevice::write_config_raw(uint32_t offset, unsigned size, uint32_t value) {
  for (unsigned i = 0; i < size && offset + i < pci::kConfigSize; ++i)
    config_[offset + i] = static_cast<uint8_t>(value >> (8 * i));
}

void PciDevice::add_bar(int index, uint64_t size, BarKind kind, bool prefetchable) {
  int last = kind == BarKind::kMem64 ? index + 1 : index;
  if (index < 0 || last >= pci::kNumBars || !is_power_of_two(size) || size < 16 ||
      (kind == BarKind::kMem32 && size > (uint64_t{1} << 31)) || bar_owner_[index] != -1 ||
      bar_owner_[last] != -1)
    throw Error(name() + ": invalid BAR " + std::to_string(index));
  bars_[index] = {size, kind, prefetchable, 0};
  bar_owner_[index] = index;
  bar_owner_[last] = index;
}

uint32_t PciDevice::bar_register(int reg) const {
  int owner = bar_owner_[reg];
  if (owner < 0) return 0;
  const BarInfo& b = bars_[owner];
  if (reg != owner)  // upper half of a 64-bit BAR
    return static_cast<uint32_t>((b.address & ~(b.size - 1)) >> 32);
  uint32_t flags = (b.kind == BarKind::kMem64 ? 0x4 : 0) | (b.prefetchable ? 0x8 : 0);
  return (static_cast<uint32_t>(b.address & ~(b.size - 1)) & ~0xfu) | flags;
}

void PciDevice::write_bar_register(int reg, uint32_t value) {
  int owner = bar_owner_[reg];
  if (owner < 0) return;
  BarInfo& b = bars_[owner];
  uint64_t mask = ~(b.size - 1);
  if (reg != owner)
    b.address = (b.address & 0xffffffffull) | ((uint64_t{value} << 32) & mask);
  else
    b.address = (b.address & ~0xffffffffull) | (uint64_t{value & ~0xfu} & mask & 0xffffffffull);
}

uint8_t PciDevice::add_capability(uint8_t id, std::span<const uint8_t> body,
                                  std::span<const uint8_t> writable) {
  uint32_t len = 2 + body.size();
  uint32_t offset = (next_cap_ + 3u) & ~3u;
  if (offset + len > pci::kConfigSize) throw Error(name() + ": PCI capability list is full");
  config_[offset] = id;
  config_[offset + 1] = 0;
  std::memcpy(&config_[offset + 2], body.data(), body.size());
  for (size_t i = 0; i < writable.size() && i < body.size(); ++i)
    wmask_[offset + 2 + i] = writable[i];
  if (last_cap_)
    config_[last_cap_ + 1] = static_cast<uint8_t>(offset);
  else
    config_[pci::kCapabilitiesPointer] = static_cast<uint8_t>(offset);
  last_cap_ = static_cast<uint8_t>(offset);
  next_cap_ = static_cast<uint8_t>(offset + len);
  write_config_raw(pci::kStatus, 2, read_config_locked(pci::kStatus, 2) | pci::kStatusCapabilities);
  return static_cast<uint8_t>(offset);
}

void PciDevice::add_msix(uint16_t vectors, int bar, uint32_t table_offset, uint32_t pba_offset,
                         InterruptController* controller) {
  if (bar < 0 || bar >= pci::kNumBars || bar_owner_[bar] != bar || (table_offset & 7) ||
      (pba_offset & 7))
    throw Error(name() + ": invalid MSI-X placement");
  msix_ = std::make_unique<MsixTable>(vectors, controller);
  if (table_offset + msix_->table_bytes() > bars_[bar].size ||
      pba_offset + msix_->pba_bytes() > bars_[bar].size)
    throw Error(name() + ": MSI-X table does not fit its BAR");
  uint16_t control = vectors - 1;
  uint32_t table = table_offset | bar;
  uint32_t pba = pba_offset | bar;
  uint8_t body[10];
  std::memcpy(body, &control, 2);
  std::memcpy(body + 2, &table, 4);
  std::memcpy(body + 6, &pba, 4);
  const uint8_t writable[10] = {0x00, 0xc0};  // enable and function mask
  msix_cap_ = add_capability(pci::kCapIdMsix, body, writable);
  msix_bar_ = bar;
  msix_table_offset_ = table_offset;
  msix_pba_offset_ = pba_offset;
}

uint32_t PciDevice::config_read(uint32_t offset, unsigned size) {
  std::lock_guard lock(config_mutex_);
  if (offset >= pci::kConfigSize) return ~0u;
  uint32_t v;
  if (offset >= pci::kBar0 && offset < pci::kBar0 + 4 * pci::kNumBars) {
    uint32_t reg = bar_register((offset - pci::kBar0) / 4);
    v = reg >> (8 * (offset % 4));
    if (size < 4) v &= (1u << (8 * size)) - 1;
  } else {
    v = read_config_locked(offset, size);
  }
  config_read_hook(offset, size, v);
  return v;
}

void PciDevice::config_write(uint32_t offset, unsigned size, uint32_t value) {
  bool remap = false;
  {
    std::lock_guard lock(config_mutex_);
    if (offset >= pci::kConfigSize) return;
    if (offset >= pci::kBar0 && offset < pci::kBar0 + 4 * pci::kNumBars) {
      int reg = (offset - pci::kBar0) / 4;
      unsigned shift = 8 * (offset % 4);
      uint32_t mask = (size >= 4 ? ~0u : ((1u << (8 * size)) - 1)) << shift;
      uint32_t cur = bar_register(reg);
      write_bar_register(reg, (cur & ~mask) | ((value << shift) & mask));
      remap = bar_owner_[reg] >= 0;
    } else {
      uint16_t old_command = read_config_locked(pci::kCommand, 2);
      for (unsigned i = 0; i < size && offset + i < pci::kConfigSize; ++i) {
        uint32_t o = offset + i;
        uint8_t b = static_cast<uint8_t>(value >> (8 * i));
        config_[o] = (config_[o] & ~wmask_[o]) | (b & wmask_[o]);
      }
      uint16_t command = read_config_locked(pci::kCommand, 2);
      remap = (old_command ^ command) & pci::kCommandMemory;
      if (msix_ && offset <= msix_cap_ + 3u && offset + size > msix_cap_ + 2u)
        msix_->set_control(read_config_locked(msix_cap_ + 2, 2));
      config_written(offset, size);
    }
  }
  if (remap && bar_listener_) bar_listener_();
}

void PciDevice::bar_access_read(int bar, uint64_t offset, std::span<uint8_t> data) {
  if (msix_ && bar == msix_bar_) {
    if (offset >= msix_table_offset_ && offset - msix_table_offset_ < msix_->table_bytes())
      return msix_->table_read(offset - msix_table_offset_, data);
    if (offset >= msix_pba_offset_ && offset - msix_pba_offset_ < msix_->pba_bytes())
      return msix_->pba_read(offset - msix_pba_offset_, data);
  }
  bar_read(bar, offset, data);
}

void PciDevice::bar_access_write(int bar, uint64_t offset, std::span<const uint8_t> data) {
  if (msix_ && bar == msix_bar_) {
    if (offset >= msix_table_offset_ && offset - msix_table_offset_ < msix_->table_bytes())
      return msix_->table_write(offset - msix_table_offset_, data);
    if (offset >= msix_pba_offset_ && offset - msix_pba_offset_ < msix_->pba_bytes())
      return;  // the PBA is read-only
  }
  bar_write(bar, offset, data);
}

void PciDevice::bar_read(int, uint64_t, std::span<uint8_t> data) {
  std::memset(data.data(), 0, data.size());
}

void PciDevice::bar_write(int, uint64_t, std::span<const uint8_t>) {}

BarInfo PciDevice::bar(int index) const {
  std::lock_guard lock(config_mutex_);
  if (index < 0 || index >= pci::kNumBars || bar_owner_[index] != index) return {};
  BarInfo b = bars_[index];
  b.address &= ~(b.size - 1);
  if (b.kind == BarKind::kMem32) b.address &= 0xffffffffull;
  return b;
}

bool PciDevice::memory_enabled() const {
  std::lock_guard lock(config_mutex_);
  return read_config_locked(pci::kCommand, 2) & pci::kCommandMemory;
}

void PciDevice::set_bar_address(int index, uint64_t address) {
  {
    std::lock_guard lock(config_mutex_);
    if (index < 0 || index >= pci::kNumBars || bar_owner_[index] != index) return;
    bars_[index].address = address & ~(bars_[index].size - 1);
  }
  if (bar_listener_) bar_listener_();
}

void PciDevice::set_command(uint16_t command) {
  {
    std::lock_guard lock(config_mutex_);
    uint16_t cur = read_config_locked(pci::kCommand, 2);
    uint16_t mask = wmask_[pci::kCommand] | (wmask_[pci::kCommand + 1] << 8);
    write_config_raw(pci::kCommand, 2, (cur & ~mask) | (command & mask));
  }
  if (bar_listener_) bar_listener_();
}

void PciDevice::save_config(state::SectionWriter& out) const {
  {
    std::lock_guard lock(config_mutex_);
    out.bytes("pci_config", config_);
    std::array<uint64_t, pci::kNumBars> bars{};
    for (int i = 0; i < pci::kNumBars; ++i) bars[i] = bars_[i].address;
    out.u64s("pci_bars", bars);
  }
  if (msix_) msix_->save_state(out);
}

void PciDevice::restore_config(const state::SectionReader& in) {
  std::array<uint8_t, pci::kConfigSize> config;
  in.bytes_exact("pci_config", config);
  std::vector<uint64_t> bars = in.u64s("pci_bars", pci::kNumBars);
  if (bars.size() != pci::kNumBars) in.fail("field 'pci_bars' does not hold 6 BARs");
  {
    std::lock_guard lock(config_mutex_);
    // Bytes the guest cannot write (identity, capability list, BAR registers, which live in
    // bars_) must be this device's: otherwise the snapshot describes another device.
    for (uint32_t o = 0; o < pci::kConfigSize; ++o) {
      bool bar_register = o >= pci::kBar0 && o < pci::kBar0 + 4 * pci::kNumBars;
      if (bar_register || wmask_[o] == 0xff || config[o] == config_[o]) continue;
      if ((config[o] & ~wmask_[o]) != (config_[o] & ~wmask_[o])) {
        char buf[128];
        std::snprintf(buf, sizeof buf,
                      "read-only PCI configuration byte 0x%02x is 0x%02x in the snapshot but 0x%02x "
                      "on this machine's %s",
                      o, config[o], config_[o], name().c_str());
        in.fail(buf);
      }
    }
    config_ = config;
    for (int i = 0; i < pci::kNumBars; ++i)
      if (bar_owner_[i] == i) bars_[i].address = bars[i] & ~(bars_[i].size - 1);
  }
  if (msix_) msix_->restore_state(in);
  if (bar_listener_) bar_listener_();
}

}  // namespace keel
