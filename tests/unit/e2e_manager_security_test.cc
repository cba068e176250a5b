// The daemon's socket as a hostile or careless local user meets it: file modes under a wide
// umask, users outside the daemon's group, members naming files they cannot open or device nodes,
// abandoned streams, slow clients and oversized bodies. The VMM is the stand-in of
// e2e_manager_daemon_test.cc (keel_tests itself with KEEL_TEST_FAKE_VMM=1).
#include <grp.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>

#include <fstream>

#include "control/unix_socket.h"
#include "e2e_manager_helpers.h"
#include "keel_process.h"

namespace keel::e2e {
namespace {

using testing::as_user;

constexpr uid_t kNobody = 65534;
constexpr gid_t kNogroup = 65534;
constexpr gid_t kOtherGroup = 54321;  // no group of the daemon's

std::string self_exe() { return std::filesystem::read_symlink("/proc/self/exe").string(); }

// connect(2) to a unix socket: "ok" or the errno's name.
std::string try_connect(const std::string& path) {
  UniqueFd fd(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::strncpy(addr.sun_path, path.c_str(), sizeof addr.sun_path - 1);
  if (::connect(fd.get(), reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0) return "ok";
  return strerrorname_np(errno);
}

mode_t mode_of(const std::string& path) {
  struct stat st{};
  ::lstat(path.c_str(), &st);
  return st.st_mode & 07777;
}

class ManagerSecurityTest : public DaemonFixture {
 protected:
  std::vector<std::string> daemon_extra_args() override {
    return {"--vmm", self_exe(), "--group", "nogroup"};
  }
  void daemon_environment() override {
    ::setenv("KEEL_TEST_FAKE_VMM", "1", 1);
    ::umask(0);  // the careless case: everything the daemon does not set explicitly is 0777
  }
  void SetUp() override {
    DaemonFixture::SetUp();
    ::chmod(dir.c_str(), 0755);  // so other users reach the socket, whose own mode decides
    guest = dir + "/guest.bin";
    std::ofstream(guest) << "counter guest";
    ::chmod(guest.c_str(), 0644);
    secret = dir + "/secret.img";
    std::ofstream(secret) << "root only";
    ::chmod(secret.c_str(), 0600);
    start_daemon();
  }
  json definition(const std::string& name, const std::string& guest_file) {
    return json{{"name", name}, {"vcpus", 1}, {"memory_mib", 16}, {"test_guest", guest_file}};
  }
  // POST /v1/vms as nobody:nogroup (a member of the daemon's group): "STATUS BODY".
  std::string define_as_member(const json& def) {
    return as_user(kNobody, kNogroup, [&] {
      auto r = manager::ApiClient(socket, 10s).request("POST", "/v1/vms", def.dump());
      return std::to_string(r.status) + " " + r.body;
    });
  }

  std::string guest, secret;
};

TEST_F(ManagerSecurityTest, SocketStateDirectoryAndStoreHaveExplicitModesUnderAnyUmask) {
  EXPECT_EQ(mode_of(socket) & 0777, 0660u);
  struct stat st{};
  ASSERT_EQ(::stat(socket.c_str(), &st), 0);
  EXPECT_EQ(st.st_uid, 0u);
  EXPECT_EQ(st.st_gid, kNogroup);
  EXPECT_EQ(mode_of(state_dir), 0700u);
  EXPECT_EQ(mode_of(state_dir + "/run"), 0700u);
  EXPECT_EQ(mode_of(state_dir + "/log"), 0700u);
  EXPECT_EQ(mode_of(state_dir + "/keel.db") & 077, 0u);
  EXPECT_EQ(mode_of(state_dir + "/keel.lock") & 077, 0u);
  // A VMM's log and control socket are private too.
  api().call("POST", "/v1/vms", definition("m1", guest));
  api().call("POST", "/v1/vms/m1/start");
  wait_state("m1", "running");
  EXPECT_EQ(mode_of(state_dir + "/log/m1.log") & 077, 0u);
  EXPECT_EQ(mode_of(state_dir + "/run/m1.sock") & 077, 0u);
  api().call("POST", "/v1/vms/m1/destroy");
}

TEST_F(ManagerSecurityTest, AUserOutsideTheGroupGetsEacces) {
  EXPECT_EQ(as_user(kNobody, kOtherGroup, [&] { return try_connect(socket); }), "EACCES");
  // Members and root get in.
  EXPECT_EQ(as_user(kNobody, kNogroup, [&] { return try_connect(socket); }), "ok");
  EXPECT_EQ(try_connect(socket), "ok");
}

TEST_F(ManagerSecurityTest, TheDaemonChecksPeersItselfWhenTheSocketModeIsWidened) {
  ::chmod(socket.c_str(), 0666);  // someone loosened it: SO_PEERCRED still decides
  std::string out = as_user(kNobody, kOtherGroup, [&] {
    auto r = manager::ApiClient(socket, 10s).request("GET", "/v1/vms");
    return std::to_string(r.status) + " " + r.body;
  });
  EXPECT_EQ(out.substr(0, 3), "403") << out;
  EXPECT_NE(out.find("uid 65534 may not use the keel daemon"), std::string::npos) << out;
}

TEST_F(ManagerSecurityTest, AMembersDefinitionMayNameOnlyFilesTheMemberCanOpen) {
  // A root-only file is refused, naming the field and the reason.
  std::string out = define_as_member(definition("leak", secret));
  EXPECT_EQ(out.substr(0, 3), "422") << out;
  EXPECT_NE(out.find("field 'test_guest': uid 65534 cannot open '" + secret +
                     "' for reading: Permission denied"), std::string::npos) << out;
  // /etc/shadow as a disk, read-write.
  json shadow = definition("shadow", guest);
  shadow["disks"] = json::array({json{{"path", "/etc/shadow"}}});
  out = define_as_member(shadow);
  EXPECT_EQ(out.substr(0, 3), "422") << out;
  EXPECT_NE(out.find("field 'disks[0].path': uid 65534 cannot open '/etc/shadow'"),
            std::string::npos) << out;
  // A readable file is fine.
  out = define_as_member(definition("ok", guest));
  EXPECT_EQ(out.substr(0, 3), "201") << out;
  // A file readable but not writable is fine as a readonly disk only.
  json ro = definition("ro", guest);
  ro["disks"] = json::array({json{{"path", guest}}});
  out = define_as_member(ro);
  EXPECT_NE(out.find("cannot open '" + guest + "' for reading and writing"), std::string::npos)
      << out;
  ro["disks"][0]["readonly"] = true;
  EXPECT_EQ(define_as_member(ro).substr(0, 3), "201");

  // Device nodes: never as a plain file; as "type": "block" for root only.
  json dev = definition("dev", guest);
  dev["disks"] = json::array({json{{"path", "/dev/loop0"}}});
  out = define_as_member(dev);
  EXPECT_NE(out.find("is not a regular file (a block device needs \\\"type\\\": \\\"block\\\")"),
            std::string::npos) << out;
  dev["disks"][0]["type"] = "block";
  out = define_as_member(dev);
  EXPECT_NE(out.find("field 'disks[0].type': only root may give a VM a block device"),
            std::string::npos) << out;
  EXPECT_EQ(api().request("POST", "/v1/vms", dev.dump()).status, 201);
  json chr = definition("chr", guest);
  chr["disks"] = json::array({json{{"path", "/dev/null"}, {"type", "block"}}});
  EXPECT_EQ(api().request("POST", "/v1/vms", chr.dump()).status, 422);
  // Tap interfaces: root only.
  json tap = definition("tap", guest);
  tap["nets"] = json::array({json{{"type", "tap"}, {"ifname", "tap0"}}});
  out = define_as_member(tap);
  EXPECT_NE(out.find("only root may attach a VM to a tap interface"), std::string::npos) << out;
}

TEST_F(ManagerSecurityTest, FilesAreCheckedAgainAtStartWithTheOwnersCredentials) {
  std::string file = dir + "/later.bin";
  std::ofstream(file) << "counter guest";
  ::chmod(file.c_str(), 0644);
  ASSERT_EQ(define_as_member(definition("later", file)).substr(0, 3), "201");
  ::chmod(file.c_str(), 0600);  // no longer the owner's to read
  auto r = api().request("POST", "/v1/vms/later/start", "");
  EXPECT_EQ(r.status, 500) << r.body;
  EXPECT_NE(r.body.find("uid 65534 cannot open '" + file + "'"), std::string::npos) << r.body;
  EXPECT_EQ(info("later")["state"], "shut off");
}

// Save directories are created, written and read as the member who asks, never as the daemon;
// moving a VM to another daemon is root's.
TEST_F(ManagerSecurityTest, AMemberSavesAndRestoresOnlyWhereItMayAndCannotMigrate) {
  ASSERT_EQ(define_as_member(definition("mine", guest)).substr(0, 3), "201");
  ASSERT_EQ(api().request("POST", "/v1/vms/mine/start", "").status, 200);
  std::string root_only = dir + "/root-only";
  ASSERT_EQ(::mkdir(root_only.c_str(), 0700), 0);
  auto post_as_member = [&](const std::string& path, const json& body) {
    return as_user(kNobody, kNogroup, [&] {
      auto r = manager::ApiClient(socket, 10s).request("POST", path, body.dump());
      return std::to_string(r.status) + " " + r.body;
    });
  };
  std::string out = post_as_member("/v1/vms/mine/save", json{{"dir", root_only + "/s"}});
  EXPECT_EQ(out.substr(0, 3), "500") << out;
  EXPECT_NE(out.find("uid 65534 cannot create the directory '" + root_only + "/s'"), std::string::npos) << out;
  EXPECT_FALSE(std::filesystem::exists(root_only + "/s"));
  // A save root made: the member may not read it back.
  std::filesystem::create_directories(root_only + "/saved");
  std::ofstream(root_only + "/saved/vm.json") << json{{"name", "x"}, {"definition", definition("x", guest)}}.dump();
  out = post_as_member("/v1/restore", json{{"dir", root_only + "/saved"}});
  EXPECT_EQ(out.substr(0, 3), "500") << out;
  EXPECT_NE(out.find("uid 65534 cannot open '" + root_only + "/saved/vm.json'"), std::string::npos) << out;
  EXPECT_EQ(api().request("GET", "/v1/vms/x").status, 404);
  out = post_as_member("/v1/vms/mine/migrate", json{{"to", dir + "/other.sock"}});
  EXPECT_EQ(out.substr(0, 3), "409") << out;
  EXPECT_NE(out.find("only root may migrate"), std::string::npos) << out;
  out = post_as_member("/v1/vms/mine/save", json{{"dir", "relative/dir"}});
  EXPECT_EQ(out.substr(0, 3), "400") << out;
  EXPECT_NE(out.find("is not an absolute path"), std::string::npos) << out;
  EXPECT_EQ(info("mine")["state"], "running");
}

TEST_F(ManagerSecurityTest, TwoHundredAbandonedEventStreamsThenListAnswersWithinASecond) {
  // Each stream is opened, then its client goes away without a word. The daemon allows 32
  // streams per user at a time, so every one must have been released for the next to open.
  for (int i = 0; i < 200; ++i) {
    UniqueFd fd = control::connect_unix(socket, 2000ms);
    std::string head = testing::http_head(fd.get(), "GET /v1/events HTTP/1.1\r\nHost: keel\r\n\r\n");
    ASSERT_EQ(head.rfind("HTTP/1.1 200", 0), 0u) << "stream " << i << ": " << head;
  }
  auto before = Clock::now();
  CommandResult r = keel({"list", "--all"});
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_LT(Clock::now() - before, 1s);
}

TEST_F(ManagerSecurityTest, SlowClientsDoNotBlockOthers) {
  // More slow connections than the 128 threads the old server had, each sending a header byte
  // by byte as slowly as it likes.
  std::vector<UniqueFd> slow;
  for (int i = 0; i < 200; ++i) {
    slow.push_back(control::connect_unix(socket, 2000ms));
    control::write_all(slow.back().get(), "GET /v1/vms HTTP/1.1\r\nHo");
  }
  auto before = Clock::now();
  CommandResult r = keel({"list", "--all"});
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_LT(Clock::now() - before, 1s);
}

TEST_F(ManagerSecurityTest, OversizedChunkedAndCompressedBodiesAreRefused) {
  UniqueFd fd = control::connect_unix(socket, 2000ms);
  control::write_all(fd.get(), "POST /v1/vms HTTP/1.1\r\nHost: keel\r\nTransfer-Encoding: chunked\r\n\r\n");
  std::thread writer([&] {
    std::string piece = "10000\r\n" + std::string(0x10000, 'x') + "\r\n";
    for (int i = 0; i < 32; ++i)  // 2 MiB
      if (::send(fd.get(), piece.data(), piece.size(), MSG_NOSIGNAL) < 0) return;
    ::send(fd.get(), "0\r\n\r\n", 5, MSG_NOSIGNAL);
  });
  std::string response;
  char buf[4096];
  while (control::wait_readable(fd.get(), 10s)) {
    ssize_t n = ::recv(fd.get(), buf, sizeof buf, 0);
    if (n <= 0) break;
    response.append(buf, static_cast<size_t>(n));
  }
  writer.join();
  EXPECT_EQ(response.rfind("HTTP/1.1 413", 0), 0u) << response;
  EXPECT_NE(response.find("\"too_large\""), std::string::npos) << response;

  fd = control::connect_unix(socket, 2000ms);
  control::write_all(fd.get(), "POST /v1/vms HTTP/1.1\r\nHost: keel\r\nContent-Encoding: gzip\r\n"
                               "Content-Length: 10\r\n\r\n0123456789");
  response.clear();
  while (control::wait_readable(fd.get(), 10s)) {
    ssize_t n = ::recv(fd.get(), buf, sizeof buf, 0);
    if (n <= 0) break;
    response.append(buf, static_cast<size_t>(n));
  }
  EXPECT_EQ(response.rfind("HTTP/1.1 415", 0), 0u) << response;
}

}  // namespace
}  // namespace keel::e2e

namespace keel::e2e {
namespace {

// A "daemon" that never answers: its backlog full, or connections accepted and ignored.
TEST(ClientTimeouts, VerbsGiveUpOnADaemonThatDoesNotAnswer) {
  char tmpl[] = "/tmp/keel-timeout-XXXXXX";
  std::string dir = ::mkdtemp(tmpl);
  std::string path = dir + "/stuck.sock";
  UniqueFd listener = control::listen_unix(path, 0);
  std::vector<UniqueFd> fillers;  // a backlog of 0 admits one; then connect() would block
  for (int i = 0; i < 4; ++i) {
    UniqueFd fd(::socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    std::strncpy(addr.sun_path, path.c_str(), sizeof addr.sun_path - 1);
    ::connect(fd.get(), reinterpret_cast<sockaddr*>(&addr), sizeof addr);
    fillers.push_back(std::move(fd));
  }
  auto before = Clock::now();
  CommandResult r = run_keel({"list", "--socket", path, "--timeout", "0.5"}, dir);
  EXPECT_EQ(r.exit_code, 1) << r.err;
  EXPECT_LT(Clock::now() - before, 3s);
  EXPECT_NE(r.err.find("busy"), std::string::npos) << r.err;

  // Accepted, read, never answered.
  fillers.clear();
  std::atomic<bool> done{false};
  std::thread acceptor([&] {
    std::vector<UniqueFd> held;
    while (!done) {
      if (control::wait_readable(listener.get(), 50ms))
        held.emplace_back(::accept4(listener.get(), nullptr, nullptr, SOCK_CLOEXEC));
    }
  });
  before = Clock::now();
  r = run_keel({"info", "x", "--socket", path, "--timeout", "0.5"}, dir);
  done = true;
  acceptor.join();
  EXPECT_EQ(r.exit_code, 1) << r.err;
  EXPECT_LT(Clock::now() - before, 3s);
  EXPECT_NE(r.err.find("did not answer in time"), std::string::npos) << r.err;
  std::filesystem::remove_all(dir);
}

}  // namespace
}  // namespace keel::e2e
