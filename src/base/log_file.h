// A log file that does not grow without bound: the VMM's stdout and stderr (its own messages and
// the guest's serial console) appended to PATH, which is moved to PATH.1 (replacing the older
// one) whenever it has grown past a limit, so at most two files of about that size remain -- the
// shape of libvirt's virtlogd (max_size, max_backups) with one backup.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "base/fd.h"

namespace keel {

// Moves `path` to `path.1`, replacing it; nothing if `path` does not exist. Throws Error otherwise.
void rotate_log_file(const std::string& path);

class LogFile {
 public:
  static constexpr uint64_t kDefaultMaxBytes = 1 << 20;

  // Opens `path` for appending (created 0600, no symbolic links followed) and makes each of `fds`
  // (stdout and stderr by default) write to it; opens `path`.1 too, so that rotating needs no
  // access to the directory later (a confined VMM has none). Throws Error naming the path.
  explicit LogFile(std::string path, uint64_t max_bytes = kDefaultMaxBytes,
                   std::vector<int> fds = {1, 2});

  // If the file has reached max_bytes: its content is copied over `path`.1 and it is truncated
  // (writers append, so they go on at its start), then a line says where the earlier part went.
  // Returns whether it rotated. If that fails it says so once on `fds` and never rotates again.
  // Writers on other threads need no lock. Bytes written between the copy and the truncation are
  // lost (the copy catches up until the file stops growing, so that is a short window). Call it
  // regularly (`keel run --log-file` does every second on the main loop), so the file overshoots
  // the limit by at most what is written between two calls.
  bool check();

  const std::string& path() const { return path_; }

 private:
  std::string path_;
  uint64_t max_bytes_;
  std::vector<int> fds_;
  UniqueFd read_;    // `path`, for copying out
  UniqueFd backup_;  // `path`.1
  std::string backup_error_;  // why `path`.1 could not be opened
  bool failed_ = false;
};

}  // namespace keel
