#include "vm/guest_loader.h"

#include <fmt/format.h>

#include <fstream>
#include <iterator>

#include "arch/x86/acpi/acpi_tables.h"
#include "arch/x86/boot_state.h"
#include "base/error.h"
#include "base/log.h"
#include "boot/disk_boot.h"
#include "boot/kernel_payload.h"
#include "boot/linux_loader.h"
#include "boot/memory_map.h"
#include "boot/multiboot.h"
#include "boot/protected_mode_boot.h"
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

// --initrd for multiboot and PVH kernels: one file, or QEMU's module list ("file args,file2").
std::vector<boot::BootModule> read_modules(const std::filesystem::path& initrd) {
  std::vector<boot::BootModule> modules;
  if (initrd.empty()) return modules;
  std::vector<boot::ModuleSpec> specs;
  if (std::filesystem::is_regular_file(initrd))
    specs.push_back({initrd.string(), initrd.string()});
  else
    specs = boot::parse_module_list(initrd.string());
  for (auto& spec : specs)
    modules.push_back({spec.path, read_file(spec.path, "module"), std::move(spec.cmdline)});
  return modules;
}

// --pvh: the ELF vmlinux to boot, from a vmlinux or a bzImage's compressed payload.
std::vector<uint8_t> linux_vmlinux(GuestImage& image, std::vector<uint8_t> kernel) {
  if (boot::detect_kernel_format(kernel) == boot::KernelFormat::kElf) return kernel;
  const std::string name = "kernel " + image.config.kernel.string();
  try {
    const boot::BzImage bz = boot::parse_bzimage(kernel);
    const auto payload = boot::bzimage_payload(bz, kernel);
    if (payload.empty()) throw Error("--pvh: the bzImage has no payload (boot protocol 2.08+)");
    auto vmlinux = boot::decompress_payload(payload, boot::payload_output_limit(bz, image.memory.ram_size()));
    if (!vmlinux) throw Error(fmt::format("--pvh: keel cannot decompress its {} payload",
                                          boot::compression_name(boot::detect_compression(payload))));
    return std::move(*vmlinux);
  } catch (const Error& e) {
    throw Error(fmt::format("{}: {}", name, e.what()));
  }
}

// A multiboot or PVH kernel: 32-bit protected-mode entry with its information structure.
std::vector<x86::CpuState> load_protected_mode_guest(GuestImage& image, std::span<const uint8_t> kernel,
                                                     boot::BootProtocol protocol) {
  const auto& config = image.config;
  // With the \_SB devices (the PCI root bridge): a Linux kernel booted through PVH finds PCI there.
  const uint64_t rsdp =
      x86::acpi::write_acpi_tables(image.memory, {.vcpus = image.vcpus, .sb_devices = image.acpi_devices}).rsdp;
  publish_rsdp(image, rsdp);
  const std::string name = "kernel " + config.kernel.string();
  const auto modules = read_modules(config.initrd);
  boot::ProtectedModeBoot boot;
  if (protocol == boot::BootProtocol::kMultiboot) {
    // As QEMU: the command line starts with the kernel's path (kvm-unit-tests' argv[0]).
    const std::string cmdline = config.kernel.string() + (config.cmdline.empty() ? "" : " " + config.cmdline);
    boot = boot::load_multiboot(image.memory, kernel, name, modules, cmdline);
  } else {
    boot = boot::load_pvh(image.memory, kernel, name, modules, config.cmdline, rsdp);
  }
  log::info("kernel: {} entry at {:#x}, information structure at {:#x}, {} module(s)", boot.protocol,
            boot.entry, boot.info_addr, modules.size());
  return {boot.cpu_state};
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
  if (image.config.boot == VmConfig::Boot::kKernel) {
    std::vector<uint8_t> kernel = read_file(image.config.kernel, "kernel");
    if (image.config.pvh) return load_protected_mode_guest(image, linux_vmlinux(image, std::move(kernel)),
                                                           boot::BootProtocol::kPvh);
    const boot::BootProtocol protocol = boot::detect_boot_protocol(kernel);
    if (protocol != boot::BootProtocol::kLinux) return load_protected_mode_guest(image, kernel, protocol);
  }
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
