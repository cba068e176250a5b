#include "vm/guest_loader.h"

#include <fstream>
#include <iterator>

#include "arch/x86/acpi/acpi_tables.h"
#include "arch/x86/boot_state.h"
#include "base/error.h"
#include "base/log.h"
#include "boot/disk_boot.h"
#include "boot/linux_loader.h"
#include "boot/memory_map.h"
#include "devices/legacy/fw_cfg.h"

namespace keel {
namespace {

std::vector<uint8_t> read_file(const std::filesystem::path& path, const char* what) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw Error("cannot open " + std::string(what) + " " + path.string() + ": " +
                       std::strerror(errno));
  std::vector<uint8_t> bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  if (in.bad()) throw Error("cannot read " + std::string(what) + " " + path.string());
  return bytes;
}

// fw_cfg's etc/acpi/rsdp: the RSDP keel wrote, as QEMU lists its own.
void publish_rsdp(GuestImage& image, uint64_t rsdp_addr) {
  if (!image.fw_cfg) return;
  std::vector<uint8_t> rsdp(36);
  image.memory.read(rsdp_addr, rsdp.data(), rsdp.size());
  image.fw_cfg->add_file("etc/acpi/rsdp", std::move(rsdp));
}

}  // namespace

std::vector<x86::CpuState> load_test_guest(GuestImage& image) {
  const auto& path = image.config.test_guest;
  if (!std::filesystem::is_regular_file(path))
    throw Error("test guest " + path.string() + " does not exist or is not a regular file");
  std::vector<uint8_t> code = read_file(path, "test guest");
  if (code.empty()) throw Error("test guest " + path.string() + " is empty");
  if (!image.memory.contains(kTestGuestLoadAddr, code.size()))
    throw Error("test guest " + path.string() + " (" + std::to_string(code.size()) +
                " bytes) does not fit in guest RAM at 0x100000");
  image.memory.write(kTestGuestLoadAddr, code.data(), code.size());
  x86::write_boot_tables(image.memory);
  // ACPI tables at 0xE0000, as for Linux: a guest finds PM1a_EVT/CNT there (acpi_poweroff.asm).
  if (image.memory.contains(x86::acpi::kRsdpAddr, x86::acpi::kTablesEnd - x86::acpi::kRsdpAddr))
    publish_rsdp(image, x86::acpi::write_acpi_tables(image.memory, {.vcpus = image.vcpus, .sb_devices = {}}).rsdp);
  std::vector<x86::CpuState> states;
  for (uint32_t i = 0; i < image.vcpus; ++i) {
    x86::BootEntry entry;
    entry.rip = kTestGuestLoadAddr;
    entry.rsp = kTestGuestStackTop - uint64_t{i} * kTestGuestStackSize;
    entry.rsi = image.vcpus;
    entry.bsp = i == 0;
    x86::CpuState state = x86::boot_cpu_state(entry);
    state.gpr[x86::RDI] = i;
    states.push_back(state);
  }
  return states;
}

std::vector<x86::CpuState> load_linux_guest(GuestImage& image) {
  boot::LinuxBootSpec spec;
  spec.kernel = image.config.kernel;
  spec.initrd = image.config.initrd;
  spec.cmdline = image.config.cmdline;
  x86::acpi::AcpiConfig acpi;
  acpi.vcpus = image.vcpus;
  acpi.sb_devices = image.acpi_devices;
  spec.acpi_rsdp_addr = x86::acpi::write_acpi_tables(image.memory, acpi).rsdp;
  spec.decompress_on_host = image.decompress_on_host;
  boot::LinuxBoot boot;
  if (image.config.boot == VmConfig::Boot::kDisk) {
    boot::DiskBootEntry entry = boot::find_disk_boot(*image.boot_disk, image.config.boot_entry);
    std::string cmdline = image.config.cmdline.empty() ? entry.cmdline : image.config.cmdline;
    log::info("boot disk: {} menu:\n{}booting entry {} '{}': kernel {}, initrd {} bytes, command line '{}'",
              entry.where, boot::describe_entries(entry.menu), entry.index, entry.title,
              entry.kernel_path, entry.initrd.size(), cmdline);
    boot = boot::load_linux_image(image.memory, entry.kernel, entry.initrd, cmdline, spec.acpi_rsdp_addr,
                                  spec.decompress_on_host);
    if (image.fw_cfg)
      image.fw_cfg->set_linux(entry.kernel, entry.initrd, cmdline, boot.kernel_addr, boot.initrd_addr,
                              boot::kCmdlineAddr, boot.entry);
  } else {
    boot = boot::load_linux(image.memory, spec);
    if (image.fw_cfg) {
      std::vector<uint8_t> kernel = read_file(spec.kernel, "kernel");
      std::vector<uint8_t> initrd = spec.initrd.empty() ? std::vector<uint8_t>{} : read_file(spec.initrd, "initrd");
      image.fw_cfg->set_linux(kernel, initrd, spec.cmdline, boot.kernel_addr, boot.initrd_addr,
                              boot::kCmdlineAddr, boot.entry);
    }
  }
  publish_rsdp(image, spec.acpi_rsdp_addr);
  if (!boot.host_decompressed.empty())
    log::info("kernel: {} payload decompressed on the host, booting its vmlinux at {:#x} (no KASLR)",
              boot.host_decompressed, boot.kernel_addr);
  return {boot.cpu_state};
}

}  // namespace keel
