// `keel probe`: can this host's KVM run keel's guests, and can it run a stock Linux kernel?
//
// Besides /dev/kvm access, the API version and the capabilities keel needs, it runs small probe
// guests (probe_guests/*.asm, embedded at build time) that take the paths a stock kernel needs
// and software-assisted KVM (kvm_pvm) gets wrong at CPL0: exception and interrupt delivery, INT3,
// XGETBV/XSAVE/XRSTOR, CMPXCHG16B; and the 32-bit protected-mode entry multiboot and PVH kernels
// use. Each outcome is reported by name.
#pragma once

#include <nlohmann/json.hpp>
#include <string>
#include <string_view>
#include <vector>

namespace keel {

struct KvmCapabilityStatus {
  std::string name;  // "KVM_CAP_PIT2"
  bool present = false;
};

struct KvmProbeCheck {
  std::string name;         // the probe guest's name, e.g. "int3_cpl0"
  std::string description;  // "INT3 at CPL0"
  bool ok = false;
  std::string detail;       // "ok", or what happened (the engine's error, a timeout ...)
};

struct KvmProbeResult {
  std::string device = "/dev/kvm";
  bool device_ok = false;
  std::string device_error;  // why it could not be opened
  int api_version = -1;
  std::vector<KvmCapabilityStatus> capabilities;
  std::vector<KvmProbeCheck> checks;  // empty if the VM could not be created

  // /dev/kvm opens, API 12, every capability present: the engine starts and runs test guests
  // that avoid the failing checks.
  bool can_run_guests() const;
  // ...and every probe guest passed.
  bool can_run_stock_kernel() const;
  // One line: why KVM cannot run a stock kernel (with the first failure's detail), or that it can.
  std::string reason() const;
  // The same verdict in one short line: which checks fail, without their register dumps
  // (`keel probe` shows those).
  std::string verdict() const;
  // The check named `name`, or nullptr.
  const KvmProbeCheck* check(std::string_view name) const;
};

// Runs every check; never throws for a host problem (it is reported in the result).
KvmProbeResult probe_kvm();

std::string to_text(const KvmProbeResult& result);
nlohmann::json to_json(const KvmProbeResult& result);

}  // namespace keel
