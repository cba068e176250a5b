#include "boot/kernel_image.h"

#include <fmt/format.h>

#include <algorithm>
#include <cstring>

#include <elf.h>
#include <xen/elfnote.h>

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

constexpr uint8_t kElfMagic[4] = {0x7F, 'E', 'L', 'F'};
constexpr uint16_t kMaxPhnum = 256;  // real kernels have a handful; bounds the work on bad input
constexpr uint64_t kMaxNotes = 4096;  // notes looked at per image, so a crafted image stays cheap

// The ELF structures come from <elf.h>; the two classes differ only in field widths.
struct Elf32Types {
  using Ehdr = Elf32_Ehdr;
  using Phdr = Elf32_Phdr;
  static constexpr uint8_t kClass = ELFCLASS32;
};
struct Elf64Types {
  using Ehdr = Elf64_Ehdr;
  using Phdr = Elf64_Phdr;
  static constexpr uint8_t kClass = ELFCLASS64;
};

// XEN_ELFNOTE_PHYS32_ENTRY in the PT_NOTE segments: the 32-bit PVH entry (Xen's elfnote.h).
std::optional<uint64_t> find_pvh_entry(std::span<const uint8_t> image, uint64_t offset,
                                       uint64_t size) {
  uint64_t pos = offset, end = offset + size, seen = 0;
  while (end - pos >= sizeof(Elf32_Nhdr) && seen++ < kMaxNotes) {
    const auto nh = load<Elf32_Nhdr>(image, pos);
    const uint64_t name_at = pos + sizeof nh;
    const uint64_t desc_at = name_at + ((uint64_t(nh.n_namesz) + 3) & ~uint64_t{3});
    const uint64_t next = desc_at + ((uint64_t(nh.n_descsz) + 3) & ~uint64_t{3});
    if (next > end) break;  // a truncated note ends the list
    if (nh.n_type == XEN_ELFNOTE_PHYS32_ENTRY && nh.n_namesz == 4 &&
        std::memcmp(image.data() + name_at, "Xen", 4) == 0) {
      if (nh.n_descsz == 4) return load<uint32_t>(image, desc_at);
      if (nh.n_descsz == 8) return load<uint64_t>(image, desc_at);
      throw Error(fmt::format("ELF kernel's Xen PHYS32_ENTRY note has a {}-byte value (expected 4 "
                              "or 8)",
                              nh.n_descsz));
    }
    pos = next;
  }
  return std::nullopt;
}

template <typename T>
ElfKernel parse_elf(std::span<const uint8_t> image) {
  using Ehdr = typename T::Ehdr;
  using Phdr = typename T::Phdr;
  const uint64_t size = image.size();
  if (size < sizeof(Ehdr))
    throw Error(fmt::format("truncated ELF image: {} bytes, no complete ELF header", size));
  const auto eh = load<Ehdr>(image, 0);
  if (eh.e_ident[EI_DATA] != ELFDATA2LSB) throw Error("ELF kernel is not little-endian");
  if (eh.e_machine != EM_X86_64 && eh.e_machine != EM_386)
    throw Error(fmt::format("ELF kernel is for machine {}, not x86-64 (62) or i386 (3)",
                            eh.e_machine));
  if (eh.e_type != ET_EXEC)
    throw Error(fmt::format("ELF kernel has type {}, not an executable (ET_EXEC)", eh.e_type));
  if (eh.e_phentsize != sizeof(Phdr))
    throw Error(fmt::format("ELF program header size {} is not {}", eh.e_phentsize, sizeof(Phdr)));
  if (eh.e_phnum == 0 || eh.e_phnum > kMaxPhnum)
    throw Error(fmt::format("ELF kernel has {} program headers (expected 1..{})", eh.e_phnum,
                            kMaxPhnum));
  if (eh.e_phoff > size || uint64_t(eh.e_phnum) * sizeof(Phdr) > size - eh.e_phoff)
    throw Error(fmt::format("truncated ELF kernel: program headers at {:#x} run past the end "
                            "({} bytes)",
                            uint64_t(eh.e_phoff), size));

  ElfKernel k;
  k.is64 = T::kClass == ELFCLASS64;
  k.machine = eh.e_machine;
  struct Virtual {
    uint64_t vaddr, paddr, mem_size;
  };
  std::vector<Virtual> virt;
  for (uint16_t i = 0; i < eh.e_phnum; ++i) {
    const auto ph = load<Phdr>(image, eh.e_phoff + uint64_t(i) * sizeof(Phdr));
    const uint64_t offset = ph.p_offset, filesz = ph.p_filesz, memsz = ph.p_memsz;
    const uint64_t paddr = ph.p_paddr, vaddr = ph.p_vaddr;
    if ((ph.p_type == PT_LOAD || ph.p_type == PT_NOTE) && (offset > size || filesz > size - offset))
      throw Error(fmt::format("truncated ELF kernel: segment {} ([{:#x}, +{:#x}) in the file) runs "
                              "past its end ({} bytes)",
                              i, offset, filesz, size));
    if (ph.p_type == PT_NOTE && !k.pvh_entry) k.pvh_entry = find_pvh_entry(image, offset, filesz);
    if (ph.p_type != PT_LOAD || memsz == 0) continue;
    if (filesz > memsz)
      throw Error(fmt::format("ELF segment {}: file size {:#x} exceeds memory size {:#x}", i,
                              filesz, memsz));
    if (paddr + memsz < paddr)
      throw Error(fmt::format("ELF segment {}: physical range {:#x} + {:#x} wraps around", i,
                              paddr, memsz));
    k.segments.push_back({offset, filesz, paddr, memsz});
    if (vaddr + memsz >= vaddr) virt.push_back({vaddr, paddr, memsz});
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
  const uint64_t entry = eh.e_entry;
  if (in_segment(entry)) {
    k.entry = entry;
  } else {
    auto it = std::find_if(virt.begin(), virt.end(), [&](const Virtual& v) {
      return entry >= v.vaddr && entry - v.vaddr < v.mem_size;
    });
    if (it == virt.end())
      throw Error(fmt::format("ELF entry point {:#x} is in no loadable segment", entry));
    k.entry = it->paddr + (entry - it->vaddr);
  }
  if (k.pvh_entry && !in_segment(*k.pvh_entry))
    throw Error(fmt::format("ELF kernel's PVH entry point {:#x} (Xen PHYS32_ENTRY note) is in no "
                            "loadable segment",
                            *k.pvh_entry));
  return k;
}

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

ElfKernel parse_any_elf(std::span<const uint8_t> image) {
  if (image.size() < EI_NIDENT || std::memcmp(image.data(), kElfMagic, 4) != 0)
    throw Error(fmt::format("not an ELF image ({} bytes, no ELF magic)", image.size()));
  switch (image[EI_CLASS]) {
    case ELFCLASS32: return parse_elf<Elf32Types>(image);
    case ELFCLASS64: return parse_elf<Elf64Types>(image);
    default: throw Error(fmt::format("ELF image has class {} (neither ELF32 nor ELF64)", image[EI_CLASS]));
  }
}

ElfKernel parse_elf_kernel(std::span<const uint8_t> image) {
  if (image.size() < sizeof(Elf64_Ehdr) || std::memcmp(image.data(), kElfMagic, 4) != 0)
    throw Error(fmt::format("not an ELF image ({} bytes, no complete ELF header)", image.size()));
  if (image[EI_CLASS] != ELFCLASS64)
    throw Error("ELF kernel is not ELF64 (32-bit ELF images boot only through multiboot or PVH)");
  ElfKernel k = parse_elf<Elf64Types>(image);
  if (k.machine != EM_X86_64)
    throw Error(fmt::format("ELF kernel is for machine {}, not x86-64 (62)", k.machine));
  return k;
}

}  // namespace keel::boot
