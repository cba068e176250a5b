#include "boot/linux_loader.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <lz4.h>
#include <lzma.h>
#include <zlib.h>
#include <zstd.h>

#include <sys/wait.h>
#include <unistd.h>

#include <cstring>
#include <functional>
#include <fstream>
#include <iterator>

#include "arch/x86/boot_state.h"
#include "base/error.h"
#include "boot/boot_params.h"
#include "boot/kernel_payload.h"
#include "boot/memory_map.h"
#include "default_guest.h"
#include "image_bytes.h"

namespace keel::boot {
namespace {

using ::testing::HasSubstr;

constexpr uint64_t kMiB = 1 << 20;

using testing::put;
std::vector<uint8_t> read_file(const std::filesystem::path& path) { return testing::read_file_bytes(path); }

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

void put_le32(std::vector<uint8_t>& v, uint32_t x) {
  for (int i = 0; i < 4; ++i) v.push_back(static_cast<uint8_t>(x >> (8 * i)));
}

std::string load_error_decompressing(GuestMemory& mem, std::span<const uint8_t> kernel) {
  try {
    load_linux_image(mem, kernel, {}, "", 0, /*decompress_on_host=*/true);
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


// --- bzImage payloads decompressed on the host (the emu engine's boot path) ---------------------

// Compresses `data` as the kernel build does for `c`: the format's stream, then (except for gzip,
// whose own trailer is it) the uncompressed size as le32.
std::vector<uint8_t> kernel_compress(PayloadCompression c, const std::vector<uint8_t>& data) {
  std::vector<uint8_t> out;
  switch (c) {
    case PayloadCompression::kGzip: {
      z_stream zs{};
      EXPECT_EQ(deflateInit2(&zs, 6, Z_DEFLATED, 16 + MAX_WBITS, 8, Z_DEFAULT_STRATEGY), Z_OK);
      out.resize(deflateBound(&zs, data.size()) + 32);
      zs.next_in = const_cast<Bytef*>(data.data());
      zs.avail_in = static_cast<uInt>(data.size());
      zs.next_out = out.data();
      zs.avail_out = static_cast<uInt>(out.size());
      EXPECT_EQ(deflate(&zs, Z_FINISH), Z_STREAM_END);
      out.resize(zs.total_out);
      deflateEnd(&zs);
      return out;  // gzip ends with ISIZE already
    }
    case PayloadCompression::kXz:
    case PayloadCompression::kLzma: {
      lzma_stream s = LZMA_STREAM_INIT;
      lzma_options_lzma opt;
      lzma_lzma_preset(&opt, 1);
      if (c == PayloadCompression::kXz) {
        EXPECT_EQ(lzma_easy_encoder(&s, 1, LZMA_CHECK_CRC32), LZMA_OK);
      } else {
        EXPECT_EQ(lzma_alone_encoder(&s, &opt), LZMA_OK);
      }
      out.resize(data.size() + data.size() / 2 + 4096);
      s.next_in = data.data();
      s.avail_in = data.size();
      s.next_out = out.data();
      s.avail_out = out.size();
      EXPECT_EQ(lzma_code(&s, LZMA_FINISH), LZMA_STREAM_END);
      out.resize(s.total_out);
      lzma_end(&s);
      break;
    }
    case PayloadCompression::kZstd:
      out.resize(ZSTD_compressBound(data.size()));
      out.resize(ZSTD_compress(out.data(), out.size(), data.data(), data.size(), 3));
      break;
    case PayloadCompression::kLz4: {  // the legacy frame: magic, then 8 MiB chunks
      put_le32(out, 0x184C2102);
      for (size_t pos = 0; pos < data.size(); pos += 8 << 20) {
        const int n = static_cast<int>(std::min<size_t>(8 << 20, data.size() - pos));
        std::vector<char> chunk(LZ4_compressBound(n));
        const int len = LZ4_compress_default(reinterpret_cast<const char*>(data.data() + pos),
                                             chunk.data(), n, static_cast<int>(chunk.size()));
        put_le32(out, static_cast<uint32_t>(len));
        out.insert(out.end(), chunk.begin(), chunk.begin() + len);
      }
      break;
    }
    default:
      ADD_FAILURE() << "no compressor for " << compression_name(c);
  }
  put_le32(out, static_cast<uint32_t>(data.size()));
  return out;
}

// A bzImage whose protected-mode code holds `payload` at payload_offset 0x100.
std::vector<uint8_t> bzimage_with_payload(const std::vector<uint8_t>& payload) {
  FakeBzImage f;
  f.code_size = static_cast<uint32_t>(0x100 + payload.size());
  auto img = f.build();
  const uint64_t code = (uint64_t(f.setup_sects) + 1) * 512;
  put<uint32_t>(img, 0x248, 0x100);
  put<uint32_t>(img, 0x24C, static_cast<uint32_t>(payload.size()));
  std::copy(payload.begin(), payload.end(), img.begin() + static_cast<ptrdiff_t>(code + 0x100));
  return img;
}

// Bytes that compress but are not trivially repetitive.
std::vector<uint8_t> sample_bytes(size_t n) {
  std::vector<uint8_t> v(n);
  uint32_t x = 12345;
  for (size_t i = 0; i < n; ++i) {
    x = x * 1103515245 + 12345;
    v[i] = static_cast<uint8_t>((i % 64 < 48) ? i / 64 : x >> 24);
  }
  return v;
}

class KernelPayload : public ::testing::TestWithParam<PayloadCompression> {};

TEST_P(KernelPayload, DecompressesWhatTheKernelBuildCompressed) {
  // Over 8 MiB, so the LZ4 legacy frame has more than one chunk.
  const auto data = sample_bytes((8 << 20) + 12345);
  const auto payload = kernel_compress(GetParam(), data);
  EXPECT_EQ(detect_compression(payload), GetParam());
  const auto out = decompress_payload(payload, 64 * kMiB);
  ASSERT_TRUE(out.has_value());
  EXPECT_TRUE(*out == data);
}

TEST_P(KernelPayload, CorruptTruncatedOrLyingStreamsAreRefused) {
  const auto data = sample_bytes(300000);
  const auto good = kernel_compress(GetParam(), data);
  auto refuses = [](std::vector<uint8_t> p, const char* what) {
    try {
      decompress_payload(p, 64 * kMiB);
    } catch (const Error& e) {
      EXPECT_THAT(e.what(), HasSubstr("kernel payload")) << what;
      return;
    }
    ADD_FAILURE() << what << ": accepted";
  };
  auto flipped = good;
  for (size_t i = 16; i + 8 < flipped.size(); i += 97) flipped[i] ^= 0x5A;
  refuses(flipped, "flipped bytes");
  auto truncated = good;
  truncated.erase(truncated.begin() + static_cast<ptrdiff_t>(good.size() / 2), truncated.end() - 4);
  refuses(truncated, "truncated");
  auto bigger = good;
  put<uint32_t>(bigger, bigger.size() - 4, static_cast<uint32_t>(data.size() + 1));
  refuses(bigger, "trailer one byte too large");
  auto smaller = good;
  put<uint32_t>(smaller, smaller.size() - 4, static_cast<uint32_t>(data.size() - 1));
  refuses(smaller, "trailer one byte too small");
  // A trailer over the limit is refused before anything is allocated.
  try {
    decompress_payload(good, data.size() - 1);
    ADD_FAILURE() << "over the limit: accepted";
  } catch (const Error& e) {
    EXPECT_THAT(e.what(), HasSubstr("more than"));
  }
}

INSTANTIATE_TEST_SUITE_P(Formats, KernelPayload,
                         ::testing::Values(PayloadCompression::kGzip, PayloadCompression::kXz,
                                           PayloadCompression::kLzma, PayloadCompression::kLz4,
                                           PayloadCompression::kZstd),
                         [](const auto& info) { return std::string(compression_name(info.param)); });

TEST(KernelPayloadFormats, UnsupportedFormatsAreLeftToTheGuest) {
  const std::vector<uint8_t> bzip2 = {'B', 'Z', 'h', '9', 1, 2, 3, 4, 5, 6};
  const std::vector<uint8_t> lzo = {0x89, 'L', 'Z', 'O', 0, 1, 2, 3, 4, 5};
  EXPECT_EQ(detect_compression(bzip2), PayloadCompression::kBzip2);
  EXPECT_EQ(detect_compression(lzo), PayloadCompression::kLzo);
  EXPECT_FALSE(decompress_payload(bzip2, kMiB).has_value());
  EXPECT_FALSE(decompress_payload(lzo, kMiB).has_value());
  EXPECT_FALSE(decompress_payload(std::vector<uint8_t>{0, 1, 2, 3, 4, 5, 6, 7}, kMiB).has_value());
}

TEST(BzImage, HostDecompressionBootsTheVmlinuxInsideAtItsLinkAddress) {
  GuestMemory mem(64 * kMiB);
  const auto elf = fake_elf({{0x100'0000, 0xFFFF'FFFF'8100'0000, 0x1000, 0x3000}},
                            0xFFFF'FFFF'8100'0000);
  const auto img = bzimage_with_payload(kernel_compress(PayloadCompression::kZstd, elf));
  const auto boot = load_linux_image(mem, img, {}, "console=ttyS0", 0xE0000, true);
  EXPECT_EQ(boot.format, KernelFormat::kBzImage);
  EXPECT_EQ(boot.host_decompressed, "zstd");
  EXPECT_EQ(boot.entry, 0x100'0000u);  // startup_64 of the vmlinux, not the decompressor's
  EXPECT_EQ(boot.kernel_addr, 0x100'0000u);
  EXPECT_EQ(mem.read_obj<uint8_t>(0x100'0FFF), 0xA0);  // the ELF segment, not the bzImage code
  EXPECT_EQ(mem.read_obj<uint8_t>(0x100'2FFF), 0);     // its bss
  const BootParams zp = zero_page(mem, boot);
  EXPECT_EQ(zp.hdr.version, 0x020F);     // the bzImage's own setup header
  EXPECT_EQ(zp.hdr.cmdline_size, 255u);
  EXPECT_EQ(zp.hdr.payload_length, img.size() - 5 * 512 - 0x100);
  expect_ranges_disjoint(boot);

  // Without the option the same image boots through its own decompressor.
  GuestMemory mem2(64 * kMiB);
  const auto plain = load_linux_image(mem2, img, {}, "console=ttyS0", 0xE0000, false);
  EXPECT_EQ(plain.entry, 0x100'0200u);
  EXPECT_TRUE(plain.host_decompressed.empty());
}

TEST(BzImage, HostDecompressionLeavesUnsupportedPayloadsToTheGuest) {
  GuestMemory mem(64 * kMiB);
  const auto img = bzimage_with_payload({'B', 'Z', 'h', '9', 1, 2, 3, 4, 5, 6, 7, 8});
  const auto boot = load_linux_image(mem, img, {}, "", 0, true);
  EXPECT_EQ(boot.entry, 0x100'0200u);
  EXPECT_TRUE(boot.host_decompressed.empty());
}

TEST(BzImage, HostDecompressionRefusesACorruptPayloadOrOneThatIsNoElf) {
  GuestMemory mem(64 * kMiB);
  auto payload = kernel_compress(PayloadCompression::kGzip, sample_bytes(100000));
  // Not an ELF inside: refused, naming the kernel and the payload.
  EXPECT_THAT(load_error_decompressing(mem, bzimage_with_payload(payload)),
              HasSubstr("kernel image: decompressed payload:"));
  payload[payload.size() / 2] ^= 0xFF;
  EXPECT_THAT(load_error_decompressing(mem, bzimage_with_payload(payload)),
              HasSubstr("kernel image: kernel payload (gzip) is corrupt"));
}

// The message of the Error `fn` throws ("" if none).
std::string error_of(const std::function<void()>& fn) {
  try {
    fn();
  } catch (const Error& e) {
    return e.what();
  }
  return {};
}

// How far `fn` raised the peak virtual size of a child process that runs it (VmPeak, in bytes):
// what the decoders allocate, whether or not they touch it.
uint64_t peak_growth(const std::function<void()>& fn) {
  auto vm_peak = [] {
    std::ifstream in("/proc/self/status");
    for (std::string line; std::getline(in, line);)
      if (line.rfind("VmPeak:", 0) == 0) return std::stoull(line.substr(7)) * 1024;
    return 0ull;
  };
  int fds[2];
  EXPECT_EQ(::pipe(fds), 0);
  pid_t pid = ::fork();
  if (pid == 0) {
    uint64_t before = vm_peak();
    try {
      fn();
    } catch (const Error&) {
    }
    uint64_t growth = vm_peak() - before;
    [[maybe_unused]] ssize_t n = ::write(fds[1], &growth, sizeof growth);
    ::_exit(0);
  }
  ::close(fds[1]);
  uint64_t growth = ~0ull;
  EXPECT_EQ(::read(fds[0], &growth, sizeof growth), static_cast<ssize_t>(sizeof growth));
  ::close(fds[0]);
  ::waitpid(pid, nullptr, 0);
  return growth;
}

TEST(KernelPayloadBounds, AnLzmaHeaderAskingForAFourGiBDictionaryCostsNoMoreThanItsOutput) {
  const auto data = sample_bytes(100000);
  auto payload = kernel_compress(PayloadCompression::kLzma, data);
  put<uint32_t>(payload, 1, 0xFFFF'FF00);  // the header's dictionary size: ~4 GiB
  std::optional<std::vector<uint8_t>> out;
  EXPECT_LT(peak_growth([&] {
              auto decoded = decompress_payload(payload, 64 * kMiB);
              if (!decoded || *decoded != data) ::_exit(1);
            }),
            32 * kMiB);
  out = decompress_payload(payload, 64 * kMiB);  // and it still decodes
  ASSERT_TRUE(out);
  EXPECT_EQ(*out, data);

  // The 53-byte version: that header, junk, and a trailer of 16 MiB.
  std::vector<uint8_t> tiny(13, 0);
  tiny[0] = 0x5D;
  put<uint32_t>(tiny, 1, 0xFFFF'FF00);
  put<uint64_t>(tiny, 5, ~0ull);
  for (int i = 0; i < 36; ++i) tiny.push_back(static_cast<uint8_t>(i * 37));
  put_le32(tiny, 16 << 20);
  ASSERT_EQ(tiny.size(), 53u);
  EXPECT_THROW(decompress_payload(tiny, 64 * kMiB), Error);
  EXPECT_LT(peak_growth([&] { decompress_payload(tiny, 64 * kMiB); }), 32 * kMiB + 16 * kMiB);
  // A header that disagrees with the trailer is refused before decoding.
  auto lying = kernel_compress(PayloadCompression::kLzma, data);
  put<uint64_t>(lying, 5, data.size() + 1);
  EXPECT_THAT(error_of([&] { decompress_payload(lying, 64 * kMiB); }),
              HasSubstr("its header says 100001 bytes, its trailer 100000"));
}

TEST(KernelPayloadBounds, AGzipTrailerClaimingGigabytesIsRefusedBeforeAllocating) {
  // A 16 GiB guest: RAM alone would allow the claim; the kernel's init_size (8 MiB) does not.
  GuestMemory mem(16ull << 30);
  auto payload = kernel_compress(PayloadCompression::kGzip, sample_bytes(4096));
  put<uint32_t>(payload, payload.size() - 4, 0xF000'0000);  // gzip's ISIZE: 3.75 GiB
  const auto img = bzimage_with_payload(payload);
  EXPECT_LT(peak_growth([&] { load_linux_image(mem, img, {}, "", 0xE0000, true); }), 64 * kMiB);
  EXPECT_THAT(load_error_decompressing(mem, img),
              HasSubstr("its trailer says 4026531840 bytes, more than the 8388608 allowed"));
}

TEST(KernelPayloadBounds, AZstdFrameThatDisagreesWithItsTrailerIsRefused) {
  const auto data = sample_bytes(50000);
  auto payload = kernel_compress(PayloadCompression::kZstd, data);
  put<uint32_t>(payload, payload.size() - 4, 40000);
  EXPECT_THAT(error_of([&] { decompress_payload(payload, 64 * kMiB); }),
              HasSubstr("its frame says 50000 bytes, its trailer 40000"));
}

TEST_F(DebianKernel, PayloadDecompressesOnTheHostToAVmlinuxAtSixteenMiB) {
  GuestMemory mem(512 * kMiB);
  const auto boot = load_linux(mem, {.kernel = kernel_path, .initrd = initrd_path,
                                     .cmdline = "console=ttyS0", .decompress_on_host = true});
  const BzImage bz = parse_bzimage(kernel);
  EXPECT_FALSE(boot.host_decompressed.empty());
  EXPECT_EQ(boot.kernel_addr, 0x100'0000u);  // LOAD_PHYSICAL_ADDR of an x86-64 kernel
  EXPECT_EQ(boot.entry, 0x100'0000u);        // startup_64
  // The decompressed kernel starts with startup_64's code, not the bzImage's (which it differs
  // from), and the initrd still lies above it.
  EXPECT_NE(0, std::memcmp(mem.read_span(boot.entry, 64).data(), kernel.data() + bz.kernel_offset, 64));
  EXPECT_GE(boot.initrd_addr, boot.kernel_addr + 16 * kMiB);
  EXPECT_EQ(zero_page(mem, boot).hdr.version, bz.protocol());
  expect_ranges_disjoint(boot);
}

}  // namespace
}  // namespace keel::boot
