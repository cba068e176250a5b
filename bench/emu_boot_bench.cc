// Boot to init of the default guest: keel on the emu engine against QEMU's TCG with the same
// kernel, initramfs and command line (`qemu-system-x86_64 -accel tcg -M microvm`). Both are timed
// from process start to the init script's marker line on the serial console.
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <string>
#include <vector>

#include "base/error.h"
#include "bench.h"

namespace keel::bench {
namespace {

constexpr const char* kMarker = "KEEL-GUEST-READY";
constexpr const char* kCmdline =
    "console=ttyS0 reboot=k i8042.noaux i8042.nomux i8042.nopnp i8042.dumbkbd mitigations=off";

std::string guest_dir() {
  const char* env = std::getenv("KEEL_GUEST_DIR");
  return env ? env : KEEL_DEFAULT_GUEST_DIR;
}

// Seconds from spawning `argv` until `kMarker` appears on its stdout; the child is then killed.
double seconds_to_marker(const std::vector<std::string>& argv, double timeout_s) {
  int out[2];
  if (pipe(out) != 0) throw_errno("pipe");
  auto t0 = std::chrono::steady_clock::now();
  pid_t pid = fork();
  if (pid < 0) throw_errno("fork");
  if (pid == 0) {
    int devnull = open("/dev/null", O_RDWR);
    dup2(devnull, 0);
    dup2(out[1], 1);
    dup2(devnull, 2);
    std::vector<char*> args;
    for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
    args.push_back(nullptr);
    execvp(args[0], args.data());
    _exit(127);
  }
  close(out[1]);
  std::string seen;
  double secs = -1;
  for (;;) {
    double elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    if (elapsed > timeout_s) break;
    pollfd p{out[0], POLLIN, 0};
    if (poll(&p, 1, 100) <= 0) continue;
    char buf[4096];
    ssize_t n = read(out[0], buf, sizeof buf);
    if (n <= 0) break;
    seen.append(buf, size_t(n));
    if (seen.find(kMarker) != std::string::npos) {
      secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      break;
    }
    if (seen.size() > 65536) seen.erase(0, seen.size() - 1024);
  }
  kill(pid, SIGKILL);
  waitpid(pid, nullptr, 0);
  close(out[0]);
  if (secs < 0) throw Error("no " + std::string(kMarker) + " from " + argv[0] + " within the timeout");
  return secs;
}

KEEL_BENCH_ROW(Row{
    .name = "boot to init, default guest (emu vs qemu tcg)",
    .unit = "s",
    .baseline = "qemu-system-x86_64 -accel tcg -M microvm, same kernel/initramfs/cmdline",
    .sample =
        [] {
          std::string dir = guest_dir();
          Sample s;
          s.keel = seconds_to_marker({KEEL_BINARY, "run", "--accel", "emu"}, 600);
          s.baseline = seconds_to_marker(
              {"qemu-system-x86_64", "-accel", "tcg", "-M", "microvm", "-m", "512M", "-nographic",
               "-no-reboot", "-kernel", dir + "/vmlinuz", "-initrd", dir + "/initramfs.cpio.gz",
               "-append", kCmdline},
              600);
          return s;
        },
    .unavailable =
        []() -> std::optional<std::string> {
          std::string dir = guest_dir();
          if (!std::filesystem::exists(dir + "/vmlinuz"))
            return "the default guest is not built (ninja -C build default-guest)";
          if (std::system("command -v qemu-system-x86_64 >/dev/null 2>&1") != 0)
            return "qemu-system-x86_64 is not installed";
          return std::nullopt;
        },
});

}  // namespace
}  // namespace keel::bench
