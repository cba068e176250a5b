#include "boot/multiboot.h"

#include <fmt/format.h>

#include <cstring>

#include "base/error.h"

namespace keel::boot {

namespace {

constexpr uint64_t kFourGiB = 1ull << 32;
constexpr uint64_t kHeaderSize = 12;       // magic, flags, checksum
constexpr uint64_t kKludgeHeaderSize = 32;  // ... header_addr to entry_addr
// The requirement bits (0-15) keel meets: module alignment (always page-aligned), memory
// information (always given) and the video mode (a preference: keel has no framebuffer, and the
// spec lets the loader pick text mode, as QEMU does).
constexpr uint32_t kKnownRequirements = kMbPageAlignModules | kMbMemoryInfo | kMbVideoMode;

template <typename T>
T load(std::span<const uint8_t> bytes, uint64_t offset) {
  T v;
  std::memcpy(&v, bytes.data() + offset, sizeof v);
  return v;
}

MultibootKernel parse_aout_kludge(const FoundMultibootHeader& found, std::span<const uint8_t> image) {
  const MultibootHeader& h = found.header;
  if (image.size() - found.offset < kKludgeHeaderSize)
    throw Error(fmt::format("multiboot header at offset {:#x} sets the a.out kludge (flag 16) but "
                            "the file ends before its address fields",
                            found.offset));
  if (h.load_addr > h.header_addr)
    throw Error(fmt::format("multiboot load_addr {:#x} is above header_addr {:#x}", h.load_addr,
                            h.header_addr));
  const uint64_t lead = h.header_addr - h.load_addr;  // bytes of the file before the header
  if (lead > found.offset)
    throw Error(fmt::format("multiboot header_addr - load_addr ({:#x}) is more than the header's "
                            "file offset {:#x}: the load would start before the file",
                            lead, found.offset));
  const uint64_t file_offset = found.offset - lead;
  uint64_t load_end = h.load_end_addr;
  if (load_end == 0) load_end = h.load_addr + (image.size() - file_offset);
  if (load_end <= h.load_addr)
    throw Error(fmt::format("multiboot load_end_addr {:#x} is not above load_addr {:#x}",
                            h.load_end_addr, h.load_addr));
  const uint64_t load_size = load_end - h.load_addr;
  if (load_size > image.size() - file_offset)
    throw Error(fmt::format("multiboot load range [{:#x}, {:#x}) needs {:#x} bytes from file offset "
                            "{:#x}, but the file has {} bytes",
                            h.load_addr, load_end, load_size, file_offset, image.size()));
  uint64_t end = load_end;
  if (h.bss_end_addr != 0) {
    if (h.bss_end_addr < load_end)
      throw Error(fmt::format("multiboot bss_end_addr {:#x} is below the end of the load range {:#x}",
                              h.bss_end_addr, load_end));
    end = h.bss_end_addr;
  }
  if (end > kFourGiB)
    throw Error(fmt::format("multiboot kernel ends at {:#x}, above 4 GiB", end));
  if (h.entry_addr < h.load_addr || h.entry_addr >= end)
    throw Error(fmt::format("multiboot entry_addr {:#x} is outside the kernel [{:#x}, {:#x})",
                            h.entry_addr, h.load_addr, end));
  MultibootKernel k;
  k.header = h;
  k.segments.push_back({file_offset, load_size, h.load_addr, end - h.load_addr});
  k.entry = h.entry_addr;
  k.end = end;
  return k;
}

}  // namespace

std::optional<FoundMultibootHeader> find_multiboot_header(std::span<const uint8_t> image) {
  const uint64_t limit = std::min<uint64_t>(image.size(), kMultibootSearchLimit);
  for (uint64_t off = 0; off + kHeaderSize <= limit; off += 4) {
    if (load<uint32_t>(image, off) != kMultibootMagic) continue;
    const uint32_t flags = load<uint32_t>(image, off + 4);
    const uint32_t checksum = load<uint32_t>(image, off + 8);
    if (static_cast<uint32_t>(kMultibootMagic + flags + checksum) != 0) continue;
    FoundMultibootHeader found;
    found.offset = off;
    std::memcpy(&found.header, image.data() + off,
                std::min<uint64_t>(sizeof found.header, image.size() - off));
    return found;
  }
  return std::nullopt;
}

MultibootKernel parse_multiboot(std::span<const uint8_t> image) {
  const auto found = find_multiboot_header(image);
  if (!found)
    throw Error("no multiboot header (magic 0x1BADB002 with a matching checksum, 4-byte aligned) in "
                "the first 8 KiB");
  const uint32_t flags = found->header.flags;
  if (const uint32_t unknown = flags & 0xFFFF & ~kKnownRequirements)
    throw Error(fmt::format("multiboot header requires features keel does not provide (flags "
                            "{:#x}; known requirement bits are 0-2)",
                            unknown));
  if (flags & kMbAoutKludge) return parse_aout_kludge(*found, image);

  if (detect_kernel_format(image) != KernelFormat::kElf)
    throw Error("multiboot kernel is neither ELF nor marked with the a.out kludge (flag 16) that "
                "gives its load addresses");
  const ElfKernel elf = parse_any_elf(image);
  if (elf.is64)
    throw Error("multiboot kernel is ELF64: multiboot v1 loads ELF32 images (convert it with "
                "`objcopy -O elf32-i386`, as kvm-unit-tests does, or use the a.out kludge)");
  if (elf.end > kFourGiB)
    throw Error(fmt::format("multiboot kernel ends at {:#x}, above 4 GiB", elf.end));
  MultibootKernel k;
  k.header = found->header;
  k.segments = elf.segments;
  k.entry = elf.entry;
  k.end = elf.end;
  return k;
}

BootProtocol detect_boot_protocol(std::span<const uint8_t> image) {
  const auto mb = find_multiboot_header(image);
  if (detect_kernel_format(image) == KernelFormat::kElf) {
    if (image.size() > 4 && image[4] == 1) {  // EI_CLASS: ELFCLASS32
      try {
        if (parse_any_elf(image).pvh_entry) return BootProtocol::kPvh;
      } catch (const Error&) {
        if (!mb) return BootProtocol::kPvh;
      }
      return mb ? BootProtocol::kMultiboot : BootProtocol::kLinux;
    }
    return mb && (mb->header.flags & kMbAoutKludge) ? BootProtocol::kMultiboot : BootProtocol::kLinux;
  }
  const bool bzimage = image.size() >= 0x206 && load<uint32_t>(image, 0x202) == kHdrSMagic;
  return mb && !bzimage ? BootProtocol::kMultiboot : BootProtocol::kLinux;
}

const char* boot_protocol_name(BootProtocol p) {
  switch (p) {
    case BootProtocol::kLinux: return "Linux";
    case BootProtocol::kMultiboot: return "multiboot";
    case BootProtocol::kPvh: return "PVH";
  }
  return "?";
}

std::vector<ModuleSpec> parse_module_list(const std::string& list) {
  std::vector<ModuleSpec> out;
  std::string entry;
  auto finish = [&] {
    const size_t start = entry.find_first_not_of(' ');
    if (start == std::string::npos)
      throw Error(fmt::format("module list '{}' has an empty entry", list));
    entry.erase(0, start);
    out.push_back({entry.substr(0, entry.find(' ')), entry});
    entry.clear();
  };
  for (size_t i = 0; i < list.size(); ++i) {
    if (list[i] != ',') {
      entry.push_back(list[i]);
    } else if (i + 1 < list.size() && list[i + 1] == ',') {
      entry.push_back(',');  // ",," is a comma inside an entry
      ++i;
    } else {
      finish();
    }
  }
  finish();
  return out;
}

}  // namespace keel::boot
