// What the rows that boot the default guest on keel and on QEMU share: which engine pair runs
// (kvm/kvm where this host's KVM runs a stock kernel, else emu/tcg), the command lines, and a
// VM process whose console is typed into and read through pipes.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <filesystem>
#include <optional>
#include <regex>
#include <string>
#include <vector>

#include "engine/engine.h"

namespace keel::bench {

struct GuestEngine {
  Accel keel = Accel::kKvm;
  std::string keel_name, qemu_name;
};
const GuestEngine& guest_engine();

// Why the default guest cannot be raced against QEMU here, or nullopt.
std::optional<std::string> guest_unavailable();

// The kernel command line both sides boot: keel's default, plus `tsc_early_khz` so QEMU's TCG
// guest cannot spin calibrating its TSC against the PIT on a loaded host (keel's guest reads
// kvm-clock and ignores it). With `mitigations_off`, also `mitigations=off`: QEMU's TCG CPU model
// reports a real CPU's speculation flaws and keel's reports none, so without it a row would
// measure Linux's mitigations on one side only.
std::string bench_cmdline(bool mitigations_off = true);

// keel (`keel run`) or QEMU booting the default guest with `cmdline` and `devices` (keel options
// or QEMU arguments), 512 MiB, `cpus` vCPUs (QEMU: multi-threaded TCG, one host thread each).
std::vector<std::string> vm_command(bool qemu, const std::vector<std::string>& devices,
                                    const std::string& cmdline = bench_cmdline(),
                                    unsigned cpus = 1);

inline constexpr auto kBoot = std::chrono::seconds(900);

// A VM process with its console on pipes: type commands, read until a pattern appears.
class Vm {
 public:
  explicit Vm(const std::vector<std::string>& argv);
  ~Vm();
  Vm(const Vm&) = delete;
  Vm& operator=(const Vm&) = delete;

  void type(const std::string& s);
  // What wait_for() saw: the output before the match, and the match's groups (0 = all of it).
  struct Match {
    std::string prefix;
    std::vector<std::string> groups;
  };
  // Reads until `re` matches the output; throws at the deadline. Output after the match stays
  // for the next wait_for().
  Match wait_for(const std::regex& re, std::chrono::seconds deadline);
  // Seconds since the process started.
  double elapsed() const;

 private:
  std::string tail() const;
  pid_t pid_ = -1;
  int in_ = -1, out_ = -1;
  std::string text_;
  std::chrono::steady_clock::time_point started_;
};

// A file under the temp directory, removed on destruction.
class TempFile {
 public:
  explicit TempFile(const std::string& what);
  ~TempFile() { std::filesystem::remove(path_); }
  TempFile(const TempFile&) = delete;
  TempFile& operator=(const TempFile&) = delete;
  std::string path() const { return path_.string(); }

 private:
  std::filesystem::path path_;
};

}  // namespace keel::bench
