// virtio rows: keel against QEMU (Debian's qemu-system-x86_64) with the same default guest, engine
// (kvm/kvm or emu/tcg) and disk file, measured inside the guest:
//   - virtio-blk sequential read and write MB/s (1 MiB blocks, queue depth 8) and 4 KiB random-read
//     IOPS (queue depth 32), by fio with O_DIRECT and libaio against /dev/vda. fio is the host's
//     (Debian's package) on a second, read-only disk built by scripts/build-fio-disk.sh; one boot
//     runs all three jobs and the three rows share it.
//   - TCP guest -> host through user networking (busybox nc into a host socket, 32 MiB: at
//     ~1 MB/s on emu that is half a minute).
// The guest runs on kvm where the probe says a stock kernel runs, else on emu (QEMU: tcg).
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

#include <nlohmann/json.hpp>

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
  // What wait_for() saw: the output before the match, and the match's groups (0 = all of it).
  struct Match {
    std::string prefix;
    std::vector<std::string> groups;
  };
  // Reads until `re` matches the output; throws at the deadline. Output after the match stays
  // for the next wait_for().
  Match wait_for(const std::regex& re, std::chrono::seconds deadline) {
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
    Match result{m.prefix().str(), {}};
    for (const auto& group : m) result.groups.push_back(group.str());
    text_ = m.suffix().str();
    return result;
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

// A file under the temp directory, removed on destruction.
class TempFile {
 public:
  explicit TempFile(const std::string& what) {
    path_ = std::filesystem::temp_directory_path() /
            ("keel-bench-" + std::to_string(getpid()) + "-" + what);
  }
  ~TempFile() { std::filesystem::remove(path_); }
  TempFile(const TempFile&) = delete;
  TempFile& operator=(const TempFile&) = delete;
  std::string path() const { return path_.string(); }

 private:
  std::filesystem::path path_;
};

// The disk fio runs against: 300 MiB, every block written once (a hole reads as zeros without
// touching the host's page cache, which would flatter whichever side reads more holes).
constexpr uint64_t kScratchBytes = 300ull << 20;
const TempFile& scratch_disk() {
  static const TempFile disk("scratch.img");
  static const bool written = [] {
    std::ofstream out(disk.path(), std::ios::binary);
    std::vector<char> block(1 << 20);
    for (size_t i = 0; i < block.size(); ++i) block[i] = static_cast<char>(i * 131 + 7);
    for (uint64_t done = 0; done < kScratchBytes; done += block.size())
      out.write(block.data(), static_cast<std::streamsize>(block.size()));
    if (!out.flush()) throw std::runtime_error("cannot write " + disk.path());
    return true;
  }();
  (void)written;
  return disk;
}

// fio, its libraries and the loader on an ext4 image (scripts/build-fio-disk.sh), made once per
// keel_bench process. The guest mounts it read-only; the busybox initramfs stays as it is.
const TempFile& fio_disk() {
  static const TempFile disk("fio.ext4");
  static const bool built = [] {
    std::string cmd = std::string(KEEL_SOURCE_DIR) + "/scripts/build-fio-disk.sh '" + disk.path() + "'";
    if (std::system(cmd.c_str()) != 0) throw std::runtime_error(cmd + " failed");
    return true;
  }();
  (void)built;
  return disk;
}

// One fio run in the guest: three jobs one after the other (stonewall), O_DIRECT on /dev/vda so
// the guest's page cache stays out, libaio with a queue depth so the device sees parallel requests.
// Each job runs for a fixed time over the first 256 MiB. The write job goes first so the reads
// find written blocks.
constexpr const char* kFioJobs =
    "--output-format=json --thread --direct=1 --ioengine=libaio --filename=/dev/vda --size=256M "
    "--time_based --runtime=4 "
    "--name=seqwrite --rw=write --bs=1M --iodepth=8 "
    "--name=seqread --stonewall --rw=read --bs=1M --iodepth=8 "
    "--name=randread --stonewall --rw=randread --bs=4k --iodepth=32";

struct FioFigures {
  double seq_read_mbs = 0, seq_write_mbs = 0, rand_read_iops = 0;
};

FioFigures parse_fio_json(const std::string& text) {
  auto first = text.find('{'), last = text.rfind('}');
  if (first == std::string::npos || last == std::string::npos || last < first)
    throw std::runtime_error("no fio JSON in the guest output: " + text.substr(0, 400));
  nlohmann::json j = nlohmann::json::parse(text.substr(first, last - first + 1));
  FioFigures f;
  bool seen[3] = {};
  for (const auto& job : j.at("jobs")) {
    if (job.value("error", 0) != 0)
      throw std::runtime_error("fio job " + job.value("jobname", "?") + " failed with error " +
                               std::to_string(job.value("error", 0)));
    std::string name = job.at("jobname");
    if (name == "seqwrite") {
      f.seq_write_mbs = job.at("write").at("bw_bytes").get<double>() / 1e6;
      seen[0] = true;
    } else if (name == "seqread") {
      f.seq_read_mbs = job.at("read").at("bw_bytes").get<double>() / 1e6;
      seen[1] = true;
    } else if (name == "randread") {
      f.rand_read_iops = job.at("read").at("iops").get<double>();
      seen[2] = true;
    }
  }
  if (!seen[0] || !seen[1] || !seen[2]) throw std::runtime_error("fio JSON lacks a job");
  return f;
}

FioFigures fio_in_vm(bool qemu) {
  const std::string scratch = scratch_disk().path(), tools = fio_disk().path();
  std::vector<std::string> dev =
      qemu ? std::vector<std::string>{"-drive", "file=" + scratch + ",if=virtio,format=raw",
                                      "-drive", "file=" + tools + ",if=virtio,format=raw,readonly=on"}
           : std::vector<std::string>{"--disk", scratch, "--disk", tools + ",readonly"};
  Vm vm(command(qemu, dev));
  vm.wait_for(std::regex("KEEL-GUEST-READY"), kBoot);
  // dmesg -n 1: no kernel messages in the middle of the JSON. $((1+1)) keeps the markers out of
  // the echoed command line.
  vm.type(std::string("dmesg -n 1; mkdir -p /t && mount -o ro /dev/vdb /t && "
                      "/t/ld.so --library-path /t/lib /t/fio ") +
          kFioJobs + " --output=/tmp/fio.json; echo FIO-$((1+1))-BEGIN; cat /tmp/fio.json; "
          "echo FIO-$((1+1))-END\n");
  vm.wait_for(std::regex("FIO-2-BEGIN"), kBoot);
  auto m = vm.wait_for(std::regex("FIO-2-END"), kBoot);
  vm.type("exit\n");
  return parse_fio_json(m.prefix);
}

// The three fio rows share VM boots: each boot runs all three jobs, and the i-th sample of each
// row takes the i-th boot's figures (the runner samples every row the same number of times).
struct FioPair {
  FioFigures keel, qemu;
};
const FioPair& fio_sample(size_t row) {
  static std::vector<FioPair> measured;
  static size_t taken[3] = {};
  size_t i = taken[row]++;
  while (measured.size() <= i) measured.push_back({fio_in_vm(false), fio_in_vm(true)});
  return measured[i];
}

std::optional<std::string> fio_unavailable() {
  if (auto why = unavailable()) return why;
  if (std::system("command -v fio >/dev/null 2>&1") != 0)
    return "fio is not installed on the host (scripts/install-deps.sh); the guest runs the host's";
  return std::nullopt;
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
           // The host end listens on 127.0.0.1, which keel's guests reach only when told.
           : std::vector<std::string>{"--net", "user,host-loopback=on"};
  {
    Vm vm(command(qemu, dev));
    vm.wait_for(std::regex("KEEL-GUEST-READY"), kBoot);
    vm.type("ip addr add 10.0.2.15/24 dev eth0; ip link set eth0 up; dd if=/dev/zero bs=65536 "
            "count=512 2>/dev/null | nc 10.0.2.2 " + std::to_string(ntohs(sa.sin_port)) +
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
    .name = "virtio-blk seq read (fio)",
    .unit = "MB/s",
    .baseline = kQemuBaseline,
    .sample = [] {
      const FioPair& p = fio_sample(0);
      return Sample{p.keel.seq_read_mbs, p.qemu.seq_read_mbs};
    },
    .unavailable = fio_unavailable,
    .higher_is_better = true});

KEEL_BENCH_ROW(Row{
    .name = "virtio-blk seq write (fio)",
    .unit = "MB/s",
    .baseline = kQemuBaseline,
    .sample = [] {
      const FioPair& p = fio_sample(1);
      return Sample{p.keel.seq_write_mbs, p.qemu.seq_write_mbs};
    },
    .unavailable = fio_unavailable,
    .higher_is_better = true});

KEEL_BENCH_ROW(Row{
    .name = "virtio-blk 4K randread (fio)",
    .unit = "IOPS",
    .baseline = kQemuBaseline,
    .sample = [] {
      const FioPair& p = fio_sample(2);
      return Sample{p.keel.rand_read_iops, p.qemu.rand_read_iops};
    },
    .unavailable = fio_unavailable,
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
