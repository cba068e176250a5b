// PciDevice: one PCI function as the guest sees it through configuration space and its BARs.
//
// The base class owns the 256-byte type-0 configuration header (with a write mask per byte, so a
// guest write can only change what hardware would let it change), up to six memory BARs (32- or
// 64-bit, sized the standard way: write all-ones, read back the mask), a capability list and an
// optional MSI-X table. Subclasses (the virtio transport, the host bridge) add BAR contents through
// bar_read()/bar_write().
//
// When the guest moves a BAR or toggles memory decoding, the device tells its PciBus (through the
// BarListener) so the bus re-maps the BAR on the MMIO IoBus.
//
// Thread safety: configuration space is guarded by one mutex; vCPU threads may access it
// concurrently. BAR accesses go to the subclass, which locks itself.
#pragma once

#include <array>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <string>

#include "devices/pci/msix.h"
#include "state/state_format.h"

namespace keel {

namespace pci {
// Configuration header registers (type 0).
inline constexpr uint8_t kVendorId = 0x00;
inline constexpr uint8_t kDeviceId = 0x02;
inline constexpr uint8_t kCommand = 0x04;
inline constexpr uint8_t kStatus = 0x06;
inline constexpr uint8_t kRevision = 0x08;
inline constexpr uint8_t kClassCode = 0x09;  // prog-if, subclass, class (3 bytes)
inline constexpr uint8_t kHeaderType = 0x0E;
inline constexpr uint8_t kBar0 = 0x10;
inline constexpr uint8_t kSubsystemVendorId = 0x2C;
inline constexpr uint8_t kSubsystemId = 0x2E;
inline constexpr uint8_t kCapabilitiesPointer = 0x34;
inline constexpr uint8_t kInterruptLine = 0x3C;
inline constexpr uint8_t kInterruptPin = 0x3D;

inline constexpr uint16_t kCommandIo = 1 << 0;
inline constexpr uint16_t kCommandMemory = 1 << 1;
inline constexpr uint16_t kCommandBusMaster = 1 << 2;
inline constexpr uint16_t kCommandIntxDisable = 1 << 10;
inline constexpr uint16_t kStatusCapabilities = 1 << 4;

inline constexpr uint8_t kCapIdMsix = 0x11;
inline constexpr uint8_t kCapIdVendor = 0x09;

inline constexpr int kNumBars = 6;
inline constexpr uint32_t kConfigSize = 256;
}  // namespace pci

enum class BarKind { kMem32, kMem64 };

struct BarInfo {
  uint64_t size = 0;  // 0: not implemented; else a power of two >= 16
  BarKind kind = BarKind::kMem32;
  bool prefetchable = false;
  uint64_t address = 0;  // as programmed (flag bits stripped)
};

// The bus re-maps a device's BARs when this is called (after the config mutex is released).
using BarListener = std::function<void()>;

class PciDevice {
 public:
  struct Identity {
    uint16_t vendor_id = 0;
    uint16_t device_id = 0;
    uint32_t class_code = 0;  // class << 16 | subclass << 8 | prog-if
    uint8_t revision = 0;
    uint16_t subsystem_vendor_id = 0;
    uint16_t subsystem_id = 0;
  };

  explicit PciDevice(const Identity& id);
  virtual ~PciDevice() = default;
  PciDevice(const PciDevice&) = delete;
  PciDevice& operator=(const PciDevice&) = delete;

  virtual std::string name() const = 0;

  // Configuration space access from the host bridge: `offset` < 256, size 1, 2 or 4, and the
  // access does not cross a dword boundary (the host bridge guarantees it).
  uint32_t config_read(uint32_t offset, unsigned size);
  void config_write(uint32_t offset, unsigned size, uint32_t value);

  // BAR contents. `offset` is within the BAR; accesses of any size up to 8 bytes.
  void bar_access_read(int bar, uint64_t offset, std::span<uint8_t> data);
  void bar_access_write(int bar, uint64_t offset, std::span<const uint8_t> data);

  // Used by the bus: BAR layout and whether memory decoding is on.
  BarInfo bar(int index) const;
  bool memory_enabled() const;
  // Firmware-style placement before the guest runs: program BAR `index` to `address`.
  void set_bar_address(int index, uint64_t address);
  void set_command(uint16_t command);
  void set_bar_listener(BarListener listener) { bar_listener_ = std::move(listener); }

  MsixTable* msix() { return msix_.get(); }

  // Configuration space, BAR addresses and the MSI-X table, as fields of the device's section.
  // restore_config() refuses a snapshot whose read-only configuration bytes differ from this
  // device's (a different device in that slot), then re-maps the BARs.
  void save_config(state::SectionWriter& out) const;
  void restore_config(const state::SectionReader& in);

 protected:
  // Declares BAR `index` (a 64-bit BAR also takes index+1). Call from the constructor.
  void add_bar(int index, uint64_t size, BarKind kind, bool prefetchable = false);
  // Appends a capability (id, next pointer, then `body`) and returns its offset in config space.
  // `writable` marks body bytes the guest may write (same length as body, or empty: read-only).
  uint8_t add_capability(uint8_t id, std::span<const uint8_t> body,
                         std::span<const uint8_t> writable = {});
  // Adds an MSI-X capability with `vectors` entries; table at `table_offset` and PBA at
  // `pba_offset` of BAR `bar`. MSI messages go to `controller`.
  void add_msix(uint16_t vectors, int bar, uint32_t table_offset, uint32_t pba_offset,
                InterruptController* controller);

  // Subclass BAR contents (MSI-X table and PBA are handled by the base class).
  virtual void bar_read(int bar, uint64_t offset, std::span<uint8_t> data);
  virtual void bar_write(int bar, uint64_t offset, std::span<const uint8_t> data);
  // Hooks for capabilities with side effects (virtio's PCI configuration access window); both are
  // called with the config mutex held. config_read_hook may replace the value read.
  virtual void config_read_hook(uint32_t offset, unsigned size, uint32_t& value) {}
  virtual void config_written(uint32_t offset, unsigned size) {}

  // Raw config bytes, for subclasses (config mutex held by the caller or not yet shared).
  uint32_t read_config_locked(uint32_t offset, unsigned size) const;
  void write_config_raw(uint32_t offset, unsigned size, uint32_t value);
  std::mutex& config_mutex() { return config_mutex_; }

 private:
  void write_bar_register(int reg_index, uint32_t value);
  uint32_t bar_register(int reg_index) const;

  mutable std::mutex config_mutex_;
  std::array<uint8_t, pci::kConfigSize> config_{};
  std::array<uint8_t, pci::kConfigSize> wmask_{};
  std::array<BarInfo, pci::kNumBars> bars_{};
  // Register index i of a 64-bit BAR's upper half points back to the lower one.
  std::array<int, pci::kNumBars> bar_owner_{};
  uint8_t next_cap_ = 0x40;
  uint8_t last_cap_ = 0;
  std::unique_ptr<MsixTable> msix_;
  int msix_bar_ = -1;
  uint32_t msix_table_offset_ = 0;
  uint32_t msix_pba_offset_ = 0;
  uint8_t msix_cap_ = 0;
  BarListener bar_listener_;
};

}  // namespace keel
