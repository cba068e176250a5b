#include "manager/daemon.h"

#include <fcntl.h>
#include <sys/file.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>

#include "base/error.h"
#include "base/log.h"
#include "base/version.h"
#include "manager/systemd_notify.h"
#include "sandbox/cgroup.h"

namespace keel::manager {

namespace {

std::string self_executable() {
  std::error_code ec;
  auto path = std::filesystem::read_symlink("/proc/self/exe", ec);
  if (ec) throw Error("cannot find the keel executable: " + ec.message());
  return path.string();
}

// One cgroup directory per state directory (several daemons may run, the tests' among them):
// CGROUP2/keel/<FNV-1a of the state directory>. Empty without cgroup v2.
std::string cgroup_parent(const std::string& state_dir) {
  auto mount = sandbox::cgroup2_mount();
  if (!mount) return {};
  std::string absolute = std::filesystem::absolute(state_dir).lexically_normal().string();
  uint64_t h = 1469598103934665603ull;
  for (unsigned char c : absolute) h = (h ^ c) * 1099511628211ull;
  char name[32];
  std::snprintf(name, sizeof name, "%016llx", static_cast<unsigned long long>(h));
  return *mount + "/keel/" + name;
}

// --pidfile: the daemon's pid, for init systems and scripts (0644: anyone may read who runs).
void write_pidfile(const std::string& path) {
  std::string tmp = path + ".tmp";
  UniqueFd fd(::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0644));
  if (!fd) throw_errno("open " + tmp);
  ::fchmod(fd.get(), 0644);
  std::string text = std::to_string(::getpid()) + "\n";
  if (::write(fd.get(), text.data(), text.size()) != static_cast<ssize_t>(text.size()))
    throw_errno("write " + tmp);
  if (::rename(tmp.c_str(), path.c_str()) != 0) throw_errno("rename " + tmp);
}

}  // namespace

Daemon::Daemon(DaemonOptions options) : options_(std::move(options)) {
  if (options_.vmm_binary.empty()) options_.vmm_binary = self_executable();
  // Everything the daemon creates is private unless it says otherwise (the socket is widened to
  // 0660 on purpose); the state directory holds definitions, logs and control sockets.
  ::umask(077);
  std::filesystem::create_directories(options_.state_dir);
  if (::chmod(options_.state_dir.c_str(), 0700) != 0) throw_errno("chmod " + options_.state_dir);
  // One fd per API connection and per stream: take the hard limit.
  rlimit files{};
  if (::getrlimit(RLIMIT_NOFILE, &files) == 0 && files.rlim_cur < files.rlim_max) {
    files.rlim_cur = files.rlim_max;
    ::setrlimit(RLIMIT_NOFILE, &files);
  }
  std::string lock_path = options_.state_dir + "/keel.lock";
  lock_.reset(::open(lock_path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600));
  if (!lock_) throw_errno("open " + lock_path);
  if (::flock(lock_.get(), LOCK_EX | LOCK_NB) != 0) {
    throw Error("another keel daemon uses the state directory " + options_.state_dir);
  }
  store_ = std::make_unique<Store>(options_.state_dir + "/keel.db");
  DomainsOptions domains = options_.domains;
  domains.state_dir = options_.state_dir;
  domains.vmm_binary = options_.vmm_binary;
  domains.vmm_extra_args.insert(domains.vmm_extra_args.end(), {"--sandbox", options_.sandbox});
  if (options_.cgroups) {
    domains.cgroup_parent = cgroup_parent(options_.state_dir);
    if (domains.cgroup_parent.empty())
      log::info("daemon: no cgroup v2 on this host: VMMs run without a cgroup of their own");
  }
  domains_ = std::make_unique<Domains>(*store_, domains);
  domains_->recover();
  options_.api.group = options_.group;
  options_.api.token_file = options_.state_dir + "/http.token";
  api_ = std::make_unique<ApiServer>(*domains_, options_.socket_path, options_.api);
  domains_->autostart();
  if (!options_.pidfile.empty()) write_pidfile(options_.pidfile);
  log::info("daemon: keel {} serving {} (state in {})", kVersion, options_.socket_path,
            options_.state_dir);
  notify_systemd("READY=1\nMAINPID=" + std::to_string(::getpid()));
  if (std::string url = api_->web_url(); !url.empty()) log::info("daemon: web console at {}", url);
}

Daemon::~Daemon() {
  if (!options_.pidfile.empty()) ::unlink(options_.pidfile.c_str());
  api_.reset();
  domains_.reset();
  store_.reset();
  // VMMs that go on running keep their cgroups (and so this one); otherwise nothing is left.
  if (options_.cgroups) {
    std::string parent = cgroup_parent(options_.state_dir);
    if (!parent.empty()) ::rmdir(parent.c_str());
  }
}

void Daemon::serve() { api_->serve(); }

void Daemon::stop() {
  notify_systemd("STOPPING=1");
  api_->stop();
}

}  // namespace keel::manager
