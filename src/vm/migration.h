// Live migration between keel processes (QEMU's `migrate` / `-incoming`), by pre-copy.
//
// The stream is keel's state format (state/state_format.h) record by record, after its header:
//   "vm"     the configuration (snapshot::save_config), so the target builds the same machine
//   "ram"    fields "offset" (RAM offset) and "data" (up to kRamRecordPages pages), any number
//   "state"  field "blob": the complete non-RAM state, a state file's bytes (engine, devices)
//   "done"   nothing follows; the target answers one byte, kAck, once its machine is built
//
// The source sends every non-zero page while the guest runs, then iterates: pages whose content
// changed since they were sent (a 64-bit hash per page: engine-neutral, it needs no dirty log
// from the emu MMU) are sent again, until what is left fits the downtime budget at the measured
// bandwidth or kMaxIterations passes were made. Then it pauses the VM, quiesces its devices, sends
// the last changed pages and the state, and waits for the target's answer: with it, the source
// ends ("migrated"); without it (any error, a refusal, a timeout) the source resumes the VM, which
// keeps running. Everything the target reads is checked as a snapshot is; a bad stream is refused
// with the cause named.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <string>

#include "base/fd.h"
#include "memory/guest_memory.h"
#include "state/state_format.h"
#include "vm/vm_config.h"

namespace keel {

class Machine;

namespace migration {

inline constexpr uint32_t kRamRecordPages = 256;
inline constexpr uint32_t kMaxIterations = 30;
inline constexpr uint8_t kAck = 'K';

// "unix:PATH" or "tcp:HOST:PORT" (HOST an IPv4 address or "localhost"). Throws UsageError.
struct Uri {
  enum class Kind { kUnix, kTcp } kind = Kind::kUnix;
  std::string path;  // unix
  std::string host;  // tcp
  uint16_t port = 0;
};
Uri parse_uri(const std::string& text);
UniqueFd connect_to(const Uri& uri, std::chrono::milliseconds timeout);
UniqueFd listen_on(const Uri& uri);

// Progress, as `query-migrate` reports it. Updated by the migration thread, read by anyone.
struct Status {
  std::string status = "none";  // none, active, completed, failed
  std::string error;
  uint64_t total_bytes = 0, transferred_bytes = 0, remaining_bytes = 0;
  uint64_t iterations = 0, dirty_pages_rate = 0;  // pages per second in the last pass
  uint64_t downtime_ms = 0, total_time_ms = 0;
};

struct Options {
  std::chrono::milliseconds downtime_limit{300};
  // Called on the migration thread as the status changes ("active", "completed", "failed"):
  // the control socket's MIGRATION events.
  std::function<void(const std::string& status)> on_status;
};

// Runs a migration of `machine` to `uri` (or over `connection` when it is open: a stream socket
// someone else connected, "fd:NAME") on the calling thread (the control target's migration
// thread); `status` is updated under `mutex` as it goes. On success the machine is shut down
// ("migrated"); on failure it runs on as before and status says why.
void migrate(Machine& machine, const Uri& uri, UniqueFd connection, const Options& options,
             Status& status, std::mutex& mutex);

// What the target receives before it builds its machine.
struct Incoming {
  VmConfig config;
  std::unique_ptr<GuestMemory> memory;
  state::Document state;
  UniqueFd connection;  // answer kAck on it once the machine is built
};
// Accepts one connection on `listener` and reads a whole migration stream from it. Throws
// state::StateError naming what is wrong with the stream.
Incoming receive(int listener, const std::string& what);
// The same from a stream that is already connected.
Incoming receive_connected(UniqueFd connection, const std::string& what);

// `keel run --incoming fd:N`: an inherited descriptor, a listening socket (one connection is
// accepted, as from the daemon's `keel migrate`) or a connected stream. Throws UsageError.
int parse_fd_uri(const std::string& text);
bool is_listening(int fd);

}  // namespace migration
}  // namespace keel
