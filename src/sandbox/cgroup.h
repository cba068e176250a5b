// cgroup v2 for VMMs: one cgroup per VM under a parent the daemon owns, so that every process a
// start made can be found and killed (cgroup.procs, cgroup.kill) even when the daemon lost track
// of it, and so that a VMM's memory and task count are bounded (memory.max, pids.max) where the
// host's cgroup v2 has those controllers. On a host without cgroup v2 (or without the controllers,
// as a hybrid hierarchy whose memory and pids controllers sit in v1) the caller is told what is
// missing and goes on without.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace keel::sandbox {

// Where cgroup v2 is mounted (/sys/fs/cgroup, or /sys/fs/cgroup/unified on a hybrid host).
std::optional<std::string> cgroup2_mount();

struct CgroupLimits {
  uint64_t memory_max = 0;  // bytes; 0: none
  uint64_t pids_max = 0;    // tasks; 0: none
};

class Cgroup {
 public:
  // Creates (or reuses) `parent`/`name`, enabling the memory and pids controllers below `parent`
  // where they exist, and applies `limits` where it can. `notes` gets one line per limit that
  // could not be applied. Throws Error when the directory cannot be created.
  static Cgroup create(const std::string& parent, const std::string& name,
                       const CgroupLimits& limits, std::vector<std::string>& notes);
  // An existing cgroup directory (it may be gone).
  explicit Cgroup(std::string path) : path_(std::move(path)) {}

  const std::string& path() const { return path_; }
  bool exists() const;
  // The pids in it (empty when it is gone).
  std::vector<pid_t> pids() const;
  // Kills everything in it (cgroup.kill, or SIGKILL to each pid on kernels without it).
  void kill() const;
  // Removes the directory if it is empty; false otherwise.
  bool remove() const;

 private:
  std::string path_;
};

// The path a child process writes "0" to (its cgroup.procs) to join `cgroup`: done in the child
// between fork and exec, so the VMM is inside from its first instruction.
std::string cgroup_procs_path(const std::string& cgroup);

}  // namespace keel::sandbox
