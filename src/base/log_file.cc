#include "base/log_file.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>

#include "base/error.h"
#include "base/fd.h"

namespace keel {

void rotate_log_file(const std::string& path) {
  if (::rename(path.c_str(), (path + ".1").c_str()) != 0 && errno != ENOENT)
    throw_errno("rotate " + path);
}

LogFile::LogFile(std::string path, uint64_t max_bytes, std::vector<int> fds)
    : path_(std::move(path)), max_bytes_(max_bytes), fds_(std::move(fds)) {
  redirect();
}

void LogFile::redirect() {
  UniqueFd file(::open(path_.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC | O_NOFOLLOW, 0600));
  if (!file) throw_errno("open " + path_);
  for (int fd : fds_)
    if (::dup2(file.get(), fd) < 0) throw_errno("dup2 onto " + path_);
}

bool LogFile::check() {
  struct stat st{};
  if (fds_.empty() || ::fstat(fds_[0], &st) != 0) return false;
  if (failed_ || static_cast<uint64_t>(st.st_size) < max_bytes_) return false;
  try {
    rotate_log_file(path_);
    redirect();
  } catch (const Error& e) {
    failed_ = true;
    std::string line = std::string("keel: log rotation stopped: ") + e.what() + "\n";
    [[maybe_unused]] ssize_t n = ::write(fds_[0], line.data(), line.size());
    return false;
  }
  std::string marker = "keel: log continued; the previous " + std::to_string(st.st_size) +
                       " bytes are in " + path_ + ".1\n";
  [[maybe_unused]] ssize_t n = ::write(fds_[0], marker.data(), marker.size());
  return true;
}

}  // namespace keel
