// Who is on the other end of the daemon's socket, and acting on the file system as that user:
// a definition may only name files its author could open, so the daemon (root) opens them with
// the author's credentials.
#pragma once

#include <sys/stat.h>
#include <sys/types.h>

#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "base/fd.h"

namespace keel::manager {

struct PeerCredentials {
  pid_t pid = 0;
  uid_t uid = 0;
  gid_t gid = 0;
  std::vector<gid_t> groups;  // supplementary groups at connect time

  bool is_root() const { return uid == 0; }
  nlohmann::json to_json() const;  // {"uid", "gid", "groups"} (the pid is not kept)
  static PeerCredentials from_json(const nlohmann::json& j);
};

// The credentials of a unix socket's peer (SO_PEERCRED, SO_PEERGROUPS); Error if unknown.
PeerCredentials peer_credentials(int fd);

// open(2) of `path` with `flags` as `who` would: on a short-lived thread of its own that takes
// who's file-system uid, gid and groups (per-thread raw syscalls, so the daemon's other threads
// keep theirs). Root opens directly. Returns the fd, or an invalid one with errno set.
UniqueFd open_as(const PeerCredentials& who, const std::string& path, int flags, mode_t mode = 0);
// renameat(2) and unlinkat(2) inside directory `dirfd` the same way (a root daemon renaming in
// a shared sticky directory could replace another user's file); false with errno set.
bool renameat_as(const PeerCredentials& who, int dirfd, const std::string& from, const std::string& to);
bool unlinkat_as(const PeerCredentials& who, int dirfd, const std::string& name);
// `mkdir -p` the same way (existing directories are fine); false with errno set when it fails.
bool mkdir_as(const PeerCredentials& who, const std::string& path, mode_t mode);
// stat(2) the same way; false with errno set when it fails.
bool stat_as(const PeerCredentials& who, const std::string& path, struct stat& st);

}  // namespace keel::manager
