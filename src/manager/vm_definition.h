// A VM definition as the daemon stores it (the JSON of `keel define FILE.json`), its strict
// validation and its translation into a `keel run` command line.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "base/error.h"

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
};

struct NetDefinition {
  std::string type = "user";          // "user" (libslirp) or "tap"
  std::vector<std::string> hostfwd;   // user: "tcp:HOSTPORT-:GUESTPORT"
  std::string ifname;                 // tap: the interface
};

struct VmDefinition {
  std::string name;
  uint32_t vcpus = 1;
  uint64_t memory_mib = 512;
  std::string accel = "auto";
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

  nlohmann::json to_json() const;
};

// Parses and validates a definition: unknown fields, wrong types, out-of-range values, bad names
// and files that do not exist are refused with a DefinitionError naming the field.
VmDefinition parse_definition(const nlohmann::json& document);
// Same, from text (malformed JSON is refused with the parser's position).
VmDefinition parse_definition_text(const std::string& text);

// Checks that the files the definition names still exist (they may vanish after `define`).
void check_files(const VmDefinition& definition);

// The `keel run` arguments (after the program name) that run this VM under a control socket,
// started paused, with its stdout/stderr log at `log_path` (kept under 1 MiB) unless empty.
std::vector<std::string> vmm_arguments(const VmDefinition& definition,
                                       const std::string& control_path,
                                       const std::string& log_path = {});

// A name is 1-63 characters of [A-Za-z0-9._-], starting with a letter or digit (it names files).
bool valid_vm_name(const std::string& name);

}  // namespace keel::manager
