// The VMM's log stays bounded: LogFile moves a full log to PATH.1 and carries on in a new PATH;
// spawn_process (the daemon starting a VMM) moves the previous run's log to PATH.1.
#include "base/log_file.h"

#include <fcntl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>

#include "base/fd.h"
#include "manager/vmm_process.h"

namespace keel {
namespace {

namespace fs = std::filesystem;

struct TempDir {
  TempDir() {
    std::string templ = (fs::temp_directory_path() / "keel-log-XXXXXX").string();
    if (!::mkdtemp(templ.data())) throw std::runtime_error("mkdtemp failed");
    path = templ;
  }
  ~TempDir() { fs::remove_all(path); }
  fs::path path;
};

std::string slurp(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

void write_fd(int fd, const std::string& text) {
  ASSERT_EQ(::write(fd, text.data(), text.size()), static_cast<ssize_t>(text.size()));
}

TEST(LogFile, FullLogMovesToDotOneAndWritersGoOnInANewFile) {
  TempDir dir;
  std::string path = (dir.path / "vm.log").string();
  UniqueFd out(::open("/dev/null", O_WRONLY | O_CLOEXEC));  // stands in for stdout/stderr
  UniqueFd err(::open("/dev/null", O_WRONLY | O_CLOEXEC));
  LogFile log(path, 100, {out.get(), err.get()});

  write_fd(out.get(), "boot\n");
  write_fd(err.get(), "warning\n");
  EXPECT_FALSE(log.check());  // under the limit
  EXPECT_EQ(slurp(path), "boot\nwarning\n");
  EXPECT_EQ(slurp(path + ".1"), "");  // opened up front: rotating needs no directory access

  std::string chatty(120, 'x');
  write_fd(out.get(), chatty);
  EXPECT_TRUE(log.check());
  EXPECT_EQ(slurp(path + ".1"), "boot\nwarning\n" + chatty);
  std::string fresh = slurp(path);
  EXPECT_NE(fresh.find("vm.log.1"), std::string::npos) << fresh;  // the marker says where
  write_fd(out.get(), "after\n");
  write_fd(err.get(), "error\n");
  EXPECT_EQ(slurp(path), fresh + "after\nerror\n");

  // The next rotation replaces .1: two files at most, whatever the guest writes.
  for (int i = 0; i < 3; ++i) {
    write_fd(out.get(), chatty);
    EXPECT_TRUE(log.check());
  }
  EXPECT_LE(fs::file_size(path + ".1"), 100u + chatty.size() + 100u);
  EXPECT_EQ(std::distance(fs::directory_iterator(dir.path), fs::directory_iterator()), 2);
}

TEST(LogFile, RotationThatFailsIsReportedOnceAndLoggingGoesOn) {
  TempDir dir;
  fs::create_directory(dir.path / "sub");
  std::string path = (dir.path / "sub" / "vm.log").string();
  UniqueFd out(::open("/dev/null", O_WRONLY | O_CLOEXEC));
  // vm.log.1 is a directory: there is nowhere to rotate to.
  fs::create_directories(dir.path / "sub" / "vm.log.1" / "x");
  LogFile log(path, 10, {out.get()});
  write_fd(out.get(), "0123456789abc\n");
  EXPECT_FALSE(log.check());
  EXPECT_FALSE(log.check());
  std::string text = slurp(path);
  EXPECT_EQ(text.find("log rotation stopped"), text.rfind("log rotation stopped")) << text;
  EXPECT_NE(text.find("log rotation stopped"), std::string::npos) << text;
  write_fd(out.get(), "still here\n");
  EXPECT_NE(slurp(path).find("still here"), std::string::npos);
}

TEST(LogFile, SpawnProcessMovesThePreviousRunsLogAside) {
  TempDir dir;
  std::string path = (dir.path / "vm.log").string();
  for (const char* run : {"first", "second", "third"}) {
    manager::SpawnedProcess p =
        manager::spawn_process("/bin/sh", {"-c", std::string("echo ") + run}, path);
    p.go();
    int status = 0;
    ASSERT_EQ(::waitpid(p.pid, &status, 0), p.pid);
    ASSERT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0);
  }
  EXPECT_EQ(slurp(path), "third\n");
  EXPECT_EQ(slurp(path + ".1"), "second\n");
  EXPECT_FALSE(fs::exists(path + ".2"));
}

TEST(LogFile, ASpawnedProcessThatIsNeverLetGoExitsWithoutRunning) {
  TempDir dir;
  std::string path = (dir.path / "vm.log").string();
  std::string marker = (dir.path / "ran").string();
  manager::SpawnedProcess p =
      manager::spawn_process("/bin/sh", {"-c", "touch " + marker}, path);
  p.go_pipe.reset();  // the daemon died (or gave up) before it recorded the child
  int status = 0;
  ASSERT_EQ(::waitpid(p.pid, &status, 0), p.pid);
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0);
  EXPECT_FALSE(fs::exists(marker));
}

}  // namespace
}  // namespace keel
