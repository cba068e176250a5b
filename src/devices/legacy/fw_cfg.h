// FwCfg: QEMU's firmware configuration interface (docs/specs/fw_cfg.rst in QEMU), so firmware and
// test kernels (kvm-unit-tests) find the machine's description where they expect it.
//
// Ports (I/O, as QEMU's PC): 0x510 selector (16-bit write, selects an item and rewinds it), 0x511
// data (8-bit reads walk the selected item; past its end reads 0), 0x514-0x51B DMA address (two
// big-endian 32-bit writes, high then low; the low write starts the transfer; reading gives the
// "QEMU CFG" signature). Items: signature "QEMU", ID (traditional + DMA), RAM size, CPU count and
// maximum, the kernel, initrd and command line of a Linux guest (addresses, sizes, data, the
// bzImage split into setup and protected-mode parts as QEMU's x86 loader does), and the file
// directory (0x19: be32 count, then be32 size, be16 select, be16 reserved, char name[56] each,
// sorted by name) of named files from 0x20 on.
//
// The DMA control structure and the buffers it names are untrusted guest memory: anything outside
// RAM, a write request, or an unknown control bit sets the error bit and nothing else happens.
// Thread safety: one mutex; called on vCPU threads.
#pragma once

#include <cstdint>
#include <map>
#include <mutex>
#include <span>
#include <string>
#include <vector>

#include "bus/io_bus.h"
#include "memory/guest_memory.h"
#include "state/persistent.h"

namespace keel {

// Snapshots keep the cursor (the selected item, the offset in it, a DMA address's high half);
// the items are the machine's, built again from its configuration.
class FwCfg : public BusDevice, public state::Persistent {
 public:
  static constexpr uint16_t kBasePort = 0x510;
  static constexpr uint16_t kPortCount = 12;  // 0x510-0x51B

  // Item keys (QEMU's include/standard-headers/linux/qemu_fw_cfg.h).
  enum Key : uint16_t {
    kSignature = 0x00, kId = 0x01, kRamSize = 0x03, kNbCpus = 0x05, kMaxCpus = 0x0f,
    kKernelAddr = 0x07, kKernelSize = 0x08, kInitrdAddr = 0x0a, kInitrdSize = 0x0b,
    kKernelEntry = 0x10, kKernelData = 0x11, kInitrdData = 0x12, kCmdlineAddr = 0x13,
    kCmdlineSize = 0x14, kCmdlineData = 0x15, kSetupAddr = 0x16, kSetupSize = 0x17,
    kSetupData = 0x18, kFileDir = 0x19, kFileFirst = 0x20,
  };
  // DMA control bits.
  static constexpr uint32_t kDmaError = 1, kDmaRead = 2, kDmaSkip = 4, kDmaSelect = 8, kDmaWrite = 16;

  // Starts with the signature, the ID, the RAM size and the CPU counts.
  FwCfg(GuestMemory& memory, uint64_t ram_bytes, uint16_t cpus);

  void set_item(uint16_t key, std::vector<uint8_t> data);
  // A named file ("etc/acpi/rsdp"); names are at most 55 bytes. The directory is rebuilt.
  void add_file(const std::string& name, std::vector<uint8_t> data);
  // A Linux guest's kernel file, initrd and command line, with where keel put them.
  void set_linux(std::span<const uint8_t> kernel, std::span<const uint8_t> initrd, const std::string& cmdline,
                 uint64_t kernel_addr, uint64_t initrd_addr, uint64_t cmdline_addr, uint64_t entry);

  void read(uint64_t offset, std::span<uint8_t> data) override;
  void write(uint64_t offset, std::span<const uint8_t> data) override;

  void save_state(state::SectionWriter& out) override;
  void restore_state(const state::SectionReader& in) override;

 private:
  void select(uint16_t key);
  void run_dma(uint64_t address);  // with mutex_ held
  void rebuild_directory();

  GuestMemory& memory_;
  std::mutex mutex_;
  std::map<uint16_t, std::vector<uint8_t>> items_;
  std::map<std::string, std::vector<uint8_t>> files_;
  uint16_t selected_ = 0;
  uint64_t offset_ = 0;
  uint32_t dma_high_ = 0;
};

}  // namespace keel
