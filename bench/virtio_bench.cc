// virtio rows: keel against QEMU (Debian's qemu-system-x86_64) with the same default guest, engine
// (kvm/kvm or emu/tcg) and disk file, measured inside the guest with busybox tools:
//   - virtio-blk sequential read and write (dd, 1 MiB blocks, 256 MiB),
//   - TCP guest -> host through user networking (nc into a host socket, 128 MiB).
// The guest runs on kvm where the probe says a stock kernel runs, else on emu (QEMU: tcg). 4 KiB random-read IOPS needs fio in the
// guest, which the busybox initramfs does not have; that row says so.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <regex>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "bench.h"
#include "engine/kvm/kvm_probe.h"
#include "vm/default_guest.h"

namespace keel::bench {
namespace {

using Clock = std::chrono::steady_clock;

struct GuestEngine {
  Accel keel = Accel::kKvm;
  std::string keel_name, qemu_name;
  std::string why_not;
};

const GuestEngine& guest_engine() {
  static const GuestEngine e = [] {
    KvmProbeResult probe = probe_kvm();
    if (probe.can_run_stock_kernel()) return GuestEngine{Accel::kKvm, "kvm", "kvm", ""};
    return GuestEngine{Accel::kEmu, "emu", "tcg", ""};
  }();
  return e;
}

std::optional<std::string> unavailable() {
  if (!guest_engine().why_not.empty()) return guest_engine().why_not;
  auto dir = default_guest_dir();
  if (!std::filesystem::exists(dir / "vmlinuz")) return "default guest not built in " + dir.string();
  if (std::system("command -v qemu-system-x86_64 >/dev/null 2>&1") != 0)
    return "qemu-system-x86_64 is not installed";
  return std::nullopt;
}

// A VM process with its console on pipes: type commands, read until a pattern appears.
class Vm {
 public:
  explicit Vm(const std::vector<std::string>& argv) {
    int in[2], out[2];
    if (pipe(in) || pipe(out)) throw std::runtime_error("pipe failed");
    pid_ = fork();
    if (pid_ == 0) {
      dup2(in[0], 0);
      dup2(out[1], 1);
      dup2(out[1], 2);
      std::vector<char*> args;
      for (auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
      args.push_back(nullptr);
      execvp(args[0], args.data());
      _exit(127);
    }
    close(in[0]);
    close(out[1]);
    in_ = in[1];
    out_ = out[0];
  }
  ~Vm() {
    kill(pid_, SIGKILL);
    waitpid(pid_, nullptr, 0);
    close(in_);
    close(out_);
  }
  void type(const std::string& s) { (void)!write(in_, s.data(), s.size()); }
  // Reads until `re` matches the output; throws at the deadline.
  std::smatch wait_for(const std::regex& re, std::chrono::seconds deadline) {
    auto end = Clock::now() + deadline;
    std::smatch m;
    while (!std::regex_search(text_, m, re)) {
      auto left = std::chrono::duration_cast<std::chrono::milliseconds>(end - Clock::now()).count();
      if (left <= 0) throw std::runtime_error("guest output never matched; last: " + tail());
      pollfd p{out_, POLLIN, 0};
      if (poll(&p, 1, static_cast<int>(left)) <= 0) continue;
      char buf[4096];
      ssize_t n = read(out_, buf, sizeof buf);
      if (n <= 0) throw std::runtime_error("VM exited; last output: " + tail());
      text_.append(buf, n);
    }
    std::smatch copy = m;
    text_ = m.suffix();
    return copy;
  }

 private:
  std::string tail() const { return text_.size() > 400 ? text_.substr(text_.size() - 400) : text_; }
  pid_t pid_ = -1;
  int in_ = -1, out_ = -1;
  std::string text_;
};

// keel or QEMU booting the default guest with `devices` (keel options or QEMU arguments).
std::vector<std::string> command(bool qemu, const std::vector<std::string>& devices) {
  const GuestEngine& e = guest_engine();
  auto dir = default_guest_dir();
  std::vector<std::string> argv;
  if (qemu)
    argv = {"qemu-system-x86_64", "-accel", e.qemu_name, "-m", "512", "-nographic", "-no-reboot",
            "-kernel", (dir / "vmlinuz").string(), "-initrd", (dir / "initramfs.cpio.gz").string(),
            "-append", default_cmdline(e.keel)};
  else
    argv = {KEEL_BINARY, "run", "--accel", e.keel_name, "--memory", "512M"};
  argv.insert(argv.end(), devices.begin(), devices.end());
  return argv;
}

constexpr auto kBoot = std::chrono::seconds(900);

class ScratchDisk {
 public:
  ScratchDisk() {
    path_ = std::filesystem::temp_directory_path() / ("keel-bench-" + std::to_string(getpid()) + ".img");
    std::ofstream(path_).close();
    std::filesystem::resize_file(path_, 300ull << 20);
  }
  ~ScratchDisk() { std::filesystem::remove(path_); }
  std::string path() const { return path_.string(); }

 private:
  std::filesystem::path path_;
};

// MB/s of a busybox dd run, timed by busybox `time` in the guest ("real 0m 1.23s").
double dd_in_vm(bool qemu, const std::string& disk, const std::string& dd_args) {
  std::vector<std::string> dev =
      qemu ? std::vector<std::string>{"-drive", "file=" + disk + ",if=virtio,format=raw"}
           : std::vector<std::string>{"--disk", disk};
  Vm vm(command(qemu, dev));
  vm.wait_for(std::regex("KEEL-GUEST-READY"), kBoot);
  vm.type("time dd " + dd_args + " 2>&1\n");
  auto m = vm.wait_for(std::regex("real\\s+([0-9]+)m\\s*([0-9.]+)s"), kBoot);
  vm.type("exit\n");
  double secs = std::stod(m[1]) * 60 + std::stod(m[2]);
  return secs > 0 ? 256.0 * 1048576 / secs / 1e6 : 0;
}

double blk_sample(bool qemu, const std::string& dd_args) {
  ScratchDisk disk;
  return dd_in_vm(qemu, disk.path(), dd_args);
}

// Guest -> host TCP through user networking: the host counts bytes from the first to EOF.
double tcp_sample(bool qemu) {
  int server = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in sa{};
  sa.sin_family = AF_INET;
  sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  bind(server, reinterpret_cast<sockaddr*>(&sa), sizeof sa);
  socklen_t len = sizeof sa;
  getsockname(server, reinterpret_cast<sockaddr*>(&sa), &len);
  listen(server, 1);
  double mbps = 0;
  std::thread sink([&] {
    int c = accept(server, nullptr, nullptr);
    if (c < 0) return;
    char buf[65536];
    uint64_t total = 0;
    Clock::time_point first{};
    for (;;) {
      ssize_t n = read(c, buf, sizeof buf);
      if (n <= 0) break;
      if (!total) first = Clock::now();
      total += n;
    }
    double secs = std::chrono::duration<double>(Clock::now() - first).count();
    if (secs > 0) mbps = total / secs / 1e6;
    close(c);
  });
  std::vector<std::string> dev =
      qemu ? std::vector<std::string>{"-netdev", "user,id=n0", "-device", "virtio-net-pci,netdev=n0"}
           : std::vector<std::string>{"--net", "user"};
  {
    Vm vm(command(qemu, dev));
    vm.wait_for(std::regex("KEEL-GUEST-READY"), kBoot);
    vm.type("ip addr add 10.0.2.15/24 dev eth0; ip link set eth0 up; dd if=/dev/zero bs=65536 "
            "count=2048 2>/dev/null | nc 10.0.2.2 " + std::to_string(ntohs(sa.sin_port)) +
            "; echo TCP-$((1+1))-DONE\n");
    vm.wait_for(std::regex("TCP-2-DONE"), kBoot);
    vm.type("exit\n");
  }
  shutdown(server, SHUT_RDWR);
  close(server);
  sink.join();
  return mbps;
}

const char* kQemuBaseline = "QEMU, same guest, engine and disk";

KEEL_BENCH_ROW(Row{
    .name = "virtio-blk sequential read",
    .unit = "MB/s",
    .baseline = kQemuBaseline,
    .sample = [] {
      std::string args = "if=/dev/vda of=/dev/null bs=1M count=256";
      return Sample{blk_sample(false, args), blk_sample(true, args)};
    },
    .unavailable = unavailable,
    .higher_is_better = true});

KEEL_BENCH_ROW(Row{
    .name = "virtio-blk sequential write",
    .unit = "MB/s",
    .baseline = kQemuBaseline,
    .sample = [] {
      std::string args = "if=/dev/zero of=/dev/vda bs=1M count=256 conv=fsync";
      return Sample{blk_sample(false, args), blk_sample(true, args)};
    },
    .unavailable = unavailable,
    .higher_is_better = true});

KEEL_BENCH_ROW(Row{
    .name = "virtio-blk 4 KiB random read",
    .unit = "IOPS",
    .baseline = kQemuBaseline,
    .sample = [] { return Sample{}; },
    .unavailable = []() -> std::optional<std::string> {
      if (auto why = unavailable()) return why;
      return "needs fio in the guest; the default guest's initramfs has busybox only";
    },
    .higher_is_better = true});

KEEL_BENCH_ROW(Row{
    .name = "TCP guest->host, user networking",
    .unit = "MB/s",
    .baseline = kQemuBaseline,
    .sample = [] { return Sample{tcp_sample(false), tcp_sample(true)}; },
    .unavailable = unavailable,
    .higher_is_better = true});

}  // namespace
}  // namespace keel::bench
