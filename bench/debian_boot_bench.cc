// Debian 12 row: the image scripts/build-debian-image.sh makes (systemd, Debian's kernel and
// initramfs-tools initrd), booted with `keel run --boot disk` on emu against QEMU TCG booting the
// same image with the same kernel, initrd and command line (-kernel; QEMU gets
// tsc_early_khz=2000000 so its kernel cannot hang calibrating the TSC under TCG). The figure is the
// time from process start to the serial getty's login prompt, which systemd starts on the way to
// multi-user.target. The image is $KEEL_DEBIAN_IMAGE or ~/.cache/keel/debian12.qcow2.
// A second row is keel alone: the image's own command line (no mitigations=off, so the kernel
// decides its speculation defences from what emu's CPU model reports) against the same boot with
// mitigations=off appended; a ratio near 1.0 means the model costs the guest nothing for flaws it
// does not have.
#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <regex>
#include <string>

#include "bench.h"
#include "guest_vm.h"

namespace keel::bench {
namespace {

std::filesystem::path debian_image() {
  if (const char* env = std::getenv("KEEL_DEBIAN_IMAGE"); env && *env) return env;
  const char* home = std::getenv("HOME");
  return std::filesystem::path(home ? home : "/root") / ".cache/keel/debian12.qcow2";
}

std::optional<std::string> unavailable() {
  auto img = debian_image();
  for (const char* ext : {"", ".vmlinuz", ".initrd", ".cmdline"})
    if (!std::filesystem::exists(img.string() + ext))
      return "no Debian image: build it with scripts/build-debian-image.sh " + img.string();
  if (std::system("command -v qemu-system-x86_64 >/dev/null 2>&1") != 0) return "qemu-system-x86_64 is not installed";
  return std::nullopt;
}

enum class Side { kKeel, kQemu, kKeelMitigationsOff };

double boot_seconds(Side side) {
  const bool qemu = side == Side::kQemu;
  // Each boot gets its own overlay: the image itself stays as built (first boot every time).
  auto img = debian_image();
  std::string overlay = (std::filesystem::temp_directory_path() /
                         ("keel-bench-debian-" + std::to_string(getpid()) + (qemu ? "-q" : "-k") + ".qcow2"))
                            .string();
  std::filesystem::remove(overlay);
  std::string cmd = "qemu-img create -q -f qcow2 -F qcow2 -b '" + img.string() + "' '" + overlay + "'";
  if (std::system(cmd.c_str()) != 0) throw std::runtime_error(cmd + " failed");
  std::ifstream in(img.string() + ".cmdline");
  std::string cmdline;
  std::getline(in, cmdline);
  std::vector<std::string> argv;
  if (qemu)
    argv = {"qemu-system-x86_64", "-accel", "tcg", "-m", "1024", "-nographic", "-no-reboot",
            "-kernel", img.string() + ".vmlinuz", "-initrd", img.string() + ".initrd",
            "-append", cmdline + " tsc_early_khz=2000000", "-drive", "file=" + overlay + ",if=virtio,format=qcow2"};
  else if (side == Side::kKeel)
    argv = {KEEL_BINARY, "run", "--accel", "emu", "--memory", "1G", "--boot", "disk", "--disk", overlay};
  else
    argv = {KEEL_BINARY, "run", "--accel", "emu", "--memory", "1G",
            "--kernel", img.string() + ".vmlinuz", "--initrd", img.string() + ".initrd",
            "--cmdline", cmdline + " mitigations=off", "--disk", overlay};
  auto start = std::chrono::steady_clock::now();
  double secs;
  {
    Vm vm(argv);
    vm.wait_for(std::regex("login: "), std::chrono::seconds(600));
    secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  }
  std::filesystem::remove(overlay);
  return secs;
}

KEEL_BENCH_ROW(Row{
    .name = "Debian 12 boot to login (--boot disk)",
    .unit = "s",
    .baseline = "QEMU TCG, same image, kernel and command line",
    .sample = [] { return Sample{boot_seconds(Side::kKeel), boot_seconds(Side::kQemu)}; },
    .unavailable = unavailable});

KEEL_BENCH_ROW(Row{
    .name = "Debian 12 boot to login, own command line vs mitigations=off (keel emu)",
    .unit = "s",
    .baseline = "keel emu, same image with mitigations=off appended",
    .sample = [] {
      return Sample{boot_seconds(Side::kKeel), boot_seconds(Side::kKeelMitigationsOff)};
    },
    .unavailable = unavailable});

}  // namespace
}  // namespace keel::bench
