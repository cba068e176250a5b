#include "sandbox/confinement.h"

#include <fcntl.h>
#include <grp.h>
#include <sched.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <linux/capability.h>

#include <cerrno>
#include <cstring>

#include "base/error.h"

namespace keel::sandbox {

uid_t default_vmm_id() { return kVmmIdBase + static_cast<uid_t>(::getpid() & 0xFFFF); }

Confinement Confinement::begin() {
  Confinement c;
  auto note = [&](const std::string& what) { c.notes_.push_back(what + ": " + std::strerror(errno)); };
  if (::prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0) note("no_new_privs");
  // Guest memory must not end up in a core file, nor the process be traced by its own uid.
  rlimit none{0, 0};
  if (::setrlimit(RLIMIT_CORE, &none) != 0) note("RLIMIT_CORE");
  if (::prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) != 0) note("not dumpable");
  if (::geteuid() != 0) {
    c.notes_.push_back("not root: no mount namespace, no uid of its own, capabilities unchanged");
    return c;
  }
  // The bounding set is per thread and inherited: emptied now, before any other thread exists.
  for (int cap = 0; cap <= CAP_LAST_CAP; ++cap) ::prctl(PR_CAPBSET_DROP, cap, 0, 0, 0);
  if (::unshare(CLONE_NEWNS) != 0) {
    note("mount namespace");
  } else if (::mount(nullptr, "/", nullptr, MS_REC | MS_PRIVATE, nullptr) != 0) {
    note("private mounts");
  } else {
    c.private_mounts_ = true;
  }
  return c;
}

void Confinement::lock_down(const LockDownOptions& options) {
  auto note = [&](const std::string& what) { notes_.push_back(what + ": " + std::strerror(errno)); };
  if (::geteuid() != 0) return;
  if (private_mounts_) {
    // An empty tmpfs as the new root, mounted over /tmp inside this namespace (the host's /tmp
    // is untouched); the old root is detached once nothing refers to it by path.
    const char* root = "/tmp";
    bool ok = ::mount("keel-sandbox", root, "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC,
                      "size=64k,mode=0755") == 0;
    if (!ok) note("tmpfs root");
    if (ok) {
      ::mkdir("/tmp/etc", 0755);
      ::mkdir("/tmp/old-root", 0700);
      // libslirp reads the host's resolver list for the guest's DNS.
      int fd = ::open("/tmp/etc/resolv.conf", O_WRONLY | O_CREAT | O_CLOEXEC, 0644);
      if (fd >= 0) ::close(fd);
      if (::access("/etc/resolv.conf", R_OK) == 0 &&
          (::mount("/etc/resolv.conf", "/tmp/etc/resolv.conf", nullptr, MS_BIND, nullptr) != 0 ||
           ::mount(nullptr, "/tmp/etc/resolv.conf", nullptr,
                   MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC, nullptr) != 0))
        note("/etc/resolv.conf in the new root");
      if (::syscall(SYS_pivot_root, root, "/tmp/old-root") != 0) {
        note("pivot_root");
        ok = false;
      }
    }
    if (ok) {
      if (::chdir("/") != 0) note("chdir /");
      if (::umount2("/old-root", MNT_DETACH) != 0) note("detach the old root");
      ::rmdir("/old-root");
      if (::mount(nullptr, "/", nullptr, MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC,
                  nullptr) != 0)
        note("read-only root");
    }
  }
  uid_t uid = options.uid ? options.uid : default_vmm_id();
  gid_t gid = options.gid ? options.gid : static_cast<gid_t>(uid);
  if (options.max_tasks) {
    rlimit tasks{options.max_tasks, options.max_tasks};
    if (::setrlimit(RLIMIT_NPROC, &tasks) != 0) note("RLIMIT_NPROC");
  }
  // glibc applies these to every thread. Leaving uid 0 clears every capability (no KEEPCAPS).
  if (::setgroups(0, nullptr) != 0) note("setgroups");
  if (::setresgid(gid, gid, gid) != 0) note("setresgid");
  if (::setresuid(uid, uid, uid) != 0) note("setresuid");
  // Leaving uid 0 made the process dumpable again.
  ::prctl(PR_SET_DUMPABLE, 0, 0, 0, 0);
}

}  // namespace keel::sandbox
