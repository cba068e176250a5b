#include "sandbox/cgroup.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "base/error.h"

namespace keel::sandbox {

namespace {

bool write_file(const std::string& path, const std::string& text) {
  int fd = ::open(path.c_str(), O_WRONLY | O_CLOEXEC);
  if (fd < 0) return false;
  bool ok = ::write(fd, text.data(), text.size()) == static_cast<ssize_t>(text.size());
  ::close(fd);
  return ok;
}

std::string read_file(const std::string& path) {
  std::ifstream in(path);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

bool has_word(const std::string& list, const std::string& word) {
  std::istringstream in(list);
  for (std::string w; in >> w;)
    if (w == word) return true;
  return false;
}

}  // namespace

std::optional<std::string> cgroup2_mount() {
  std::ifstream in("/proc/self/mountinfo");
  for (std::string line; std::getline(in, line);) {
    // ... mount-point ... - fstype source options
    size_t dash = line.find(" - ");
    if (dash == std::string::npos) continue;
    std::istringstream tail(line.substr(dash + 3));
    std::string fstype;
    tail >> fstype;
    if (fstype != "cgroup2") continue;
    std::istringstream head(line.substr(0, dash));
    std::string id, parent, devno, root, mount_point;
    head >> id >> parent >> devno >> root >> mount_point;
    if (root == "/") return mount_point;
  }
  return std::nullopt;
}

Cgroup Cgroup::create(const std::string& parent, const std::string& name,
                      const CgroupLimits& limits, std::vector<std::string>& notes) {
  std::error_code ec;
  std::filesystem::create_directories(parent, ec);
  if (ec) throw Error("cgroup " + parent + ": " + ec.message());
  // Controllers must be enabled in every ancestor's subtree_control; ours is the last step.
  std::string available = read_file(parent + "/cgroup.controllers");
  for (const char* controller : {"memory", "pids"}) {
    if (!has_word(available, controller)) continue;
    if (!has_word(read_file(parent + "/cgroup.subtree_control"), controller))
      write_file(parent + "/cgroup.subtree_control", std::string("+") + controller);
  }
  std::string path = parent + "/" + name;
  if (::mkdir(path.c_str(), 0700) != 0 && errno != EEXIST) throw_errno("mkdir " + path);
  std::string enabled = read_file(path + "/cgroup.controllers");
  auto apply = [&](const char* controller, const char* file, uint64_t value) {
    if (value == 0) return;
    if (!has_word(enabled, controller)) {
      notes.push_back(std::string("no ") + controller + " controller in cgroup v2 here: " + file +
                      " not set");
      return;
    }
    if (!write_file(path + "/" + file, std::to_string(value)))
      notes.push_back(std::string("cannot set ") + file + ": " + std::strerror(errno));
  };
  apply("memory", "memory.max", limits.memory_max);
  apply("pids", "pids.max", limits.pids_max);
  return Cgroup(path);
}

bool Cgroup::exists() const { return ::access((path_ + "/cgroup.procs").c_str(), F_OK) == 0; }

std::vector<pid_t> Cgroup::pids() const {
  std::vector<pid_t> out;
  std::ifstream in(path_ + "/cgroup.procs");
  for (pid_t pid; in >> pid;) out.push_back(pid);
  return out;
}

void Cgroup::kill() const {
  if (write_file(path_ + "/cgroup.kill", "1")) return;
  for (pid_t pid : pids()) ::kill(pid, SIGKILL);
}

bool Cgroup::remove() const { return ::rmdir(path_.c_str()) == 0 || errno == ENOENT; }

std::string cgroup_procs_path(const std::string& cgroup) { return cgroup + "/cgroup.procs"; }

}  // namespace keel::sandbox
