// Allow-lists of system calls, as the code that makes the calls declares them. Header-only types:
// every layer that runs on a confined thread (engines, devices, backends, control, the machine's
// main loop) says here which system calls its code makes, and the machine puts the lists together
// per thread kind (sandbox/seccomp.h installs them).
#pragma once

#include <cstdint>
#include <vector>

namespace keel::sandbox {

// What a thread of the VMM does; each kind gets its own seccomp filter.
enum class ThreadKind {
  kMainLoop,      // the main thread's event loop: console, signals, timers, log rotation
  kControl,       // the control socket (served on the main loop, so it joins that filter)
  kVcpu,          // one per vCPU: the engine's run loop and the device code it dispatches to
  kDeviceWorker,  // virtio-blk I/O and virtio-net backend threads
};
inline constexpr ThreadKind kThreadKinds[] = {ThreadKind::kMainLoop, ThreadKind::kControl,
                                              ThreadKind::kVcpu, ThreadKind::kDeviceWorker};
const char* to_string(ThreadKind kind);

// One allowed system call. With conditions, only when every one holds:
// (argument[index] & mask) == value. Several rules for one name: any of them allows it.
// `fail_errno` != 0 makes the call fail with that errno instead of running (and not trap).
struct SyscallRule {
  struct Condition {
    unsigned index;
    uint64_t mask;
    uint64_t value;
  };
  const char* name;
  std::vector<Condition> conditions = {};
  int fail_errno = 0;
};
using AllowList = std::vector<SyscallRule>;

inline void append(AllowList& to, const AllowList& from) { to.insert(to.end(), from.begin(), from.end()); }

}  // namespace keel::sandbox
