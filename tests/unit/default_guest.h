// Test fixture helper: the default guest (Debian's cloud kernel, busybox initramfs, ext4 disk).
//
// Looks in $KEEL_GUEST_DIR, then in the build's default guest directory; if the files are not
// there or older than the scripts that make them, runs scripts/build-default-guest.sh into the
// build directory once per test process (it needs the Debian mirror the first time, then its
// cache). Tests call GTEST_SKIP() with the returned reason when the guest cannot be had.
#pragma once

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <mutex>
#include <string>
#include <vector>

namespace keel::testing {

struct DefaultGuest {
  std::filesystem::path dir;   // empty when unavailable
  std::string why_missing;     // set when unavailable
  std::filesystem::path kernel() const { return dir / "vmlinuz"; }
  std::filesystem::path initrd() const { return dir / "initramfs.cpio.gz"; }
  std::filesystem::path disk() const { return dir / "disk.ext4"; }
  explicit operator bool() const { return !dir.empty(); }
};

inline bool default_guest_complete(const std::filesystem::path& dir) {
  namespace fs = std::filesystem;
  std::error_code ec;
  return fs::is_regular_file(dir / "vmlinuz", ec) && fs::is_regular_file(dir / "initramfs.cpio.gz", ec) &&
         fs::is_regular_file(dir / "disk.ext4", ec);
}

// True when the build's guest predates its build script or the files it puts in the guest
// (its .stamp is older): tests then rebuild it (the script is a no-op when it is up to date).
inline bool default_guest_stale(const std::filesystem::path& dir) {
  namespace fs = std::filesystem;
  std::error_code ec;
  const auto built = fs::last_write_time(dir / ".stamp", ec);
  if (ec) return true;
  const fs::path src = fs::path(KEEL_SOURCE_DIR) / "scripts";
  std::vector<fs::path> inputs{src / "build-default-guest.sh"};
  for (const auto& entry : fs::directory_iterator(src / "default-guest", ec))
    inputs.push_back(entry.path());
  for (const fs::path& input : inputs) {
    const auto changed = fs::last_write_time(input, ec);
    if (!ec && changed > built) return true;
  }
  return false;
}

// KEEL_LINUX_TESTS=off turns the Linux guest tests into skips (they take minutes on emu).
inline bool linux_tests_off() {
  const char* env = std::getenv("KEEL_LINUX_TESTS");
  return env && std::string(env) == "off";
}

inline const DefaultGuest& default_guest() {
  static std::once_flag once;
  static DefaultGuest guest;
  std::call_once(once, [] {
    if (const char* env = std::getenv("KEEL_GUEST_DIR"); env && *env) {
      if (default_guest_complete(env)) {
        guest.dir = env;
        return;
      }
    }
    const std::filesystem::path dir = KEEL_DEFAULT_GUEST_DIR;
    if (default_guest_complete(dir) && !default_guest_stale(dir)) {
      guest.dir = dir;
      return;
    }
    const std::string log = dir.string() + ".log";
    const std::string cmd = std::string(KEEL_SOURCE_DIR) + "/scripts/build-default-guest.sh '" +
                            dir.string() + "' >'" + log + "' 2>&1";
    std::fprintf(stderr, "building the default guest into %s (log: %s)\n", dir.c_str(), log.c_str());
    if (std::system(cmd.c_str()) == 0 && default_guest_complete(dir)) {
      guest.dir = dir;
    } else if (default_guest_complete(dir)) {
      std::fprintf(stderr, "could not rebuild the default guest; using the old one in %s\n",
                   dir.c_str());
      guest.dir = dir;
    } else {
      guest.why_missing = "the default guest is not built and scripts/build-default-guest.sh failed "
                          "(no Debian mirror?); see " + log;
    }
  });
  return guest;
}

}  // namespace keel::testing
