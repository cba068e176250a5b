// A VM definition as the daemon stores it (the JSON of `keel define FILE.json`), its strict
// validation and its translation into a `keel run` command line.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "base/error.h"
#include "base/fd.h"
#include "manager/peer.h"

namespace keel::manager {

// A definition was refused; the message names the field ("field 'disks[0].path': ...").
class DefinitionError : public Error {
 public:
  using Error::Error;
};

struct DiskDefinition {
  std::string path;
  std::string format;  // "raw", "qcow2"; empty: detected from the image
  bool readonly = false;
  std::string type = "file";  // "file" (a regular file) or "block" (a block device; root only)
};

struct NetDefinition {
  std::string type = "user";          // "user" (libslirp) or "tap"
  std::vector<std::string> hostfwd;   // user: "tcp:HOSTPORT-:GUESTPORT"
  std::string ifname;                 // tap: the interface (root only)
  bool host_loopback = false;         // user: may the guest reach the host's 127.0.0.1?
};

// What the daemon does when the guest panics (pvpanic), as libvirt's <on_crash>: destroy the VMM
// (the VM is shut off, crashed), restart it (a fresh VMM, with the crash-loop backoff), or
// preserve it (the VMM stays, paused, the VM crashed (panicked), for inspection until destroyed).
inline constexpr const char* kOnCrashActions[] = {"destroy", "restart", "preserve"};

struct VmDefinition {
  std::string name;
  uint32_t vcpus = 1;
  uint64_t memory_mib = 512;
  std::string accel = "auto";
  std::string cpu = "host";  // the CPU model (keel run --cpu): host or baseline
  std::string kernel;      // a Linux kernel (bzImage / ELF vmlinux) ...
  std::string initrd;
  std::string cmdline;
  std::string test_guest;  // ... or a purpose-built test guest (tests/guests/README.md)
  std::string boot = "kernel";  // or "disk": the first disk's own boot menu
  std::string boot_entry;       // with boot "disk": an entry number or title
  struct CloudInit {
    std::string user_data, meta_data, network_config;  // files; user_data required
  };
  std::optional<CloudInit> cloud_init;
  std::vector<DiskDefinition> disks;
  std::vector<NetDefinition> nets;
  bool autostart = false;            // started when the daemon starts (once per host boot)
  std::string on_crash = "destroy";  // kOnCrashActions

  nlohmann::json to_json() const;
  // The top-level fields whose values differ from a stored definition (to_json() of another);
  // for a running VM only those that need no restart may change: autostart, on_crash.
  std::vector<std::string> changed_fields(const nlohmann::json& stored) const;
};

// Parses and validates a definition: unknown fields, wrong types, out-of-range values, bad names
// and files that do not exist are refused with a DefinitionError naming the field. Sizes, vCPU
// counts and host forwards go through the same checks `keel run` makes of its flags
// (vm/vm_config.h, backends/net/slirp_backend.h), so what passes here also passes in the VMM.
VmDefinition parse_definition(const nlohmann::json& document);
// Same, from text (malformed JSON is refused with the parser's position).
VmDefinition parse_definition_text(const std::string& text);

// Checks that the files the definition names still exist (they may vanish after `define`).
void check_files(const VmDefinition& definition);

// The files a definition names, opened as its owner would open them (kernel, initrd and test
// guest read-only, disks read-write unless readonly). A file the owner cannot open, one of the
// wrong type (only regular files; block devices only for a disk of type "block"), and device
// nodes or tap interfaces for anyone but root are refused with a DefinitionError naming the field.
// The kernel is checked as the VMM's loader checks it (a bzImage or ELF vmlinux, a command line
// that fits its cmdline_size).
struct DefinitionFiles {
  UniqueFd kernel, initrd, test_guest;
  std::vector<UniqueFd> disks;
};
DefinitionFiles open_definition_files(const VmDefinition& definition,
                                      const PeerCredentials& owner);

// The `keel run` arguments (after the program name) that run this VM under a control socket,
// started paused, with its stdout/stderr log at `log_path` (kept under 1 MiB) unless empty.
std::vector<std::string> vmm_arguments(const VmDefinition& definition,
                                       const std::string& control_path,
                                       const std::string& log_path = {});

// A name is 1-63 characters of [A-Za-z0-9._-], starting with a letter or digit (it names files).
bool valid_vm_name(const std::string& name);

}  // namespace keel::manager
