// Snapshot directories: what `snapshot-save` writes and `keel run --restore DIR` reads.
//
//   DIR/state   the VM's state (state/state_format.h): the configuration ("vm"), the RAM file's
//               size and checksum ("memory"), the engine and its vCPUs (engine/engine_state.h) and
//               every device ("dev/..."); checksummed record by record
//   DIR/memory  guest RAM as one sparse file (RAM offset = file offset, zero pages are holes),
//               then a trailer page tying it to DIR/state; a restore maps RAM MAP_PRIVATE and
//               lazily, so one snapshot serves any number of restores in time that does not
//               grow with RAM
//
// Snapshots record disk paths and sizes, not disk contents: a restore refuses a disk whose size
// changed. Both files are written under temporary names and renamed into place, memory first.
// Everything read is untrusted: a missing, truncated or corrupted file, a foreign format version
// or a configuration that does not match throws state::StateError naming the file and the cause.
#pragma once

#include <cstdint>
#include <filesystem>
#include <span>

#include "base/fd.h"
#include "memory/guest_memory.h"
#include "state/state_format.h"
#include "vm/vm_config.h"

namespace keel::snapshot {

inline constexpr const char* kStateFile = "state";
inline constexpr const char* kMemoryFile = "memory";
// A state file larger than this is refused before it is read (RAM is in the memory file).
inline constexpr uint64_t kMaxStateFile = 256ull << 20;

// The configuration a VM was built from (section "vm"); disks also record their current size.
// `disk_sizes`: each disk's file size, from its open descriptor (a confined VMM cannot stat
// paths); empty: stat'ed by path.
void save_config(const VmConfig& config, state::SectionWriter& out,
                 std::span<const uint64_t> disk_sizes = {});
// Throws StateError on a malformed section, or a disk that is missing or changed size.
VmConfig load_config(const state::SectionReader& in);

// A snapshot's two files: DIR/state and DIR/memory, or files named one by one (the daemon
// passes a restoring VMM the files it opened as the VM's owner, as /proc/self/fd/N).
struct Files {
  std::filesystem::path state, memory;
  static Files in(const std::filesystem::path& dir) { return {dir / kStateFile, dir / kMemoryFile}; }
};

// Throws StateError naming the first difference between the VM a snapshot or migration stream
// brings (`saved`) and the one the command line names (`wanted`, the daemon's definition): its
// guest files, disks, networks, RAM and vCPUs. What the VMM opens for a restored VM is then what
// the daemon checked, not what the (untrusted) snapshot names.
void check_same_vm(const VmConfig& saved, const VmConfig& wanted);

// Reads and checks DIR/state.
state::Document read_state(const std::filesystem::path& dir);
state::Document read_state_file(const std::filesystem::path& file);
// The configuration of the VM saved in DIR, its engine included (`keel run --restore`).
VmConfig read_config(const std::filesystem::path& dir);
// The same from a parsed state ("vm" and "engine" sections).
VmConfig config_of(const state::Document& doc);

// The "memory" section's version: 2 adds the memory file's trailer page and its id.
inline constexpr uint32_t kMemoryVersion = 2;

// Writes `memory`'s RAM to `file` (sparse, then a trailer page) and records its size, CRC-32 and
// id in `out` ("memory", kMemoryVersion).
void write_memory(const GuestMemory& memory, const std::filesystem::path& file,
                  state::SectionWriter& out);
// Opens DIR/memory after checking it against the state's "memory" section and `ram_bytes`: its
// size and trailer (the id), without reading RAM; with `verify`, also the CRC-32 of every page in
// use (always for version 1 files, which have no trailer).
UniqueFd open_memory(const std::filesystem::path& dir, const state::Document& state,
                     uint64_t ram_bytes, bool verify = false);
UniqueFd open_memory_file(const std::filesystem::path& file, const state::Document& state,
                          uint64_t ram_bytes, bool verify = false);

// Writes `bytes` to `path` through a temporary file and rename(2).
void write_file_atomically(const std::filesystem::path& path, std::span<const uint8_t> bytes);
// The same into descriptors someone else opened (snapshot-save "state-fd"/"memory-fd"), from the
// start of the file, which ends up holding exactly this; `what` names it in errors.
void write_memory(const GuestMemory& memory, int fd, const std::filesystem::path& what,
                  state::SectionWriter& out);
void write_file(int fd, std::span<const uint8_t> bytes, const std::filesystem::path& what);

}  // namespace keel::snapshot
