#include "boot/linux_loader.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cstring>
#include <fstream>
#include <iterator>

#include "arch/x86/boot_state.h"
#include "base/error.h"
#include "boot/boot_params.h"
#include "boot/memory_map.h"
#include "default_guest.h"

namespace keel::boot {
namespace {

using ::testing::HasSubstr;

constexpr uint64_t kMiB = 1 << 20;

std::vector<uint8_t> read_file(const std::filesystem::path& path) {
  std::ifstream f(path, std::ios::binary);
  return {std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>()};
}

template <typename T>
void put(std::vector<uint8_t>& v, uint64_t offset, T value) {
  std::memcpy(v.data() + offset, &value, sizeof value);
}

// A minimal bzImage: a valid setup header and `code_size` bytes of protected-mode "code".
struct FakeBzImage {
  uint16_t version = 0x020F;
  uint16_t xloadflags = kXlfKernel64 | kXlfCanBeLoadedAbove4G;
  uint8_t setup_sects = 4;
  uint8_t loadflags = kLoadedHigh;
  uint8_t relocatable = 1;
  uint32_t kernel_alignment = 0x20'0000;
  uint64_t pref_address = 0x100'0000;
  uint32_t init_size = 0x80'0000;  // 8 MiB
  uint32_t initrd_addr_max = 0x7FFF'FFFF;
  uint32_t cmdline_size = 255;
  uint32_t code_size = 0x4000;
  uint32_t magic = kHdrSMagic;

  std::vector<uint8_t> build() const {
    const uint64_t code_offset = (uint64_t(setup_sects) + 1) * 512;
    std::vector<uint8_t> img(code_offset + code_size, 0);
    put<uint8_t>(img, 0x1F1, setup_sects);
    put<uint32_t>(img, 0x1F4, code_size / 16);
    put<uint16_t>(img, 0x1FE, kBootFlag);
    put<uint8_t>(img, 0x200, 0xEB);
    put<uint8_t>(img, 0x201, 0x6A);  // header ends at 0x26C
    put<uint32_t>(img, 0x202, magic);
    put<uint16_t>(img, 0x206, version);
    put<uint8_t>(img, 0x211, loadflags);
    put<uint32_t>(img, 0x214, 0x100000);
    put<uint32_t>(img, 0x22C, initrd_addr_max);
    put<uint32_t>(img, 0x230, kernel_alignment);
    put<uint8_t>(img, 0x234, relocatable);
    put<uint16_t>(img, 0x236, xloadflags);
    put<uint32_t>(img, 0x238, cmdline_size);
    put<uint64_t>(img, 0x258, pref_address);
    put<uint32_t>(img, 0x260, init_size);
    for (uint64_t i = 0; i < code_size; ++i) img[code_offset + i] = static_cast<uint8_t>(i * 7 + 1);
    return img;
  }
};

struct FakeSegment {
  uint64_t paddr, vaddr, file_size, mem_size;
};

// A minimal ELF64 x86-64 executable with the given PT_LOAD segments.
std::vector<uint8_t> fake_elf(const std::vector<FakeSegment>& segs, uint64_t entry,
                              uint8_t elf_class = 2, uint16_t machine = 62) {
  const uint64_t phoff = 64;
  uint64_t data = phoff + 56 * segs.size();
  std::vector<uint8_t> img(data, 0);
  const uint8_t ident[] = {0x7F, 'E', 'L', 'F', elf_class, 1, 1};
  std::memcpy(img.data(), ident, sizeof ident);
  put<uint16_t>(img, 16, 2);  // ET_EXEC
  put<uint16_t>(img, 18, machine);
  put<uint32_t>(img, 20, 1);
  put<uint64_t>(img, 24, entry);
  put<uint64_t>(img, 32, phoff);
  put<uint16_t>(img, 52, 64);
  put<uint16_t>(img, 54, 56);
  put<uint16_t>(img, 56, static_cast<uint16_t>(segs.size()));
  for (size_t i = 0; i < segs.size(); ++i) {
    const uint64_t ph = phoff + 56 * i;
    put<uint32_t>(img, ph, 1);  // PT_LOAD
    put<uint32_t>(img, ph + 4, 7);
    put<uint64_t>(img, ph + 8, img.size());
    put<uint64_t>(img, ph + 16, segs[i].vaddr);
    put<uint64_t>(img, ph + 24, segs[i].paddr);
    put<uint64_t>(img, ph + 32, segs[i].file_size);
    put<uint64_t>(img, ph + 40, segs[i].mem_size);
    put<uint64_t>(img, ph + 48, 0x1000);
    for (uint64_t b = 0; b < segs[i].file_size; ++b) img.push_back(static_cast<uint8_t>(0xA0 + i));
  }
  return img;
}

BootParams zero_page(const GuestMemory& mem, const LinuxBoot& boot) {
  return mem.read_obj<BootParams>(boot.zero_page);
}

std::string read_cstring(const GuestMemory& mem, uint64_t gpa) {
  std::string s;
  for (char c; (c = static_cast<char>(mem.read_obj<uint8_t>(gpa))) != 0; ++gpa) s.push_back(c);
  return s;
}

void expect_ranges_disjoint(const LinuxBoot& boot) {
  for (size_t i = 1; i < boot.ranges.size(); ++i)
    EXPECT_LE(boot.ranges[i - 1].end(), boot.ranges[i].gpa)
        << boot.ranges[i - 1].what << " overlaps " << boot.ranges[i].what;
}

std::string load_error(GuestMemory& mem, std::span<const uint8_t> kernel,
                       std::span<const uint8_t> initrd = {}, const std::string& cmdline = "") {
  try {
    load_linux_image(mem, kernel, initrd, cmdline);
  } catch (const Error& e) {
    return e.what();
  }
  return "(no error)";
}

// --- Debian's real kernel -----------------------------------------------------------------------

class DebianKernel : public ::testing::Test {
 protected:
  void SetUp() override {
    const auto& guest = testing::default_guest();
    if (!guest) GTEST_SKIP() << guest.why_missing;
    kernel_path = guest.kernel();
    initrd_path = guest.initrd();
    kernel = read_file(kernel_path);
    ASSERT_GT(kernel.size(), 1u << 20);
  }
  std::filesystem::path kernel_path, initrd_path;
  std::vector<uint8_t> kernel;
};

TEST_F(DebianKernel, ParsesAsA64BitRelocatableBzImage) {
  ASSERT_EQ(detect_kernel_format(kernel), KernelFormat::kBzImage);
  const BzImage bz = parse_bzimage(kernel);
  EXPECT_GE(bz.protocol(), 0x020C);
  EXPECT_TRUE(bz.header.xloadflags & kXlfKernel64);
  EXPECT_TRUE(bz.relocatable());
  EXPECT_EQ(bz.kernel_offset, (uint64_t(bz.header.setup_sects) + 1) * 512);
  EXPECT_EQ(bz.kernel_offset + bz.kernel_size, kernel.size());
  EXPECT_GT(bz.header.init_size, bz.kernel_size);
}

TEST_F(DebianKernel, LoadsAtPrefAddressWithInitrdCmdlineZeroPageAndE820) {
  GuestMemory mem(512 * kMiB);
  const std::string cmdline = "console=ttyS0 panic=-1";
  const auto boot = load_linux(mem, {.kernel = kernel_path, .initrd = initrd_path,
                                     .cmdline = cmdline, .acpi_rsdp_addr = 0xE0000});
  const BzImage bz = parse_bzimage(kernel);

  EXPECT_EQ(boot.format, KernelFormat::kBzImage);
  EXPECT_EQ(boot.protocol, bz.protocol());
  EXPECT_EQ(boot.kernel_addr, bz.header.pref_address);  // 16 MiB: fits in 512 MiB
  EXPECT_EQ(boot.entry, boot.kernel_addr + 0x200);
  EXPECT_EQ(boot.zero_page, kZeroPageAddr);
  // The protected-mode code is in guest memory byte for byte.
  auto loaded = mem.read_span(boot.kernel_addr, bz.kernel_size);
  EXPECT_EQ(0, std::memcmp(loaded.data(), kernel.data() + bz.kernel_offset, bz.kernel_size));

  // The initramfs: page-aligned, as high as allowed, intact, above the kernel's footprint.
  const auto initrd = read_file(initrd_path);
  EXPECT_EQ(boot.initrd_size, initrd.size());
  EXPECT_EQ(boot.initrd_addr % 4096, 0u);
  EXPECT_LE(boot.initrd_addr + boot.initrd_size, 512 * kMiB);
  EXPECT_GT(boot.initrd_addr + boot.initrd_size, 512 * kMiB - 4096);
  EXPECT_GE(boot.initrd_addr, boot.kernel_addr + bz.header.init_size);
  auto rd = mem.read_span(boot.initrd_addr, boot.initrd_size);
  EXPECT_EQ(0, std::memcmp(rd.data(), initrd.data(), initrd.size()));

  const BootParams zp = zero_page(mem, boot);
  EXPECT_EQ(zp.hdr.header, kHdrSMagic);
  EXPECT_EQ(zp.hdr.version, bz.protocol());
  EXPECT_EQ(zp.hdr.type_of_loader, 0xFF);
  EXPECT_EQ(zp.hdr.ramdisk_image, boot.initrd_addr);
  EXPECT_EQ(zp.hdr.ramdisk_size, boot.initrd_size);
  EXPECT_EQ(zp.hdr.init_size, bz.header.init_size);  // copied from the image
  EXPECT_EQ(zp.acpi_rsdp_addr, 0xE0000u);
  EXPECT_EQ(read_cstring(mem, zp.hdr.cmd_line_ptr), cmdline);
  ASSERT_GT(zp.e820_entries, 0);
  const auto e820 = build_e820(mem);
  ASSERT_EQ(zp.e820_entries, e820.size());
  for (size_t i = 0; i < e820.size(); ++i) {
    EXPECT_EQ(zp.e820_table[i].addr, e820[i].addr);
    EXPECT_EQ(zp.e820_table[i].size, e820[i].size);
    EXPECT_EQ(zp.e820_table[i].type, e820[i].type);
  }

  // vCPU 0's entry state: long mode through the shared boot-state builder.
  EXPECT_EQ(boot.cpu_state.rip, boot.entry);
  EXPECT_EQ(boot.cpu_state.gpr[x86::RSI], kZeroPageAddr);
  EXPECT_EQ(boot.cpu_state.gpr[x86::RSP], kBootStackPointer);
  EXPECT_EQ(boot.cpu_state.cr3, x86::kBootPml4Addr);
  EXPECT_TRUE(boot.cpu_state.efer & x86::kEferLMA);
  EXPECT_EQ(boot.cpu_state.cs.selector, x86::kBootCodeSelector);
  expect_ranges_disjoint(boot);
}

TEST_F(DebianKernel, FallsBackTo1MiBWhenPrefAddressDoesNotFit) {
  const BzImage bz = parse_bzimage(kernel);
  // Enough for the footprint from 2 MiB (1 MiB aligned up), not from pref_address.
  const uint64_t ram = (2 * kMiB + bz.header.init_size + 4 * kMiB) & ~(kMiB - 1);
  ASSERT_LT(ram, bz.header.pref_address + bz.header.init_size);
  GuestMemory mem(ram);
  const auto boot = load_linux_image(mem, kernel, {}, "quiet");
  EXPECT_EQ(boot.kernel_addr, kKernelLowAddr);
  EXPECT_EQ(boot.entry, kKernelLowAddr + 0x200);
  EXPECT_EQ(boot.initrd_size, 0u);
}

TEST_F(DebianKernel, RefusesRamTooSmallForTheKernel) {
  GuestMemory mem(32 * kMiB);
  EXPECT_THAT(load_error(mem, kernel), HasSubstr("does not fit in guest RAM"));
}

TEST_F(DebianKernel, RefusesAnInitrdThatDoesNotFit) {
  const BzImage bz = parse_bzimage(kernel);
  GuestMemory mem(128 * kMiB);
  // The kernel's footprint ends near 2 MiB + init_size; the rest is too small for this initrd.
  std::vector<uint8_t> initrd(128 * kMiB - bz.header.init_size, 0x5A);
  EXPECT_THAT(load_error(mem, kernel, initrd), HasSubstr("does not fit"));
}

TEST_F(DebianKernel, RefusesACommandLineLongerThanTheKernelAccepts) {
  const BzImage bz = parse_bzimage(kernel);
  GuestMemory mem(256 * kMiB);
  std::string cmdline(bz.header.cmdline_size + 1, 'x');
  EXPECT_THAT(load_error(mem, kernel, {}, cmdline), HasSubstr("accepts at most"));
  cmdline.resize(bz.header.cmdline_size);
  EXPECT_NO_THROW(load_linux_image(mem, kernel, {}, cmdline));
}

TEST_F(DebianKernel, TruncatedCopiesAreRefused) {
  GuestMemory mem(256 * kMiB);
  for (size_t cut : {size_t(0x100), size_t(0x1000), kernel.size() / 2}) {
    std::span<const uint8_t> part(kernel.data(), cut);
    EXPECT_THAT(load_error(mem, part), HasSubstr("truncated")) << "cut at " << cut;
  }
}

// --- files ---------------------------------------------------------------------------------------

TEST(LinuxLoader, MissingKernelOrInitrdFileIsNamed) {
  GuestMemory mem(64 * kMiB);
  try {
    load_linux(mem, {.kernel = "/nonexistent/vmlinuz"});
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_THAT(e.what(), HasSubstr("/nonexistent/vmlinuz"));
    EXPECT_THAT(e.what(), HasSubstr("No such file"));
  }
  const auto dir = std::filesystem::temp_directory_path() / ("keel-loader-" + std::to_string(getpid()));
  std::filesystem::create_directories(dir);
  {
    auto img = FakeBzImage{}.build();
    std::ofstream(dir / "bz", std::ios::binary).write(reinterpret_cast<char*>(img.data()), img.size());
  }
  try {
    load_linux(mem, {.kernel = dir / "bz", .initrd = dir / "missing-initrd"});
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_THAT(e.what(), HasSubstr("initrd"));
    EXPECT_THAT(e.what(), HasSubstr("missing-initrd"));
  }
  EXPECT_THAT([&] { load_linux(mem, {.kernel = dir}); },
              ::testing::ThrowsMessage<Error>(HasSubstr("not a regular file")));
  std::filesystem::remove_all(dir);
}

// --- malformed bzImages ------------------------------------------------------------------------

TEST(BzImage, SyntheticImageLoadsAtPrefAddress) {
  GuestMemory mem(64 * kMiB);
  auto img = FakeBzImage{}.build();
  std::vector<uint8_t> initrd(10000, 0x42);
  const auto boot = load_linux_image(mem, img, initrd, "root=/dev/vda", 0xE0000);
  EXPECT_EQ(boot.kernel_addr, 0x100'0000u);
  EXPECT_EQ(boot.entry, 0x100'0200u);
  EXPECT_EQ(mem.read_obj<uint8_t>(0x100'0000), 1);  // first code byte
  EXPECT_EQ(boot.initrd_addr, 64 * kMiB - 3 * 4096);  // 10000 bytes, rounded down to a page
  expect_ranges_disjoint(boot);
}

TEST(BzImage, NonRelocatableLoadsAt1MiB) {
  GuestMemory mem(64 * kMiB);
  FakeBzImage f;
  f.relocatable = 0;
  const auto boot = load_linux_image(mem, f.build(), {}, "");
  EXPECT_EQ(boot.kernel_addr, kKernelLowAddr);
}

TEST(BzImage, RefusesBadMagic) {
  GuestMemory mem(64 * kMiB);
  FakeBzImage f;
  f.magic = 0x12345678;
  EXPECT_THAT(load_error(mem, f.build()), HasSubstr("no \"HdrS\" magic"));
}

TEST(BzImage, RefusesTooOldProtocol) {
  GuestMemory mem(64 * kMiB);
  FakeBzImage f;
  f.version = 0x0204;
  EXPECT_THAT(load_error(mem, f.build()), HasSubstr("boot protocol 2.04 is too old"));
}

TEST(BzImage, Refuses32BitOnlyKernel) {
  GuestMemory mem(64 * kMiB);
  FakeBzImage f;
  f.xloadflags = 0;
  EXPECT_THAT(load_error(mem, f.build()), HasSubstr("no 64-bit entry point"));
  f.version = 0x0206;  // predates xloadflags: cannot be shown to be 64-bit
  f.xloadflags = kXlfKernel64;
  EXPECT_THAT(load_error(mem, f.build()), HasSubstr("no 64-bit entry point"));
}

TEST(BzImage, RefusesTruncatedImages) {
  GuestMemory mem(64 * kMiB);
  auto img = FakeBzImage{}.build();
  EXPECT_THAT(load_error(mem, std::span(img.data(), 0x1F0)), HasSubstr("truncated"));
  EXPECT_THAT(load_error(mem, std::span(img.data(), 0x300)), HasSubstr("truncated"));
  // Setup code present, part of the protected-mode code missing (syssize says more).
  EXPECT_THAT(load_error(mem, std::span(img.data(), img.size() - 16)), HasSubstr("truncated"));
  EXPECT_THAT(load_error(mem, {}), HasSubstr("truncated"));
}

TEST(BzImage, RefusesAKernelLargerThanRam) {
  GuestMemory mem(64 * kMiB);
  FakeBzImage f;
  f.init_size = 0x1000'0000;  // 256 MiB of runtime footprint
  EXPECT_THAT(load_error(mem, f.build()), HasSubstr("does not fit in guest RAM"));
}

TEST(BzImage, RefusesBadAlignmentAndZImage) {
  GuestMemory mem(64 * kMiB);
  FakeBzImage f;
  f.kernel_alignment = 0x30'0000;
  EXPECT_THAT(load_error(mem, f.build()), HasSubstr("power of two"));
  FakeBzImage z;
  z.loadflags = 0;
  EXPECT_THAT(load_error(mem, z.build()), HasSubstr("zImage"));
}

TEST(BzImage, RefusesNulInCommandLine) {
  GuestMemory mem(64 * kMiB);
  EXPECT_THAT(load_error(mem, FakeBzImage{}.build(), {}, std::string("a\0b", 3)),
              HasSubstr("NUL"));
}

// --- ELF vmlinux -----------------------------------------------------------------------------

TEST(ElfKernel, LoadsSegmentsAtPhysicalAddressesAndZeroesBss) {
  GuestMemory mem(64 * kMiB);
  // Dirty the bss area first: the loader must clear it.
  std::vector<uint8_t> junk(0x2000, 0xEE);
  mem.write(0x100'1000, junk.data(), junk.size());
  auto img = fake_elf({{0x100'0000, 0xFFFF'FFFF'8100'0000, 0x1000, 0x3000}}, 0x100'0040);
  const auto boot = load_linux_image(mem, img, {}, "console=ttyS0", 0xE0000);
  EXPECT_EQ(boot.format, KernelFormat::kElf);
  EXPECT_EQ(boot.entry, 0x100'0040u);
  EXPECT_EQ(boot.kernel_addr, 0x100'0000u);
  EXPECT_EQ(mem.read_obj<uint8_t>(0x100'0FFF), 0xA0);
  EXPECT_EQ(mem.read_obj<uint8_t>(0x100'1000), 0);
  EXPECT_EQ(mem.read_obj<uint8_t>(0x100'2FFF), 0);
  const BootParams zp = zero_page(mem, boot);
  EXPECT_EQ(zp.hdr.header, kHdrSMagic);
  EXPECT_GE(zp.hdr.version, 0x020E);  // so that the kernel reads acpi_rsdp_addr
  EXPECT_EQ(zp.acpi_rsdp_addr, 0xE0000u);
  EXPECT_EQ(read_cstring(mem, zp.hdr.cmd_line_ptr), "console=ttyS0");
}

TEST(ElfKernel, ConvertsAVirtualEntryToPhysical) {
  GuestMemory mem(64 * kMiB);
  auto img = fake_elf({{0x100'0000, 0xFFFF'FFFF'8100'0000, 0x1000, 0x1000}},
                      0xFFFF'FFFF'8100'0123);
  EXPECT_EQ(load_linux_image(mem, img, {}, "").entry, 0x100'0123u);
}

TEST(ElfKernel, RefusesSegmentsOutsideRamOrOverBootArea) {
  GuestMemory mem(64 * kMiB);
  EXPECT_THAT(load_error(mem, fake_elf({{0x400'0000 - 0x800, 0, 0x1000, 0x1000}}, 0x400'0000 - 0x800)),
              HasSubstr("outside guest RAM"));
  EXPECT_THAT(load_error(mem, fake_elf({{0xC000'0000, 0, 0x100, 0x100}}, 0xC000'0000)),
              HasSubstr("outside guest RAM"));
  EXPECT_THAT(load_error(mem, fake_elf({{kZeroPageAddr, 0, 0x100, 0x100}}, kZeroPageAddr)),
              HasSubstr("boot area"));
}

TEST(ElfKernel, RefusesMalformedHeaders) {
  GuestMemory mem(64 * kMiB);
  const FakeSegment seg{0x100'0000, 0x100'0000, 0x100, 0x100};
  EXPECT_THAT(load_error(mem, fake_elf({seg}, 0x100'0000, /*class=*/1)), HasSubstr("ELF64"));
  EXPECT_THAT(load_error(mem, fake_elf({seg}, 0x100'0000, 2, /*machine=*/3)), HasSubstr("x86-64"));
  EXPECT_THAT(load_error(mem, fake_elf({seg}, 0x900'0000)), HasSubstr("entry point"));
  EXPECT_THAT(load_error(mem, fake_elf({seg, {0x100'0080, 0, 0x100, 0x100}}, 0x100'0000)),
              HasSubstr("overlap"));
  EXPECT_THAT(load_error(mem, fake_elf({{0x100'0000, 0, 0x200, 0x100}}, 0x100'0000)),
              HasSubstr("exceeds memory size"));
  auto img = fake_elf({seg}, 0x100'0000);
  EXPECT_THAT(load_error(mem, std::span(img.data(), img.size() - 1)), HasSubstr("truncated"));
  EXPECT_THAT(load_error(mem, std::span(img.data(), 100)), HasSubstr("truncated"));
  EXPECT_THAT(load_error(mem, std::span(img.data(), 40)), HasSubstr("no complete ELF header"));
  EXPECT_THAT(load_error(mem, fake_elf({}, 0x100'0000)), HasSubstr("program headers"));
}

// --- e820 --------------------------------------------------------------------------------------

TEST(E820, LowRamLegacyHoleAndPlatformMmioAreReported) {
  GuestMemory mem(512 * kMiB);
  const auto map = build_e820(mem);
  ASSERT_EQ(map.size(), 4u);
  EXPECT_EQ(map[0].addr, 0u);
  EXPECT_EQ(map[0].size, 0xA0000u);
  EXPECT_EQ(map[0].type, kE820Ram);
  EXPECT_EQ(map[1].addr, 0xA0000u);
  EXPECT_EQ(map[1].size, 0x60000u);
  EXPECT_EQ(map[1].type, kE820Reserved);
  EXPECT_EQ(map[2].addr, 0x100000u);
  EXPECT_EQ(map[2].size, 512 * kMiB - 0x100000);
  EXPECT_EQ(map[2].type, kE820Ram);
  EXPECT_EQ(map[3].addr, kPlatformMmioStart);
  EXPECT_EQ(map[3].addr + map[3].size, kMmioHoleEnd);
  EXPECT_EQ(map[3].type, kE820Reserved);
}

TEST(E820, RamAboveTheHoleStartsAt4GiB) {
  GuestMemory mem(kMmioHoleStart + 256 * kMiB);  // lazily mapped: nothing is touched
  const auto map = build_e820(mem);
  ASSERT_EQ(map.size(), 5u);
  EXPECT_EQ(map[2].addr + map[2].size, kMmioHoleStart);
  // The PCI window [3 GiB, 0xFEC00000) is a gap, so Linux can put BARs there.
  EXPECT_EQ(map[3].addr, kPlatformMmioStart);
  EXPECT_EQ(map[4].addr, kMmioHoleEnd);
  EXPECT_EQ(map[4].size, 256 * kMiB);
  EXPECT_EQ(map[4].type, kE820Ram);
}

}  // namespace
}  // namespace keel::boot
