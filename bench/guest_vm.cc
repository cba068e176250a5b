#include "guest_vm.h"

#include <poll.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <stdexcept>

#include "engine/kvm/kvm_probe.h"
#include "vm/default_guest.h"

namespace keel::bench {

using Clock = std::chrono::steady_clock;

const GuestEngine& guest_engine() {
  static const GuestEngine e = [] {
    KvmProbeResult probe = probe_kvm();
    if (probe.can_run_stock_kernel()) return GuestEngine{Accel::kKvm, "kvm", "kvm"};
    return GuestEngine{Accel::kEmu, "emu", "tcg"};
  }();
  return e;
}

std::optional<std::string> guest_unavailable() {
  auto dir = default_guest_dir();
  if (!std::filesystem::exists(dir / "vmlinuz")) return "default guest not built in " + dir.string();
  if (std::system("command -v qemu-system-x86_64 >/dev/null 2>&1") != 0)
    return "qemu-system-x86_64 is not installed";
  return std::nullopt;
}

std::string bench_cmdline(bool mitigations_off) {
  std::string c = default_cmdline(guest_engine().keel) + " tsc_early_khz=2000000";
  if (mitigations_off) c += " mitigations=off";
  return c;
}

std::vector<std::string> vm_command(bool qemu, const std::vector<std::string>& devices,
                                    const std::string& cmdline, unsigned cpus) {
  const GuestEngine& e = guest_engine();
  auto dir = default_guest_dir();
  std::vector<std::string> argv;
  const std::string n = std::to_string(cpus);
  if (qemu)
    argv = {"qemu-system-x86_64",
            "-accel", e.qemu_name == "tcg" ? "tcg,thread=multi" : e.qemu_name,
            "-smp", n, "-m", "512", "-nographic", "-no-reboot",
            "-kernel", (dir / "vmlinuz").string(), "-initrd", (dir / "initramfs.cpio.gz").string(),
            "-append", cmdline};
  else
    argv = {KEEL_BINARY, "run", "--accel", e.keel_name, "--memory", "512M", "--cpus", n,
            "--cmdline", cmdline};
  argv.insert(argv.end(), devices.begin(), devices.end());
  return argv;
}

Vm::Vm(const std::vector<std::string>& argv) : started_(Clock::now()) {
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

Vm::~Vm() {
  kill(pid_, SIGKILL);
  waitpid(pid_, nullptr, 0);
  close(in_);
  close(out_);
}

void Vm::type(const std::string& s) { (void)!write(in_, s.data(), s.size()); }

Vm::Match Vm::wait_for(const std::regex& re, std::chrono::seconds deadline) {
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

double Vm::elapsed() const {
  return std::chrono::duration<double>(Clock::now() - started_).count();
}

std::string Vm::tail() const {
  return text_.size() > 400 ? text_.substr(text_.size() - 400) : text_;
}

TempFile::TempFile(const std::string& what) {
  path_ = std::filesystem::temp_directory_path() /
          ("keel-bench-" + std::to_string(getpid()) + "-" + what);
}

}  // namespace keel::bench
