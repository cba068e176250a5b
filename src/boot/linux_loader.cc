#include "boot/linux_loader.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <fmt/format.h>

#include <algorithm>
#include <cstring>
#include <functional>

#include "arch/x86/boot_state.h"
#include "base/error.h"
#include "base/fd.h"
#include "boot/kernel_payload.h"
#include "boot/memory_map.h"

namespace keel::boot {

namespace {

// The x86 kernel's COMMAND_LINE_SIZE (minus the NUL) when the image does not say (ELF vmlinux).
constexpr uint32_t kDefaultCmdlineSize = 2047;
// Highest initrd address for a vmlinux, which carries no setup header (the bzImage default).
constexpr uint32_t kDefaultInitrdAddrMax = 0x7FFF'FFFF;

uint64_t align_up(uint64_t v, uint64_t a) { return (v + a - 1) & ~(a - 1); }
uint64_t align_down(uint64_t v, uint64_t a) { return v & ~(a - 1); }

std::string mib(uint64_t bytes) { return fmt::format("{:.1f} MiB", double(bytes) / (1 << 20)); }

// Where the initramfs comes from: a file read straight into guest memory, or bytes in memory.
struct InitrdSource {
  std::string name;  // for messages
  uint64_t size = 0;
  std::function<void(std::span<uint8_t>)> fill;
};

UniqueFd open_regular_file(const std::filesystem::path& path, const char* what, uint64_t* size) {
  UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (!fd) throw_errno(fmt::format("{} {}", what, path.string()));
  struct stat st {};
  if (::fstat(fd.get(), &st) != 0) throw_errno(fmt::format("{} {}: fstat", what, path.string()));
  if (!S_ISREG(st.st_mode)) throw Error(fmt::format("{} {}: not a regular file", what, path.string()));
  *size = static_cast<uint64_t>(st.st_size);
  return fd;
}

void read_exactly(int fd, std::span<uint8_t> dst, const std::string& what) {
  uint64_t done = 0;
  while (done < dst.size()) {
    ssize_t n = ::pread(fd, dst.data() + done, dst.size() - done, static_cast<off_t>(done));
    if (n < 0) {
      if (errno == EINTR) continue;
      throw_errno(what + ": read");
    }
    if (n == 0) throw Error(fmt::format("{}: file shrank while reading ({} of {} bytes)", what, done,
                                        dst.size()));
    done += static_cast<uint64_t>(n);
  }
}

uint64_t low_ram_end(const GuestMemory& memory) {
  const auto& r = memory.regions().front();
  return r.gpa + r.size;
}

class Loader {
 public:
  Loader(GuestMemory& memory, std::string kernel_name, bool decompress_on_host)
      : memory_(memory),
        name_(std::move(kernel_name)),
        low_end_(low_ram_end(memory)),
        decompress_on_host_(decompress_on_host) {}

  LinuxBoot load(std::span<const uint8_t> kernel, const InitrdSource& initrd,
                 const std::string& cmdline, uint64_t rsdp) {
    if (low_end_ < kKernelLowAddr)
      throw Error(fmt::format("guest RAM ({}) is too small to boot Linux", mib(memory_.ram_size())));
    BootParams zp{};
    uint32_t cmdline_limit = kDefaultCmdlineSize;
    uint32_t initrd_addr_max = kDefaultInitrdAddrMax;

    result_.format = detect_kernel_format(kernel);
    try {
      if (result_.format == KernelFormat::kBzImage) {
        const BzImage bz = parse_bzimage(kernel);
        if (!decompress_on_host_ || !load_payload(bz, kernel)) load_bzimage(bz, kernel);
        std::memcpy(reinterpret_cast<uint8_t*>(&zp) + kSetupHeaderOffset,
                    kernel.data() + kSetupHeaderOffset,
                    std::min<uint64_t>(bz.header_end, 0x290) - kSetupHeaderOffset);
        cmdline_limit = bz.header.cmdline_size;
        initrd_addr_max = bz.header.initrd_addr_max;
      } else {
        load_elf(parse_elf_kernel(kernel), kernel);
        zp.hdr.boot_flag = kBootFlag;
        zp.hdr.header = kHdrSMagic;
        zp.hdr.version = 0x020F;  // so the kernel reads acpi_rsdp_addr (2.14+)
        zp.hdr.loadflags = kLoadedHigh;
        zp.hdr.kernel_alignment = 0x20'0000;
        zp.hdr.cmdline_size = cmdline_limit;
        zp.hdr.initrd_addr_max = initrd_addr_max;
      }
    } catch (const Error& e) {
      throw Error(fmt::format("{}: {}", name_, e.what()));
    }
    add_range("kernel", result_.kernel_addr, kernel_end_ - result_.kernel_addr);

    write_cmdline(cmdline, cmdline_limit);
    if (initrd.size > 0) load_initrd(initrd, initrd_addr_max);

    // The zero page: the image's setup header plus what the loader decides.
    zp.sentinel = 0;
    zp.hdr.type_of_loader = kTypeOfLoaderUndefined;
    zp.hdr.code32_start = static_cast<uint32_t>(result_.kernel_addr);
    zp.hdr.cmd_line_ptr = static_cast<uint32_t>(kCmdlineAddr);
    zp.ext_cmd_line_ptr = 0;
    zp.hdr.ramdisk_image = static_cast<uint32_t>(result_.initrd_addr);
    zp.hdr.ramdisk_size = static_cast<uint32_t>(result_.initrd_size);
    zp.ext_ramdisk_image = static_cast<uint32_t>(result_.initrd_addr >> 32);
    zp.ext_ramdisk_size = static_cast<uint32_t>(result_.initrd_size >> 32);
    zp.hdr.setup_data = 0;         // keel passes no setup_data chain
    zp.hdr.hardware_subarch = 0;   // a normal PC
    zp.acpi_rsdp_addr = rsdp;
    const auto e820 = build_e820(memory_);
    if (e820.size() > kE820MaxEntries) throw Error("e820 map has too many entries for the zero page");
    std::copy(e820.begin(), e820.end(), zp.e820_table);
    zp.e820_entries = static_cast<uint8_t>(e820.size());
    memory_.write_obj(kZeroPageAddr, zp);
    add_range("zero page", kZeroPageAddr, sizeof zp);

    // GDT, page tables and the register state come from the shared boot-state builder.
    result_.zero_page = kZeroPageAddr;
    result_.stack = kBootStackPointer;
    result_.cpu_state =
        x86::setup_long_mode(memory_, {.rip = result_.entry, .rsp = result_.stack,
                                       .rsi = result_.zero_page, .bsp = true});
    add_range("gdt", x86::kBootGdtAddr, x86::kBootGdtLimit + 1);
    add_range("boot stack", kBootStackBottom, kBootStackPointer + 0x10 - kBootStackBottom);
    add_range("page tables", x86::kBootPml4Addr, x86::kBootTablesEnd - x86::kBootPml4Addr);
    std::sort(result_.ranges.begin(), result_.ranges.end(),
              [](const BootRange& a, const BootRange& b) { return a.gpa < b.gpa; });
    return std::move(result_);
  }

 private:
  void add_range(std::string what, uint64_t gpa, uint64_t size) {
    result_.ranges.push_back({std::move(what), gpa, size});
  }

  // The protected-mode code goes at pref_address when the kernel is relocatable and its whole
  // footprint (init_size from its runtime address) fits below the top of low RAM, else at 1 MiB.
  void load_bzimage(const BzImage& bz, std::span<const uint8_t> image) {
    const SetupHeader& h = bz.header;
    const bool has_pref = bz.protocol() >= 0x020A && h.pref_address != 0;
    auto footprint_end = [&](uint64_t load) {
      uint64_t runtime = load;
      if (bz.relocatable())
        runtime = align_up(load, h.kernel_alignment);
      else if (has_pref)
        runtime = std::max<uint64_t>(load, h.pref_address);
      return std::max(load + bz.kernel_size, runtime + h.init_size);
    };
    uint64_t load = kKernelLowAddr;
    if (bz.relocatable() && has_pref && h.pref_address >= kKernelLowAddr &&
        h.pref_address % h.kernel_alignment == 0 && h.pref_address < low_end_ &&
        footprint_end(h.pref_address) <= low_end_)
      load = h.pref_address;
    const uint64_t end = footprint_end(load);
    if (end > low_end_)
      throw Error(fmt::format("kernel does not fit in guest RAM: it needs [{:#x}, {:#x}) ({} of "
                              "code, init_size {}), but RAM below the MMIO hole ends at {:#x} "
                              "(guest RAM {})",
                              load, end, mib(bz.kernel_size), mib(h.init_size), low_end_,
                              mib(memory_.ram_size())));
    memory_.write(load, image.data() + bz.kernel_offset, bz.kernel_size);
    result_.protocol = bz.protocol();
    result_.kernel_addr = load;
    result_.entry = load + 0x200;  // startup_64, the 64-bit entry
    kernel_end_ = end;
  }

  // The vmlinux inside the bzImage, decompressed here, at its link address; the zero page keeps
  // the bzImage's setup header. False when keel has no decompressor for the payload's format.
  bool load_payload(const BzImage& bz, std::span<const uint8_t> image) {
    const auto payload = bzimage_payload(bz, image);
    if (payload.empty()) return false;
    auto vmlinux = decompress_payload(payload, payload_output_limit(bz, memory_.ram_size()));
    if (!vmlinux) return false;
    try {
      load_elf(parse_elf_kernel(*vmlinux), *vmlinux);
    } catch (const Error& e) {
      throw Error(fmt::format("decompressed payload: {}", e.what()));
    }
    result_.protocol = bz.protocol();
    result_.host_decompressed = compression_name(detect_compression(payload));
    return true;
  }

  void load_elf(const ElfKernel& k, std::span<const uint8_t> image) {
    for (const auto& s : k.segments) {
      if (s.paddr < kKernelLowAddr)
        throw Error(fmt::format("ELF segment [{:#x}, {:#x}) overlaps keel's boot area below 1 MiB "
                                "(zero page at {:#x})",
                                s.paddr, s.paddr + s.mem_size, kZeroPageAddr));
      if (!memory_.contains(s.paddr, s.mem_size))
        throw Error(fmt::format("ELF segment [{:#x}, {:#x}) is outside guest RAM ({})", s.paddr,
                                s.paddr + s.mem_size, mib(memory_.ram_size())));
    }
    for (const auto& s : k.segments) {
      auto dst = memory_.write_span(s.paddr, s.mem_size);
      std::memcpy(dst.data(), image.data() + s.file_offset, s.file_size);
      std::fill(dst.begin() + static_cast<ptrdiff_t>(s.file_size), dst.end(), 0);
    }
    result_.kernel_addr = k.lowest;
    result_.entry = k.entry;
    kernel_end_ = k.end;
  }

  void write_cmdline(const std::string& cmdline, uint32_t limit) {
    if (cmdline.find('\0') != std::string::npos)
      throw Error("kernel command line contains a NUL byte");
    const uint64_t max = std::min<uint64_t>(limit, kCmdlineMax - 1);
    if (cmdline.size() > max)
      throw Error(fmt::format("kernel command line is {} bytes; {} accepts at most {}",
                              cmdline.size(), name_, max));
    memory_.write(kCmdlineAddr, cmdline.c_str(), cmdline.size() + 1);
    add_range("cmdline", kCmdlineAddr, cmdline.size() + 1);
  }

  // As high as it fits below min(initrd_addr_max, top of low RAM), page-aligned, above the kernel.
  void load_initrd(const InitrdSource& initrd, uint32_t initrd_addr_max) {
    const uint64_t top = std::min<uint64_t>(uint64_t(initrd_addr_max) + 1, low_end_);
    const uint64_t floor = align_up(kernel_end_, kPageSize);
    if (initrd.size > top || align_down(top - initrd.size, kPageSize) < floor)
      throw Error(fmt::format("{} ({}) does not fit: it must lie between the kernel's end {:#x} and "
                              "{:#x} (min of initrd_addr_max {:#x} and the top of low RAM; guest "
                              "RAM {})",
                              initrd.name, mib(initrd.size), floor, top, initrd_addr_max,
                              mib(memory_.ram_size())));
    const uint64_t addr = align_down(top - initrd.size, kPageSize);
    initrd.fill(memory_.write_span(addr, initrd.size));
    result_.initrd_addr = addr;
    result_.initrd_size = initrd.size;
    add_range("initrd", addr, initrd.size);
  }

  GuestMemory& memory_;
  std::string name_;
  uint64_t low_end_;
  bool decompress_on_host_;
  uint64_t kernel_end_ = 0;
  LinuxBoot result_;
};

}  // namespace

uint32_t check_kernel_image(std::span<const uint8_t> kernel) {
  uint32_t limit = kDefaultCmdlineSize;
  if (detect_kernel_format(kernel) == KernelFormat::kBzImage)
    limit = parse_bzimage(kernel).header.cmdline_size;
  else
    parse_elf_kernel(kernel);
  return static_cast<uint32_t>(std::min<uint64_t>(limit, kCmdlineMax - 1));
}

LinuxBoot load_linux(GuestMemory& memory, const LinuxBootSpec& spec) {
  const std::string kernel_name = "kernel " + spec.kernel.string();
  uint64_t kernel_size = 0;
  UniqueFd kfd = open_regular_file(spec.kernel, "kernel", &kernel_size);
  if (kernel_size > memory.ram_size())
    throw Error(fmt::format("{} ({}) is larger than guest RAM ({})", kernel_name, mib(kernel_size),
                            mib(memory.ram_size())));
  std::vector<uint8_t> kernel(kernel_size);
  read_exactly(kfd.get(), kernel, kernel_name);
  kfd.reset();

  InitrdSource initrd;
  UniqueFd ifd;
  if (!spec.initrd.empty()) {
    initrd.name = "initrd " + spec.initrd.string();
    ifd = open_regular_file(spec.initrd, "initrd", &initrd.size);
    initrd.fill = [&](std::span<uint8_t> dst) { read_exactly(ifd.get(), dst, initrd.name); };
  }
  return Loader(memory, kernel_name, spec.decompress_on_host)
      .load(kernel, initrd, spec.cmdline, spec.acpi_rsdp_addr);
}

LinuxBoot load_linux_image(GuestMemory& memory, std::span<const uint8_t> kernel,
                           std::span<const uint8_t> initrd, const std::string& cmdline,
                           uint64_t acpi_rsdp_addr, bool decompress_on_host) {
  InitrdSource source{"initrd", initrd.size(), [&](std::span<uint8_t> dst) {
                        std::memcpy(dst.data(), initrd.data(), initrd.size());
                      }};
  return Loader(memory, "kernel image", decompress_on_host)
      .load(kernel, source, cmdline, acpi_rsdp_addr);
}

}  // namespace keel::boot
