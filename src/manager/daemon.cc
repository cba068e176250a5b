#include "manager/daemon.h"

#include <fcntl.h>
#include <sys/file.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>

#include "base/error.h"
#include "base/log.h"

namespace keel::manager {

namespace {

std::string self_executable() {
  std::error_code ec;
  auto path = std::filesystem::read_symlink("/proc/self/exe", ec);
  if (ec) throw Error("cannot find the keel executable: " + ec.message());
  return path.string();
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
  domains_ = std::make_unique<Domains>(
      *store_, DomainsOptions{options_.state_dir, options_.vmm_binary});
  domains_->recover();
  options_.api.group = options_.group;
  api_ = std::make_unique<ApiServer>(*domains_, options_.socket_path, options_.api);
  log::info("keel daemon: serving {} (state in {})", options_.socket_path, options_.state_dir);
}

Daemon::~Daemon() {
  api_.reset();
  domains_.reset();
  store_.reset();
}

void Daemon::serve() { api_->serve(); }

void Daemon::stop() { api_->stop(); }

}  // namespace keel::manager
