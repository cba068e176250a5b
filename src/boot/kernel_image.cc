#include "boot/kernel_image.h"

#include <fmt/format.h>

#include <algorithm>
#include <cstring>

#include "base/error.h"

namespace keel::boot {

namespace {

// The setup header can grow up to the start of edd_mbr_sig_buffer in the zero page.
constexpr uint64_t kSetupHeaderLimit = 0x290;

template <typename T>
T load(std::span<const uint8_t> bytes, uint64_t offset) {
  T v;
  std::memcpy(&v, bytes.data() + offset, sizeof v);
  return v;
}

std::string version_string(uint16_t v) { return fmt::format("{}.{:02}", v >> 8, v & 0xFF); }

// ELF64 structures (System V ABI), only what the loader reads.
struct Elf64Ehdr {
  uint8_t ident[16];
  uint16_t type;
  uint16_t machine;
  uint32_t version;
  uint64_t entry;
  uint64_t phoff;
  uint64_t shoff;
  uint32_t flags;
  uint16_t ehsize;
  uint16_t phentsize;
  uint16_t phnum;
  uint16_t shentsize;
  uint16_t shnum;
  uint16_t shstrndx;
};
static_assert(sizeof(Elf64Ehdr) == 64);

struct Elf64Phdr {
  uint32_t type;
  uint32_t flags;
  uint64_t offset;
  uint64_t vaddr;
  uint64_t paddr;
  uint64_t filesz;
  uint64_t memsz;
  uint64_t align;
};
static_assert(sizeof(Elf64Phdr) == 56);

constexpr uint8_t kElfMagic[4] = {0x7F, 'E', 'L', 'F'};
constexpr uint8_t kElfClass64 = 2;
constexpr uint8_t kElfData2Lsb = 1;
constexpr uint16_t kEtExec = 2;
constexpr uint16_t kEmX86_64 = 62;
constexpr uint32_t kPtLoad = 1;
constexpr uint16_t kMaxPhnum = 256;  // real kernels have a handful; bounds the work on bad input

}  // namespace

KernelFormat detect_kernel_format(std::span<const uint8_t> image) {
  if (image.size() >= 4 && std::memcmp(image.data(), kElfMagic, 4) == 0) return KernelFormat::kElf;
  return KernelFormat::kBzImage;
}

BzImage parse_bzimage(std::span<const uint8_t> image) {
  const uint64_t size = image.size();
  // The magic and the version are the first things to check; everything else depends on them.
  if (size < 0x208)
    throw Error(fmt::format("truncated bzImage: {} bytes, too short to hold a setup header", size));
  if (load<uint32_t>(image, 0x202) != kHdrSMagic)
    throw Error("not a bzImage: no \"HdrS\" magic at offset 0x202");
  const uint16_t version = load<uint16_t>(image, 0x206);
  if (version < kMinProtocol)
    throw Error(fmt::format("bzImage boot protocol {} is too old: keel needs {} or newer",
                            version_string(version), version_string(kMinProtocol)));
  if (load<uint16_t>(image, 0x1FE) != kBootFlag)
    throw Error("bzImage has no 0xAA55 boot flag at offset 0x1FE");

  BzImage bz;
  // A short jump at 0x200 skips the header; its target is where the header ends.
  if (image[0x200] != 0xEB) throw Error("bzImage has no short jump at offset 0x200");
  bz.header_end = std::min<uint64_t>(0x202 + image[0x201], kSetupHeaderLimit);
  const uint64_t needed_header_end = 0x1F1 + offsetof(SetupHeader, cmdline_size) + 4;
  if (bz.header_end < needed_header_end)
    throw Error(fmt::format("bzImage setup header ends at {:#x}, before the protocol {} fields",
                            bz.header_end, version_string(version)));
  if (size < bz.header_end)
    throw Error(fmt::format("truncated bzImage: {} bytes, the setup header ends at {:#x}", size,
                            bz.header_end));
  const uint64_t copied = std::min<uint64_t>(bz.header_end - 0x1F1, sizeof(SetupHeader));
  std::memcpy(&bz.header, image.data() + 0x1F1, copied);
  const SetupHeader& h = bz.header;

  if (version < 0x020C || !(h.xloadflags & kXlfKernel64))
    throw Error(fmt::format("bzImage has no 64-bit entry point (XLF_KERNEL_64 not set, boot "
                            "protocol {}): keel boots 64-bit kernels only",
                            version_string(version)));
  if (!(h.loadflags & kLoadedHigh))
    throw Error("bzImage is not loaded high (LOADED_HIGH clear): zImage kernels are not supported");

  const uint64_t setup_sects = h.setup_sects == 0 ? 4 : h.setup_sects;
  bz.kernel_offset = (setup_sects + 1) * 512;
  if (size <= bz.kernel_offset)
    throw Error(fmt::format("truncated bzImage: {} bytes, but the setup code alone takes {}", size,
                            bz.kernel_offset));
  bz.kernel_size = size - bz.kernel_offset;
  const uint64_t declared = uint64_t(h.syssize) * 16;
  if (declared > bz.kernel_size)
    throw Error(fmt::format("truncated bzImage: protected-mode code is {} bytes, the header "
                            "(syssize) says {}",
                            bz.kernel_size, declared));
  if (bz.relocatable()) {
    const uint32_t a = h.kernel_alignment;
    if (a == 0 || (a & (a - 1)) != 0)
      throw Error(fmt::format("bzImage kernel_alignment {:#x} is not a power of two", a));
  }
  return bz;
}

ElfKernel parse_elf_kernel(std::span<const uint8_t> image) {
  const uint64_t size = image.size();
  if (size < sizeof(Elf64Ehdr) || std::memcmp(image.data(), kElfMagic, 4) != 0)
    throw Error(fmt::format("not an ELF image ({} bytes, no complete ELF header)", size));
  const auto eh = load<Elf64Ehdr>(image, 0);
  if (eh.ident[4] != kElfClass64)
    throw Error("ELF kernel is not ELF64 (32-bit ELF images are not supported)");
  if (eh.ident[5] != kElfData2Lsb) throw Error("ELF kernel is not little-endian");
  if (eh.machine != kEmX86_64)
    throw Error(fmt::format("ELF kernel is for machine {}, not x86-64 (62)", eh.machine));
  if (eh.type != kEtExec)
    throw Error(fmt::format("ELF kernel has type {}, not an executable (ET_EXEC)", eh.type));
  if (eh.phentsize != sizeof(Elf64Phdr))
    throw Error(fmt::format("ELF program header size {} is not {}", eh.phentsize,
                            sizeof(Elf64Phdr)));
  if (eh.phnum == 0 || eh.phnum > kMaxPhnum)
    throw Error(fmt::format("ELF kernel has {} program headers (expected 1..{})", eh.phnum,
                            kMaxPhnum));
  if (eh.phoff > size || uint64_t(eh.phnum) * sizeof(Elf64Phdr) > size - eh.phoff)
    throw Error(fmt::format("truncated ELF kernel: program headers at {:#x} run past the end "
                            "({} bytes)",
                            eh.phoff, size));

  ElfKernel k;
  struct Virtual {
    uint64_t vaddr, paddr, mem_size;
  };
  std::vector<Virtual> virt;
  for (uint16_t i = 0; i < eh.phnum; ++i) {
    const auto ph = load<Elf64Phdr>(image, eh.phoff + uint64_t(i) * sizeof(Elf64Phdr));
    if (ph.type != kPtLoad || ph.memsz == 0) continue;
    if (ph.filesz > ph.memsz)
      throw Error(fmt::format("ELF segment {}: file size {:#x} exceeds memory size {:#x}", i,
                              ph.filesz, ph.memsz));
    if (ph.offset > size || ph.filesz > size - ph.offset)
      throw Error(fmt::format("truncated ELF kernel: segment {} ([{:#x}, +{:#x}) in the file) runs "
                              "past its end ({} bytes)",
                              i, ph.offset, ph.filesz, size));
    if (ph.paddr + ph.memsz < ph.paddr)
      throw Error(fmt::format("ELF segment {}: physical range {:#x} + {:#x} wraps around", i,
                              ph.paddr, ph.memsz));
    k.segments.push_back({ph.offset, ph.filesz, ph.paddr, ph.memsz});
    if (ph.vaddr + ph.memsz >= ph.vaddr) virt.push_back({ph.vaddr, ph.paddr, ph.memsz});
  }
  if (k.segments.empty()) throw Error("ELF kernel has no loadable (PT_LOAD) segment");
  std::sort(k.segments.begin(), k.segments.end(),
            [](const ElfSegment& a, const ElfSegment& b) { return a.paddr < b.paddr; });
  for (size_t i = 1; i < k.segments.size(); ++i) {
    const auto& prev = k.segments[i - 1];
    if (k.segments[i].paddr < prev.paddr + prev.mem_size)
      throw Error(fmt::format("ELF segments overlap at physical address {:#x}",
                              k.segments[i].paddr));
  }
  k.lowest = k.segments.front().paddr;
  k.end = k.segments.back().paddr + k.segments.back().mem_size;

  // Linux links vmlinux with a physical e_entry (phys_startup_64); accept a virtual one too.
  auto in_segment = [&](uint64_t addr) {
    return std::any_of(k.segments.begin(), k.segments.end(), [&](const ElfSegment& s) {
      return addr >= s.paddr && addr - s.paddr < s.mem_size;
    });
  };
  if (in_segment(eh.entry)) {
    k.entry = eh.entry;
  } else {
    auto it = std::find_if(virt.begin(), virt.end(), [&](const Virtual& v) {
      return eh.entry >= v.vaddr && eh.entry - v.vaddr < v.mem_size;
    });
    if (it == virt.end())
      throw Error(fmt::format("ELF entry point {:#x} is in no loadable segment", eh.entry));
    k.entry = it->paddr + (eh.entry - it->vaddr);
  }
  return k;
}

}  // namespace keel::boot
