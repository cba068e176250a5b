// A VMM's confinement, applied in two steps around its set-up (as Firecracker's jailer, but from
// inside the VMM, which opens /dev/kvm, its disks, taps and sockets first):
//
//   begin()      at the start of `keel run`, while the process has one thread: no_new_privs, not
//                dumpable, no core files, an empty capability bounding set and (as root) a private
//                mount namespace. Threads made later inherit all of it.
//   lock_down()  after set-up, before the guest runs: the root becomes an empty read-only tmpfs
//                (holding only /etc/resolv.conf for user networking's DNS), the process takes its
//                own unprivileged uid and gid (every capability goes with it) and a cap on its
//                task count. Seccomp (ThreadLauncher::confine) follows.
//
// What cannot be done (not root, a kernel without a feature) is noted, not fatal: notes() says
// what, and `keel run` prints it.
#pragma once

#include <sys/types.h>

#include <string>
#include <vector>

namespace keel::sandbox {

// The uid and gid a VMM runs as when nobody names one: a block of ids no account uses, one per
// VMM process (by pid) so that VMMs cannot signal or trace each other.
inline constexpr uid_t kVmmIdBase = 0x4B450000;  // "KE" << 16
uid_t default_vmm_id();

struct LockDownOptions {
  uid_t uid = 0;  // 0: default_vmm_id()
  gid_t gid = 0;  // 0: the uid
  unsigned max_tasks = 0;  // RLIMIT_NPROC for the VMM's uid; 0: none
};

class Confinement {
 public:
  // Call while the process has a single thread.
  static Confinement begin();

  void lock_down(const LockDownOptions& options);

  const std::vector<std::string>& notes() const { return notes_; }
  bool private_mounts() const { return private_mounts_; }

 private:
  std::vector<std::string> notes_;
  bool private_mounts_ = false;
};

}  // namespace keel::sandbox
