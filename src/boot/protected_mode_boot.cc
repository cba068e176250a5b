#include "boot/protected_mode_boot.h"

#include <fmt/format.h>

#include <algorithm>
#include <cstring>

// Xen's public header for the PVH start-of-day structure (libxen-dev); it relies on <cstdint>.
#include <cstdint>
#include <xen/arch-x86/hvm/start_info.h>

#include "arch/x86/boot_state.h"
#include "base/error.h"
#include "boot/memory_map.h"

namespace keel::boot {

namespace {

constexpr uint64_t kFourGiB = 1ull << 32;

uint64_t align_up(uint64_t v, uint64_t a) { return (v + a - 1) & ~(a - 1); }

// Places the kernel, the modules, the strings and the structures; records every range.
class Writer {
 public:
  Writer(GuestMemory& memory, std::string name, std::string protocol)
      : memory_(memory), name_(std::move(name)) {
    result_.protocol = std::move(protocol);
    const auto& low = memory.regions().front();
    low_end_ = std::min(low.gpa + low.size, kFourGiB);
    if (low_end_ < kKernelLowAddr) throw Error(fmt::format("guest RAM is too small to boot {}", name_));
  }

  void load_segments(std::span<const uint8_t> image, const std::vector<ElfSegment>& segments) {
    for (const auto& s : segments) {
      if (s.paddr < kKernelLowAddr)
        throw Error(fmt::format("{}: segment [{:#x}, {:#x}) overlaps keel's boot area below 1 MiB",
                                name_, s.paddr, s.paddr + s.mem_size));
      if (s.paddr + s.mem_size > low_end_ || !memory_.contains(s.paddr, s.mem_size))
        throw Error(fmt::format("{}: segment [{:#x}, {:#x}) is outside guest RAM below 4 GiB (RAM "
                                "there ends at {:#x})",
                                name_, s.paddr, s.paddr + s.mem_size, low_end_));
    }
    for (const auto& s : segments) {
      auto dst = memory_.write_span(s.paddr, s.mem_size);
      std::memcpy(dst.data(), image.data() + s.file_offset, s.file_size);
      std::fill(dst.begin() + static_cast<ptrdiff_t>(s.file_size), dst.end(), 0);
      add_range("kernel", s.paddr, s.mem_size);
      kernel_end_ = std::max(kernel_end_, s.paddr + s.mem_size);
    }
  }

  // Page-aligned, one after the other, after the kernel.
  void load_modules(const std::vector<BootModule>& modules) {
    if (modules.size() > kMaxBootModules)
      throw Error(fmt::format("{} modules given; keel passes at most {}", modules.size(),
                              kMaxBootModules));
    uint64_t next = align_up(kernel_end_, kPageSize);
    for (const auto& m : modules) {
      if (m.bytes.size() > low_end_ || next > low_end_ - m.bytes.size())
        throw Error(fmt::format("module {} ({} bytes) does not fit in guest RAM below {:#x} after "
                                "the kernel (it would start at {:#x})",
                                m.name, m.bytes.size(), low_end_, next));
      memory_.write(next, m.bytes.data(), m.bytes.size());
      add_range("module " + m.name, next, m.bytes.size());
      result_.modules.push_back({next, m.bytes.size()});
      next = align_up(next + m.bytes.size(), kPageSize);
    }
  }

  // A NUL-terminated string in the strings area; returns its address.
  uint32_t add_string(const std::string& s, const std::string& what) {
    if (s.find('\0') != std::string::npos) throw Error(fmt::format("{} contains a NUL byte", what));
    if (s.size() + 1 > kBootStringsSize - strings_used_)
      throw Error(fmt::format("{} ({} bytes) does not fit: the command lines of the kernel and its "
                              "modules share {} bytes",
                              what, s.size(), kBootStringsSize));
    const uint64_t at = kBootStringsAddr + strings_used_;
    memory_.write(at, s.c_str(), s.size() + 1);
    strings_used_ += s.size() + 1;
    return static_cast<uint32_t>(at);
  }

  // Bytes in the information area, 8-byte aligned; returns their address.
  uint32_t add_info(const void* data, size_t size) {
    const uint64_t off = align_up(info_used_, 8);
    if (size > kBootInfoSize - off) throw Error("boot information does not fit in its 4 KiB area");
    memory_.write(kBootInfoAddr + off, data, size);
    info_used_ = off + size;
    return static_cast<uint32_t>(kBootInfoAddr + off);
  }
  template <typename T>
  uint32_t add_info(const std::vector<T>& items) {
    return items.empty() ? 0 : add_info(items.data(), items.size() * sizeof(T));
  }

  ProtectedModeBoot finish(uint64_t entry, uint32_t info_addr, uint32_t eax) {
    if (!memory_.contains(kBootStringsAddr, kBootStringsSize))
      throw Error("guest RAM does not cover keel's boot area");
    result_.entry = entry;
    result_.info_addr = info_addr;
    result_.cpu_state = x86::setup_protected_mode(memory_, static_cast<uint32_t>(entry));
    result_.cpu_state.gpr[x86::RAX] = eax;
    result_.cpu_state.gpr[x86::RBX] = info_addr;
    add_range("gdt", x86::kBootGdtAddr, x86::kBootGdtLimit + 1);
    add_range("boot information", kBootInfoAddr, info_used_);
    if (strings_used_) add_range("command lines", kBootStringsAddr, strings_used_);
    std::sort(result_.ranges.begin(), result_.ranges.end(),
              [](const BootRange& a, const BootRange& b) { return a.gpa < b.gpa; });
    return std::move(result_);
  }

  uint64_t low_end() const { return low_end_; }
  const std::vector<ProtectedModeBoot::Placed>& modules() const { return result_.modules; }

 private:
  void add_range(std::string what, uint64_t gpa, uint64_t size) {
    result_.ranges.push_back({std::move(what), gpa, size});
  }

  GuestMemory& memory_;
  std::string name_;
  uint64_t low_end_ = 0;
  uint64_t kernel_end_ = 0;
  uint64_t strings_used_ = 0;
  uint64_t info_used_ = 0;
  ProtectedModeBoot result_;
};

}  // namespace

ProtectedModeBoot load_multiboot(GuestMemory& memory, std::span<const uint8_t> kernel,
                                 const std::string& kernel_name,
                                 const std::vector<BootModule>& modules, const std::string& cmdline) {
  MultibootKernel k;
  try {
    k = parse_multiboot(kernel);
  } catch (const Error& e) {
    throw Error(fmt::format("{}: {}", kernel_name, e.what()));
  }
  Writer w(memory, kernel_name, "multiboot");
  w.load_segments(kernel, k.segments);
  w.load_modules(modules);

  MultibootInfo info{};
  info.flags = kMbiMemory | kMbiCmdline | kMbiMemoryMap | kMbiBootloaderName;
  info.mem_lower = static_cast<uint32_t>(kLowReservedStart / 1024);
  info.mem_upper = static_cast<uint32_t>((w.low_end() - kKernelLowAddr) / 1024);
  info.cmdline = w.add_string(cmdline, "kernel command line");
  info.boot_loader_name = w.add_string("keel", "boot loader name");
  std::vector<MultibootModule> mods;
  for (size_t i = 0; i < modules.size(); ++i) {
    const auto& placed = w.modules()[i];
    mods.push_back({static_cast<uint32_t>(placed.gpa), static_cast<uint32_t>(placed.gpa + placed.size),
                    w.add_string(modules[i].cmdline, "command line of module " + modules[i].name), 0});
  }
  std::vector<MultibootMmapEntry> mmap;
  for (const auto& e : build_e820(memory))
    mmap.push_back({sizeof(MultibootMmapEntry) - 4, e.addr, e.size, e.type});
  info.mmap_addr = w.add_info(mmap);
  info.mmap_length = static_cast<uint32_t>(mmap.size() * sizeof(MultibootMmapEntry));
  if (!mods.empty()) {
    info.flags |= kMbiModules;
    info.mods_count = static_cast<uint32_t>(mods.size());
    info.mods_addr = w.add_info(mods);
  }
  const uint32_t info_addr = w.add_info(&info, sizeof info);
  return w.finish(k.entry, info_addr, kMultibootBootloaderMagic);
}

ProtectedModeBoot load_pvh(GuestMemory& memory, std::span<const uint8_t> kernel,
                           const std::string& kernel_name, const std::vector<BootModule>& modules,
                           const std::string& cmdline, uint64_t rsdp) {
  ElfKernel k;
  try {
    k = parse_any_elf(kernel);
  } catch (const Error& e) {
    throw Error(fmt::format("{}: {}", kernel_name, e.what()));
  }
  if (!k.pvh_entry)
    throw Error(fmt::format("{}: no PVH entry (Xen PHYS32_ENTRY ELF note)", kernel_name));
  if (*k.pvh_entry >= kFourGiB)
    throw Error(fmt::format("{}: PVH entry {:#x} is above 4 GiB", kernel_name, *k.pvh_entry));
  Writer w(memory, kernel_name, "PVH");
  w.load_segments(kernel, k.segments);
  w.load_modules(modules);

  hvm_start_info info{};
  info.magic = XEN_HVM_START_MAGIC_VALUE;
  info.version = 1;  // with the memory map
  info.cmdline_paddr = w.add_string(cmdline, "kernel command line");
  info.rsdp_paddr = rsdp;
  std::vector<hvm_modlist_entry> mods;
  for (size_t i = 0; i < modules.size(); ++i) {
    const auto& placed = w.modules()[i];
    const uint32_t line = modules[i].cmdline.empty()
                              ? 0
                              : w.add_string(modules[i].cmdline, "command line of module " + modules[i].name);
    mods.push_back({placed.gpa, placed.size, line, 0});
  }
  info.nr_modules = static_cast<uint32_t>(mods.size());
  info.modlist_paddr = w.add_info(mods);
  std::vector<hvm_memmap_table_entry> map;
  for (const auto& e : build_e820(memory)) map.push_back({e.addr, e.size, e.type, 0});
  info.memmap_paddr = w.add_info(map);
  info.memmap_entries = static_cast<uint32_t>(map.size());
  const uint32_t info_addr = w.add_info(&info, sizeof info);
  return w.finish(*k.pvh_entry, info_addr, 0);
}

}  // namespace keel::boot
