#include "manager/peer.h"

#include <fcntl.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <functional>
#include <thread>

#include "base/error.h"

namespace keel::manager {

nlohmann::json PeerCredentials::to_json() const {
  return nlohmann::json{{"uid", uid}, {"gid", gid}, {"groups", groups}};
}

PeerCredentials PeerCredentials::from_json(const nlohmann::json& j) {
  PeerCredentials p;
  if (!j.is_object()) return p;  // definitions from before owners were recorded: root's
  p.uid = j.value("uid", 0u);
  p.gid = j.value("gid", 0u);
  if (j.contains("groups") && j["groups"].is_array())
    for (const auto& g : j["groups"])
      if (g.is_number_unsigned()) p.groups.push_back(g.get<gid_t>());
  return p;
}

PeerCredentials peer_credentials(int fd) {
  ucred cred{};
  socklen_t len = sizeof cred;
  if (::getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) != 0) throw_errno("SO_PEERCRED");
  PeerCredentials peer{cred.pid, cred.uid, cred.gid, {}};
  std::vector<gid_t> groups(64);
  for (;;) {
    socklen_t glen = static_cast<socklen_t>(groups.size() * sizeof(gid_t));
    if (::getsockopt(fd, SOL_SOCKET, SO_PEERGROUPS, groups.data(), &glen) == 0) {
      groups.resize(glen / sizeof(gid_t));
      break;
    }
    if (errno != ERANGE || groups.size() >= 65536) throw_errno("SO_PEERGROUPS");
    groups.resize(std::max<size_t>(glen / sizeof(gid_t), groups.size() * 2));
  }
  peer.groups = std::move(groups);
  return peer;
}

namespace {

// Runs `fn` on a thread that has taken `who`'s file-system identity; returns its errno.
int as_user(const PeerCredentials& who, const std::function<bool()>& fn) {
  if (who.is_root()) return fn() ? 0 : errno;
  int err = 0;
  std::thread([&] {
    // Raw syscalls: glibc's setgroups() would change every thread of the daemon. setfsuid to a
    // non-zero uid also drops the file-system capabilities (CAP_DAC_OVERRIDE, ...) of this thread.
    if (::syscall(SYS_setgroups, who.groups.size(), who.groups.data()) != 0) {
      err = errno;
      return;
    }
    ::syscall(SYS_setfsgid, who.gid);
    ::syscall(SYS_setfsuid, who.uid);
    if (static_cast<uid_t>(::syscall(SYS_setfsuid, -1)) != who.uid) {
      err = EPERM;
      return;
    }
    err = fn() ? 0 : errno;
  }).join();
  return err;
}

}  // namespace

UniqueFd open_as(const PeerCredentials& who, const std::string& path, int flags, mode_t mode) {
  UniqueFd fd;
  int err = as_user(who, [&] {
    fd.reset(::open(path.c_str(), flags | O_CLOEXEC | O_NOCTTY, mode));
    return fd.valid();
  });
  errno = err;
  return fd;
}

bool renameat_as(const PeerCredentials& who, int dirfd, const std::string& from, const std::string& to) {
  int err = as_user(who, [&] { return ::renameat(dirfd, from.c_str(), dirfd, to.c_str()) == 0; });
  errno = err;
  return err == 0;
}

bool unlinkat_as(const PeerCredentials& who, int dirfd, const std::string& name) {
  int err = as_user(who, [&] { return ::unlinkat(dirfd, name.c_str(), 0) == 0; });
  errno = err;
  return err == 0;
}

bool mkdir_as(const PeerCredentials& who, const std::string& path, mode_t mode) {
  int err = as_user(who, [&] {
    // Each missing component in turn, as `mkdir -p`.
    for (size_t at = path.find('/', 1);; at = path.find('/', at + 1)) {
      std::string part = path.substr(0, at);
      struct stat st {};
      if (::mkdir(part.c_str(), mode) != 0) {
        if (errno != EEXIST || ::stat(part.c_str(), &st) != 0) return false;
        if (!S_ISDIR(st.st_mode)) {
          errno = ENOTDIR;
          return false;
        }
      }
      if (at == std::string::npos) return true;
    }
  });
  errno = err;
  return err == 0;
}

bool stat_as(const PeerCredentials& who, const std::string& path, struct stat& st) {
  int err = as_user(who, [&] { return ::stat(path.c_str(), &st) == 0; });
  errno = err;
  return err == 0;
}

}  // namespace keel::manager
