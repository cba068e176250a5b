#include "devices/legacy/fw_cfg.h"

#include <cstring>

#include "base/error.h"

namespace keel {
namespace {

std::vector<uint8_t> le(uint64_t v, size_t n) {
  std::vector<uint8_t> out(n);
  for (size_t i = 0; i < n; ++i) out[i] = static_cast<uint8_t>(v >> (8 * i));
  return out;
}

uint32_t be32(const uint8_t* p) { return uint32_t{p[0]} << 24 | uint32_t{p[1]} << 16 | uint32_t{p[2]} << 8 | p[3]; }
void put_be32(uint8_t* p, uint32_t v) {
  for (int i = 3; i >= 0; --i, v >>= 8) p[i] = static_cast<uint8_t>(v);
}

constexpr uint8_t kDmaSignature[8] = {'Q', 'E', 'M', 'U', ' ', 'C', 'F', 'G'};
constexpr size_t kMaxFileName = 56;

}  // namespace

FwCfg::FwCfg(GuestMemory& memory, uint64_t ram_bytes, uint16_t cpus) : memory_(memory) {
  items_[kSignature] = {'Q', 'E', 'M', 'U'};
  items_[kId] = le(3, 4);  // bit 0: traditional interface, bit 1: DMA
  items_[kRamSize] = le(ram_bytes, 8);
  items_[kNbCpus] = le(cpus, 2);
  items_[kMaxCpus] = le(cpus, 2);
  rebuild_directory();
}

void FwCfg::set_item(uint16_t key, std::vector<uint8_t> data) {
  std::lock_guard lock(mutex_);
  items_[key] = std::move(data);
}

void FwCfg::add_file(const std::string& name, std::vector<uint8_t> data) {
  if (name.empty() || name.size() >= kMaxFileName) throw Error("fw_cfg file name '" + name + "' is not 1-55 bytes");
  std::lock_guard lock(mutex_);
  files_[name] = std::move(data);
  rebuild_directory();
}

void FwCfg::rebuild_directory() {
  // Files take keys from 0x20 in name order, as QEMU sorts them.
  for (auto it = items_.lower_bound(kFileFirst); it != items_.end();) it = items_.erase(it);
  std::vector<uint8_t> dir(4);
  put_be32(dir.data(), static_cast<uint32_t>(files_.size()));
  uint16_t key = kFileFirst;
  for (const auto& [name, data] : files_) {
    uint8_t entry[64] = {};
    put_be32(entry, static_cast<uint32_t>(data.size()));
    entry[4] = static_cast<uint8_t>(key >> 8);
    entry[5] = static_cast<uint8_t>(key);
    std::memcpy(entry + 8, name.data(), name.size());
    dir.insert(dir.end(), entry, entry + sizeof entry);
    items_[key++] = data;
  }
  items_[kFileDir] = std::move(dir);
}

void FwCfg::set_linux(std::span<const uint8_t> kernel, std::span<const uint8_t> initrd, const std::string& cmdline,
                      uint64_t kernel_addr, uint64_t initrd_addr, uint64_t cmdline_addr, uint64_t entry) {
  std::lock_guard lock(mutex_);
  // A bzImage splits into its real-mode setup ((setup_sects + 1) sectors) and the rest.
  size_t setup = 0;
  if (kernel.size() > 0x206 && std::memcmp(&kernel[0x202], "HdrS", 4) == 0) {
    size_t sects = kernel[0x1f1] ? kernel[0x1f1] : 4;
    setup = std::min(kernel.size(), (sects + 1) * 512);
    items_[kSetupAddr] = le(0x10000, 4);  // QEMU's real-mode address for a relocatable kernel
    items_[kSetupSize] = le(setup, 4);
    items_[kSetupData].assign(kernel.begin(), kernel.begin() + static_cast<std::ptrdiff_t>(setup));
  }
  items_[kKernelAddr] = le(kernel_addr, 4);
  items_[kKernelEntry] = le(entry, 4);
  items_[kKernelSize] = le(kernel.size() - setup, 4);
  items_[kKernelData].assign(kernel.begin() + static_cast<std::ptrdiff_t>(setup), kernel.end());
  items_[kInitrdAddr] = le(initrd_addr, 4);
  items_[kInitrdSize] = le(initrd.size(), 4);
  items_[kInitrdData].assign(initrd.begin(), initrd.end());
  items_[kCmdlineAddr] = le(cmdline_addr, 4);
  items_[kCmdlineSize] = le(cmdline.size() + 1, 4);
  items_[kCmdlineData].assign(cmdline.begin(), cmdline.end());
  items_[kCmdlineData].push_back(0);
}

void FwCfg::save_state(state::SectionWriter& out) {
  std::lock_guard lock(mutex_);
  out.u16("selected", selected_);
  out.u64("offset", offset_);
  out.u32("dma_high", dma_high_);
}

void FwCfg::restore_state(const state::SectionReader& in) {
  // Any offset is safe: reads past an item's end give zeros.
  std::lock_guard lock(mutex_);
  selected_ = in.u16("selected");
  offset_ = in.u64("offset");
  dma_high_ = in.u32("dma_high");
}

void FwCfg::select(uint16_t key) {
  selected_ = key;
  offset_ = 0;
}

void FwCfg::read(uint64_t offset, std::span<uint8_t> data) {
  std::lock_guard lock(mutex_);
  if (offset == 1 && data.size() == 1) {
    auto it = items_.find(selected_);
    data[0] = it != items_.end() && offset_ < it->second.size() ? it->second[offset_] : 0;
    if (it != items_.end() && offset_ < it->second.size()) ++offset_;
    return;
  }
  for (size_t i = 0; i < data.size(); ++i) {
    uint64_t at = offset + i;
    data[i] = at >= 4 && at < 12 ? kDmaSignature[at - 4] : 0;
  }
}

void FwCfg::write(uint64_t offset, std::span<const uint8_t> data) {
  std::lock_guard lock(mutex_);
  if (offset == 0 && data.size() == 2) {
    select(static_cast<uint16_t>(data[0] | data[1] << 8));
  } else if (offset == 4 && data.size() == 4) {
    dma_high_ = be32(data.data());
  } else if (offset == 8 && data.size() == 4) {
    run_dma(uint64_t{dma_high_} << 32 | be32(data.data()));
    dma_high_ = 0;
  } else if (offset == 4 && data.size() == 8) {
    run_dma(uint64_t{be32(data.data())} << 32 | be32(data.data() + 4));
  }
  // Writes to the data port are ignored, as QEMU ignores them since 2.4.
}

void FwCfg::run_dma(uint64_t address) {
  uint8_t access[16];
  if (!memory_.contains(address, sizeof access)) return;  // nowhere to report the error
  memory_.read(address, access, sizeof access);
  uint32_t control = be32(access), length = be32(access + 4);
  uint64_t target = uint64_t{be32(access + 8)} << 32 | be32(access + 12);
  uint32_t result = 0;
  if (control & kDmaSelect) select(static_cast<uint16_t>(control >> 16));
  uint32_t op = control & (kDmaRead | kDmaSkip | kDmaWrite);
  if ((control & ~(0xffff0000u | kDmaSelect | kDmaRead | kDmaSkip | kDmaWrite)) || (op & kDmaWrite) ||
      (op != 0 && op != kDmaRead && op != kDmaSkip)) {
    result = kDmaError;
  } else if (op) {
    auto it = items_.find(selected_);
    const std::vector<uint8_t>* item = it == items_.end() ? nullptr : &it->second;
    uint64_t have = item && offset_ < item->size() ? item->size() - offset_ : 0;
    uint64_t n = std::min<uint64_t>(have, length);
    if (op == kDmaRead) {
      if (!memory_.contains(target, length)) {
        result = kDmaError;
      } else {
        if (n) memory_.write(target, item->data() + offset_, n);
        // Past the item's end the buffer is filled with zeros, as QEMU does.
        if (length > n) {
          std::vector<uint8_t> zeros(length - n);
          memory_.write(target + n, zeros.data(), zeros.size());
        }
      }
    }
    if (!result) offset_ += n;
  }
  uint8_t done[4];
  put_be32(done, result);
  memory_.write(address, done, sizeof done);
}

}  // namespace keel
