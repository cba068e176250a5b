// Multiboot v1 and PVH kernels: the header and note parsers on crafted images (what is refused and
// why), the loaders' structures in guest memory, and the purpose-built guests
// (tests/guests/multiboot_*.asm, pvh.asm) booted by `keel run` on each engine, reporting on COM1
// what they were given and exiting through isa-debug-exit.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>

#include <xen/arch-x86/hvm/start_info.h>

#include "arch/x86/boot_state.h"
#include "base/error.h"
#include "boot/memory_map.h"
#include "boot/multiboot.h"
#include "boot/protected_mode_boot.h"
#include "engine/engine_factory.h"
#include "default_guest.h"
#include "image_bytes.h"
#include "guest_harness.h"
#include "guest_shell.h"
#include "keel_process.h"

namespace keel::boot {
namespace {

using ::testing::HasSubstr;

constexpr uint64_t kMiB = 1 << 20;

using testing::put;
std::vector<uint8_t> read_file(const std::filesystem::path& path) { return testing::read_file_bytes(path); }

std::vector<uint8_t> guest(const std::string& name) {
  auto bytes = read_file(testing::test_guest(name));
  EXPECT_FALSE(bytes.empty()) << name;
  return bytes;
}

std::string read_cstring(const GuestMemory& mem, uint64_t gpa) {
  std::string s;
  for (char c; (c = static_cast<char>(mem.read_obj<uint8_t>(gpa))) != 0; ++gpa) s.push_back(c);
  return s;
}

// A flat a.out-kludge kernel: 0x100 bytes of code at load_addr with the header at offset 0x40.
struct Kludge {
  uint32_t flags = kMbAoutKludge | kMbMemoryInfo;
  uint32_t header_addr = 0x200040, load_addr = 0x200000, load_end_addr = 0, bss_end_addr = 0,
           entry_addr = 0x200000;
  uint32_t checksum_delta = 0;
  size_t size = 0x100;
};
std::vector<uint8_t> kludge_image(const Kludge& k) {
  std::vector<uint8_t> img(k.size, 0x90);
  put<uint32_t>(img, 0x40, kMultibootMagic);
  put<uint32_t>(img, 0x44, k.flags);
  put<uint32_t>(img, 0x48, -(kMultibootMagic + k.flags) + k.checksum_delta);
  put<uint32_t>(img, 0x4C, k.header_addr);
  put<uint32_t>(img, 0x50, k.load_addr);
  put<uint32_t>(img, 0x54, k.load_end_addr);
  put<uint32_t>(img, 0x58, k.bss_end_addr);
  put<uint32_t>(img, 0x5C, k.entry_addr);
  return img;
}

std::string parse_error(std::span<const uint8_t> img) {
  try {
    parse_multiboot(img);
  } catch (const Error& e) {
    return e.what();
  }
  return "(parsed)";
}

TEST(MultibootHeader, AoutKludgeGivesTheLoadRange) {
  Kludge k;
  k.bss_end_addr = 0x201000;
  k.entry_addr = 0x200010;
  const auto img = kludge_image(k);
  const auto found = find_multiboot_header(img);
  ASSERT_TRUE(found);
  EXPECT_EQ(found->offset, 0x40u);
  const MultibootKernel mb = parse_multiboot(img);
  ASSERT_EQ(mb.segments.size(), 1u);
  EXPECT_EQ(mb.segments[0].file_offset, 0u);
  EXPECT_EQ(mb.segments[0].file_size, 0x100u);
  EXPECT_EQ(mb.segments[0].paddr, 0x200000u);
  EXPECT_EQ(mb.segments[0].mem_size, 0x1000u);
  EXPECT_EQ(mb.entry, 0x200010u);
  EXPECT_EQ(mb.end, 0x201000u);
}

TEST(MultibootHeader, RefusesMalformedHeaders) {
  auto with = [](auto change) {
    Kludge k;
    change(k);
    return parse_error(kludge_image(k));
  };
  EXPECT_THAT(with([](Kludge& k) { k.checksum_delta = 1; }), HasSubstr("no multiboot header"));
  EXPECT_THAT(with([](Kludge& k) { k.flags |= 1u << 5; }), HasSubstr("requires features"));
  EXPECT_THAT(with([](Kludge& k) { k.load_addr = 0x200080; }), HasSubstr("above header_addr"));
  EXPECT_THAT(with([](Kludge& k) { k.load_addr = 0x100000; }), HasSubstr("before the file"));
  EXPECT_THAT(with([](Kludge& k) { k.load_end_addr = 0x200200; }), HasSubstr("the file has"));
  EXPECT_THAT(with([](Kludge& k) { k.load_end_addr = 0x1FFFFF; }), HasSubstr("not above load_addr"));
  EXPECT_THAT(with([](Kludge& k) { k.bss_end_addr = 0x200080; }), HasSubstr("bss_end_addr"));
  EXPECT_THAT(with([](Kludge& k) { k.entry_addr = 0x300000; }), HasSubstr("entry_addr"));
  EXPECT_THAT(with([](Kludge& k) {
                k.header_addr = 0xFFFFFFC0;
                k.load_addr = k.entry_addr = 0xFFFFFF80;
              }),
              HasSubstr("above 4 GiB"));
  EXPECT_THAT(with([](Kludge& k) { k.flags &= ~kMbAoutKludge; }), HasSubstr("neither ELF nor"));
  // The address fields cut off by the end of the file.
  auto img = kludge_image({});
  img.resize(0x50);
  EXPECT_THAT(parse_error(img), HasSubstr("ends before its address fields"));
  // A header past the first 8 KiB does not count.
  std::vector<uint8_t> late(0x3000, 0);
  put<uint32_t>(late, 0x2000, kMultibootMagic);
  put<uint32_t>(late, 0x2008, -kMultibootMagic);
  EXPECT_FALSE(find_multiboot_header(late));
}

TEST(MultibootHeader, ElfKernelsMustBeElf32) {
  auto img = guest("multiboot_elf");
  EXPECT_EQ(detect_boot_protocol(img), BootProtocol::kMultiboot);
  const MultibootKernel mb = parse_multiboot(img);
  EXPECT_EQ(mb.segments.at(0).paddr, 0x400000u);
  EXPECT_EQ(mb.segments.at(0).mem_size, img.size() + 0x1000);
  img[4] = 2;  // ELFCLASS64: the headers no longer parse as ELF64 either
  EXPECT_THAT(parse_error(img), HasSubstr("ELF"));
}

TEST(BootProtocol, DetectedFromTheImage) {
  EXPECT_EQ(detect_boot_protocol(guest("multiboot_aout")), BootProtocol::kMultiboot);
  EXPECT_EQ(detect_boot_protocol(guest("pvh")), BootProtocol::kPvh);
  EXPECT_EQ(detect_boot_protocol(guest("serial_hello")), BootProtocol::kLinux);  // no header
  // A bzImage that happens to carry a multiboot header stays Linux.
  auto bz = kludge_image({});
  bz.resize(0x400);
  put<uint32_t>(bz, 0x202, kHdrSMagic);
  EXPECT_EQ(detect_boot_protocol(bz), BootProtocol::kLinux);
}

TEST(ModuleList, QemuSyntax) {
  auto list = parse_module_list("/a/mod1 arg=1 b,/a/mod2,/x,,y z");
  ASSERT_EQ(list.size(), 3u);
  EXPECT_EQ(list[0].path, "/a/mod1");
  EXPECT_EQ(list[0].cmdline, "/a/mod1 arg=1 b");
  EXPECT_EQ(list[1].path, "/a/mod2");
  EXPECT_EQ(list[1].cmdline, "/a/mod2");
  EXPECT_EQ(list[2].path, "/x,y");
  EXPECT_EQ(list[2].cmdline, "/x,y z");
  EXPECT_THROW(parse_module_list("a,,,"), Error);
  EXPECT_THROW(parse_module_list(""), Error);
}

TEST(MultibootLoader, FillsTheInformationStructure) {
  GuestMemory mem(64 * kMiB);
  const auto kernel = guest("multiboot_elf");
  std::vector<BootModule> modules = {{"m0", {'a', 'b', 'c'}, "m0 x=1"}, {"m1", std::vector<uint8_t>(5000, 'z'), "m1"}};
  const auto boot = load_multiboot(mem, kernel, "k", modules, "k console=none");
  const auto& st = boot.cpu_state;
  EXPECT_EQ(st.gpr[x86::RAX], kMultibootBootloaderMagic);
  EXPECT_EQ(st.gpr[x86::RBX], boot.info_addr);
  EXPECT_EQ(st.rip, boot.entry);
  EXPECT_EQ(st.cr0 & (x86::kCr0PE | x86::kCr0PG), x86::kCr0PE);
  EXPECT_EQ(st.efer, 0u);
  EXPECT_EQ(st.cs.db, 1);
  EXPECT_EQ(st.cs.l, 0);
  EXPECT_EQ(st.rflags & x86::kFlagIF, 0u);

  const auto info = mem.read_obj<MultibootInfo>(boot.info_addr);
  EXPECT_EQ(info.flags, kMbiMemory | kMbiCmdline | kMbiModules | kMbiMemoryMap | kMbiBootloaderName);
  EXPECT_EQ(info.mem_lower, 640u);
  EXPECT_EQ(info.mem_upper, 63u * 1024);
  EXPECT_EQ(read_cstring(mem, info.cmdline), "k console=none");
  EXPECT_EQ(read_cstring(mem, info.boot_loader_name), "keel");
  ASSERT_EQ(info.mods_count, 2u);
  const auto m0 = mem.read_obj<MultibootModule>(info.mods_addr);
  const auto m1 = mem.read_obj<MultibootModule>(info.mods_addr + sizeof(MultibootModule));
  EXPECT_EQ(m0.mod_start % 4096, 0u);
  EXPECT_GE(m0.mod_start, 0x400000u + kernel.size() + 0x1000);  // after the kernel's bss
  EXPECT_EQ(m0.mod_end - m0.mod_start, 3u);
  EXPECT_EQ(mem.read_obj<uint8_t>(m0.mod_start + 2), 'c');
  EXPECT_EQ(read_cstring(mem, m0.string), "m0 x=1");
  EXPECT_EQ(m1.mod_start, m0.mod_start + 4096);
  EXPECT_EQ(m1.mod_end - m1.mod_start, 5000u);
  EXPECT_EQ(read_cstring(mem, m1.string), "m1");
  // The memory map is keel's e820 map.
  const auto e820 = build_e820(mem);
  ASSERT_EQ(info.mmap_length, e820.size() * sizeof(MultibootMmapEntry));
  for (size_t i = 0; i < e820.size(); ++i) {
    const auto e = mem.read_obj<MultibootMmapEntry>(info.mmap_addr + i * sizeof(MultibootMmapEntry));
    EXPECT_EQ(e.size, 20u);
    EXPECT_EQ(e.base_addr, e820[i].addr);
    EXPECT_EQ(e.length, e820[i].size);
    EXPECT_EQ(e.type, e820[i].type);
  }
  // The kernel's bss is zeroed.
  EXPECT_EQ(mem.read_obj<uint32_t>(0x400000 + kernel.size() + 0x100), 0u);
}

TEST(MultibootLoader, RefusesWhatDoesNotFit) {
  GuestMemory mem(8 * kMiB);
  const auto kernel = guest("multiboot_elf");
  auto error = [&](const std::vector<BootModule>& modules, const std::string& cmdline) -> std::string {
    try {
      load_multiboot(mem, kernel, "k", modules, cmdline);
    } catch (const Error& e) {
      return e.what();
    }
    return "(loaded)";
  };
  EXPECT_THAT(error({{"big", std::vector<uint8_t>(4 * kMiB), "big"}}, ""), HasSubstr("module big"));
  EXPECT_THAT(error({}, std::string(kBootStringsSize, 'x')), HasSubstr("does not fit"));
  EXPECT_THAT(error({}, std::string("a\0b", 3)), HasSubstr("NUL"));
  EXPECT_THAT(error(std::vector<BootModule>(kMaxBootModules + 1, {"m", {1}, "m"}), ""),
              HasSubstr("at most"));
  // A kernel below 1 MiB would overwrite keel's boot area.
  Kludge low;
  low.header_addr = 0x10040;
  low.load_addr = low.entry_addr = 0x10000;
  try {
    load_multiboot(mem, kludge_image(low), "low", {}, "");
    ADD_FAILURE() << "loaded below 1 MiB";
  } catch (const Error& e) {
    EXPECT_THAT(std::string(e.what()), HasSubstr("boot area below 1 MiB"));
  }
}

TEST(PvhLoader, FillsHvmStartInfo) {
  GuestMemory mem(64 * kMiB);
  const auto kernel = guest("pvh");
  const auto elf = parse_any_elf(kernel);
  ASSERT_TRUE(elf.pvh_entry);
  std::vector<BootModule> modules = {{"initrd", {'i', 'n', 'i', 't'}, ""}};
  const auto boot = load_pvh(mem, kernel, "k", modules, "root=/dev/vda", 0xE0000);
  EXPECT_EQ(boot.entry, *elf.pvh_entry);
  EXPECT_EQ(boot.cpu_state.rip, *elf.pvh_entry);
  EXPECT_EQ(boot.cpu_state.gpr[x86::RBX], boot.info_addr);
  EXPECT_EQ(boot.cpu_state.tr.type, 0xB);  // a busy TSS, as the PVH ABI asks
  EXPECT_EQ(boot.cpu_state.cs.db, 1);
  const auto info = mem.read_obj<hvm_start_info>(boot.info_addr);
  EXPECT_EQ(info.magic, XEN_HVM_START_MAGIC_VALUE);
  EXPECT_EQ(info.version, 1u);
  EXPECT_EQ(info.rsdp_paddr, 0xE0000u);
  EXPECT_EQ(read_cstring(mem, info.cmdline_paddr), "root=/dev/vda");
  ASSERT_EQ(info.nr_modules, 1u);
  const auto mod = mem.read_obj<hvm_modlist_entry>(info.modlist_paddr);
  EXPECT_EQ(mod.size, 4u);
  EXPECT_EQ(mod.cmdline_paddr, 0u);
  EXPECT_EQ(mem.read_obj<uint8_t>(mod.paddr + 3), 't');
  const auto e820 = build_e820(mem);
  ASSERT_EQ(info.memmap_entries, e820.size());
  for (size_t i = 0; i < e820.size(); ++i) {
    const auto e = mem.read_obj<hvm_memmap_table_entry>(info.memmap_paddr + i * sizeof(hvm_memmap_table_entry));
    EXPECT_EQ(e.addr, e820[i].addr);
    EXPECT_EQ(e.size, e820[i].size);
    EXPECT_EQ(e.type, e820[i].type);
  }
}

TEST(PvhNote, RefusesMalformedNotes) {
  auto kernel = guest("pvh");
  // The note's descriptor size (offset 0x74 + 4 in pvh.asm's layout) and its value.
  const uint64_t note = 0x74;
  ASSERT_EQ(std::memcmp(kernel.data() + note + 12, "Xen", 4), 0);
  auto bad_size = kernel;
  put<uint32_t>(bad_size, note + 4, 2);
  put<uint32_t>(bad_size, note + 8, 18);
  auto error = [](std::span<const uint8_t> img) -> std::string {
    try {
      parse_any_elf(img);
    } catch (const Error& e) {
      return e.what();
    }
    return "(parsed)";
  };
  EXPECT_THAT(error(bad_size), HasSubstr("2-byte value"));
  auto outside = kernel;
  put<uint32_t>(outside, note + 16, 0x900000);
  EXPECT_THAT(error(outside), HasSubstr("PVH entry point 0x900000"));
  // A note running past its segment is ignored, not read.
  auto truncated = kernel;
  put<uint32_t>(truncated, note + 4, 0x1000);
  EXPECT_FALSE(parse_any_elf(truncated).pvh_entry);
}

// The guests booted by `keel run` on each engine, with modules and a command line.
class ProtectedModeGuest : public ::testing::TestWithParam<Accel> {
 protected:
  void SetUp() override {
    if (auto why = guest_test::engine_unavailable(GetParam())) GTEST_SKIP() << *why;
    if (auto why = guest_test::behaviour_unavailable(GetParam(), "protected_mode_cpl0"))
      GTEST_SKIP() << *why;
    dir_ = std::filesystem::temp_directory_path() /
           ("keel-multiboot-" + std::to_string(::getpid()) + "-" +
            ::testing::UnitTest::GetInstance()->current_test_info()->name());
    std::filesystem::create_directories(dir_);
    std::ofstream(dir_ / "mod0") << "first module";
    std::ofstream(dir_ / "mod1") << "second";
  }
  void TearDown() override {
    if (!dir_.empty()) std::filesystem::remove_all(dir_);
  }
  testing::ProcessResult run(const std::string& guest_name, const std::string& initrd,
                             const std::string& cmdline) {
    std::vector<std::string> args = {"run", "--accel", to_string(GetParam()), "--memory", "64M",
                                     "--kernel", testing::test_guest(guest_name), "--isa-debug-exit"};
    if (!initrd.empty()) args.insert(args.end(), {"--initrd", initrd});
    if (!cmdline.empty()) args.insert(args.end(), {"--cmdline", cmdline});
    return testing::run_keel(args);
  }
  std::filesystem::path dir_;
};

TEST_P(ProtectedModeGuest, MultibootElfSeesCmdlineModulesAndMemoryMap) {
  const std::string m0 = (dir_ / "mod0").string(), m1 = (dir_ / "mod1").string();
  auto r = run("multiboot_elf", m0 + " x=1 y,," + "z," + m1, "hello world");
  EXPECT_EQ(r.status, 0x43) << r.describe();
  EXPECT_THAT(r.out, HasSubstr("magic=2badb002 flags=0000024d mem_lower=00000280 mem_upper=0000fc00\n"));
  EXPECT_THAT(r.out, HasSubstr("cmdline=" + testing::test_guest("multiboot_elf") + " hello world\n"));
  EXPECT_THAT(r.out, HasSubstr("module 00000000 aligned=00000000 size=0000000c cmdline=" + m0 +
                               " x=1 y,z data=first module\n"));
  EXPECT_THAT(r.out, HasSubstr("module 00000001 aligned=00000000 size=00000006 cmdline=" + m1 +
                               " data=second\n"));
  EXPECT_THAT(r.out, HasSubstr("mmap base=0000000000000000 length=00000000000a0000 type=00000001\n"));
  EXPECT_THAT(r.out, HasSubstr("mmap base=0000000000100000 length=0000000003f00000 type=00000001\n"));
  EXPECT_THAT(r.out, HasSubstr("loader=keel\n"));
}

TEST_P(ProtectedModeGuest, MultibootAoutKludgeWithoutModules) {
  auto r = run("multiboot_aout", "", "");
  EXPECT_EQ(r.status, 0x43) << r.describe();
  // No --cmdline: just the kernel's path (no Linux console arguments), no modules.
  EXPECT_THAT(r.out, HasSubstr("magic=2badb002 flags=00000245 "));
  EXPECT_THAT(r.out, HasSubstr("cmdline=" + testing::test_guest("multiboot_aout") + "\n"));
  EXPECT_THAT(r.out, ::testing::Not(HasSubstr("module ")));
  EXPECT_THAT(r.out, HasSubstr("mmap base=0000000000100000 length=0000000003f00000 type=00000001\n"));
}

TEST_P(ProtectedModeGuest, PvhSeesStartInfo) {
  const std::string m0 = (dir_ / "mod0").string();
  auto r = run("pvh", m0, "console=hvc0 quiet");
  EXPECT_EQ(r.status, 0x43) << r.describe();
  EXPECT_THAT(r.out, HasSubstr("magic=336ec578 version=00000001 rsdp=00000000000e0000 modules=00000001\n"));
  EXPECT_THAT(r.out, HasSubstr("cmdline=console=hvc0 quiet\n"));
  EXPECT_THAT(r.out, HasSubstr("module 00000000 size=0000000c cmdline=" + m0 + " data=first module\n"));
  EXPECT_THAT(r.out, HasSubstr("memmap base=0000000000100000 length=0000000003f00000 type=00000001\n"));
  EXPECT_THAT(r.out, HasSubstr("memmap base=00000000fec00000 length=0000000001400000 type=00000002\n"));
}

TEST_P(ProtectedModeGuest, MalformedKernelIsRefusedWithItsCause) {
  auto bad = read_file(testing::test_guest("multiboot_aout"));
  const auto found = find_multiboot_header(bad);
  ASSERT_TRUE(found);
  // load_addr so far below header_addr that the load would start before the file.
  put<uint32_t>(bad, found->offset + 16, found->header.header_addr - 0x1000);
  const auto path = dir_ / "bad.bin";
  std::ofstream(path, std::ios::binary).write(reinterpret_cast<const char*>(bad.data()),
                                              static_cast<std::streamsize>(bad.size()));
  auto r = testing::run_keel({"run", "--accel", to_string(GetParam()), "--memory", "64M", "--kernel",
                              path.string(), "--isa-debug-exit"});
  EXPECT_NE(r.status, 0) << r.describe();
  EXPECT_THAT(r.err, HasSubstr("before the file")) << r.describe();
}

// A real kernel through PVH: the default guest's bzImage, its payload decompressed on the host
// (Debian's kernel has the PHYS32_ENTRY note), with the initramfs as module 0, the command line
// from hvm_start_info and the ACPI tables (PCI found through the DSDT's root bridge).
TEST(PvhLinux, DefaultGuestBootsThroughItsPvhEntryOnEmu) {
  using namespace std::chrono_literals;
  if (testing::linux_tests_off()) GTEST_SKIP() << "KEEL_LINUX_TESTS=off";
  const auto& dg = testing::default_guest();
  if (!dg) GTEST_SKIP() << dg.why_missing;
  const std::string cmdline = "console=ttyS0 reboot=k i8042.noaux i8042.nomux i8042.nopnp keel.pvh=1";
  auto r = testing::type_at_guest_shell(
      {"run", "--accel", "emu", "--pvh", "--kernel", (dg.dir / "vmlinuz").string(), "--initrd",
       (dg.dir / "initramfs.cpio.gz").string(), "--cmdline", cmdline},
      "echo CMD=$(cat /proc/cmdline) PCI=$(ls /sys/bus/pci/devices | wc -l)", 250s);
  EXPECT_EQ(r.status, 0) << r.describe();
  EXPECT_THAT(r.out + r.err, HasSubstr("kernel: PVH entry at ")) << r.describe();
  EXPECT_THAT(r.out, HasSubstr("CMD=" + cmdline + " PCI=")) << r.describe();
  EXPECT_THAT(r.out, ::testing::Not(HasSubstr("PCI=0"))) << r.describe();
}

TEST(PvhLinux, RefusedForTestGuestsAndKernelsWithoutTheNote) {
  auto r = testing::run_keel({"run", "--accel", "emu", "--pvh", "--test-guest", testing::test_guest("spin")});
  EXPECT_EQ(r.status, 2) << r.describe();
  EXPECT_THAT(r.err, HasSubstr("--pvh applies to a Linux kernel"));
  // multiboot_aout.bin is no ELF and no bzImage.
  r = testing::run_keel({"run", "--accel", "emu", "--pvh", "--kernel", testing::test_guest("multiboot_aout")});
  EXPECT_NE(r.status, 0) << r.describe();
  EXPECT_THAT(r.err, HasSubstr("not a bzImage")) << r.describe();
}

INSTANTIATE_TEST_SUITE_P(Engines, ProtectedModeGuest, ::testing::Values(Accel::kEmu, Accel::kKvm),
                         [](const auto& info) { return std::string(to_string(info.param)); });

}  // namespace
}  // namespace keel::boot
