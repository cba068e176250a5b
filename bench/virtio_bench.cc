// virtio rows: keel against QEMU (Debian's qemu-system-x86_64) with the same default guest, engine
// (kvm/kvm or emu/tcg) and disk file, measured inside the guest:
//   - virtio-blk sequential read and write MB/s (1 MiB blocks, queue depth 8) and 4 KiB random-read
//     IOPS (queue depth 32), by fio with O_DIRECT and libaio against /dev/vda. fio is the host's
//     (Debian's package) on a second, read-only disk built by scripts/build-fio-disk.sh; one boot
//     runs all three jobs and the three rows share it.
//   - qcow2 against raw inside the same keel guest (the same fio jobs on a qcow2 copy of the
//     scratch disk, and on an empty qcow2 overlay over it), and keel against QEMU on that qcow2.
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
#include "guest_vm.h"

namespace keel::bench {
namespace {

using Clock = std::chrono::steady_clock;

std::optional<std::string> unavailable() { return guest_unavailable(); }

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

FioFigures fio_in_vm(bool qemu, const std::string& disk = "", const std::string& format = "raw") {
  const std::string scratch = disk.empty() ? scratch_disk().path() : disk, tools = fio_disk().path();
  std::vector<std::string> dev =
      qemu ? std::vector<std::string>{"-drive", "file=" + scratch + ",if=virtio,format=" + format,
                                      "-drive", "file=" + tools + ",if=virtio,format=raw,readonly=on"}
           : std::vector<std::string>{"--disk", scratch + ",format=" + format, "--disk", tools + ",readonly"};
  Vm vm(vm_command(qemu, dev));
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
    Vm vm(vm_command(qemu, dev));
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

// qcow2: each sample makes fresh images from the raw scratch disk (a full copy, and an empty
// overlay whose reads fall through to the raw base) and runs the fio jobs on keel's raw disk, on
// both qcow2 images, and on QEMU with the full copy.
struct Qcow2Figures {
  FioFigures raw, qcow2, overlay, qemu_qcow2;
};
FioFigures qcow2_run(bool qemu, bool overlay) {
  TempFile img(overlay ? "overlay.qcow2" : "copy.qcow2");
  std::string cmd = overlay ? "qemu-img create -q -f qcow2 -F raw -b '" + scratch_disk().path() + "' '" + img.path() + "'"
                            : "qemu-img convert -O qcow2 '" + scratch_disk().path() + "' '" + img.path() + "'";
  if (std::system(cmd.c_str()) != 0) throw std::runtime_error(cmd + " failed");
  return fio_in_vm(qemu, img.path(), "qcow2");
}
const Qcow2Figures& qcow2_sample(size_t row) {
  static std::vector<Qcow2Figures> measured;
  static size_t taken[9] = {};
  size_t i = taken[row]++;
  while (measured.size() <= i)
    measured.push_back({fio_in_vm(false), qcow2_run(false, false), qcow2_run(false, true), qcow2_run(true, false)});
  return measured[i];
}
std::optional<std::string> qcow2_unavailable() {
  if (auto why = fio_unavailable()) return why;
  if (std::system("command -v qemu-img >/dev/null 2>&1") != 0) return "qemu-img is not installed (qemu-utils)";
  return std::nullopt;
}

#define QCOW2_ROW(index, row_name, unit_name, baseline_name, side, base, field) \
  KEEL_BENCH_ROW(Row{.name = row_name,                                         \
                     .unit = unit_name,                                         \
                     .baseline = baseline_name,                                 \
                     .sample = [] {                                             \
                       const Qcow2Figures& q = qcow2_sample(index);             \
                       return Sample{q.side.field, q.base.field};              \
                     },                                                         \
                     .unavailable = qcow2_unavailable,                          \
                     .higher_is_better = true})

QCOW2_ROW(0, "qcow2 seq read (fio)", "MB/s", "keel, raw disk, same guest", qcow2, raw, seq_read_mbs);
QCOW2_ROW(1, "qcow2 seq write (fio)", "MB/s", "keel, raw disk, same guest", qcow2, raw, seq_write_mbs);
QCOW2_ROW(2, "qcow2 4K randread (fio)", "IOPS", "keel, raw disk, same guest", qcow2, raw, rand_read_iops);
QCOW2_ROW(3, "qcow2 overlay seq read (fio)", "MB/s", "keel, raw disk (its backing file)", overlay, raw, seq_read_mbs);
QCOW2_ROW(4, "qcow2 overlay seq write (fio)", "MB/s", "keel, raw disk (its backing file)", overlay, raw, seq_write_mbs);
QCOW2_ROW(5, "qcow2 overlay 4K randread (fio)", "IOPS", "keel, raw disk (its backing file)", overlay, raw, rand_read_iops);
QCOW2_ROW(6, "qcow2 seq read vs QEMU (fio)", "MB/s", "QEMU, same guest, engine and qcow2 image", qcow2, qemu_qcow2, seq_read_mbs);
QCOW2_ROW(7, "qcow2 seq write vs QEMU (fio)", "MB/s", "QEMU, same guest, engine and qcow2 image", qcow2, qemu_qcow2, seq_write_mbs);
QCOW2_ROW(8, "qcow2 4K randread vs QEMU (fio)", "IOPS", "QEMU, same guest, engine and qcow2 image", qcow2, qemu_qcow2, rand_read_iops);


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
