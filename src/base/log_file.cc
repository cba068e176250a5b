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
  UniqueFd file(::open(path_.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC | O_NOFOLLOW, 0600));
  if (!file) throw_errno("open " + path_);
  for (int fd : fds_)
    if (::dup2(file.get(), fd) < 0) throw_errno("dup2 onto " + path_);
  read_.reset(::open(path_.c_str(), O_RDONLY | O_CLOEXEC | O_NOFOLLOW));
  if (!read_) throw_errno("open " + path_);
  std::string backup = path_ + ".1";
  backup_.reset(::open(backup.c_str(), O_WRONLY | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600));
  if (!backup_) backup_error_ = errno_message("open " + backup);
}

bool LogFile::check() {
  struct stat st{};
  if (fds_.empty() || ::fstat(fds_[0], &st) != 0) return false;
  if (failed_ || static_cast<uint64_t>(st.st_size) < max_bytes_) return false;
  auto stop = [&](const std::string& why) {
    failed_ = true;
    std::string line = "keel: log rotation stopped: " + why + "\n";
    [[maybe_unused]] ssize_t n = ::write(fds_[0], line.data(), line.size());
    return false;
  };
  if (!backup_) return stop(backup_error_);
  if (::ftruncate(backup_.get(), 0) != 0) return stop(errno_message("truncate " + path_ + ".1"));
  // Copy until the file stops growing, then cut it.
  off_t done = 0;
  for (;;) {
    if (::fstat(read_.get(), &st) != 0) return stop(errno_message("stat " + path_));
    if (st.st_size <= done) break;
    off_t from = done, to = done;
    ssize_t n = ::copy_file_range(read_.get(), &from, backup_.get(), &to,
                                  static_cast<size_t>(st.st_size - done), 0);
    if (n <= 0) return stop(errno_message("copy " + path_ + " to " + path_ + ".1"));
    done += n;
  }
  if (::ftruncate(fds_[0], 0) != 0) return stop(errno_message("truncate " + path_));
  std::string marker = "keel: log continued; the previous " + std::to_string(done) +
                       " bytes are in " + path_ + ".1\n";
  [[maybe_unused]] ssize_t n = ::write(fds_[0], marker.data(), marker.size());
  return true;
}

}  // namespace keel
