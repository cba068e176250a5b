// The per-VM control socket against a fake ControlTarget: protocol shape, negotiation, errors,
// events, several clients, hostile input and the console stream.
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <condition_variable>
#include <filesystem>
#include <mutex>
#include <thread>

#include <gtest/gtest.h>

#include "control/control_client.h"
#include "control/control_server.h"
#include "control/unix_socket.h"
#include "base/version.h"

namespace keel::control {
namespace {

using nlohmann::json;
using namespace std::chrono_literals;

class FakeTarget : public ControlTarget {
 public:
  RunStatus query_status() override {
    std::lock_guard lock(mutex_);
    return status_;
  }
  void pause() override {
    set({RunState::kPaused, "user"});
    emit(event::kStop, json::object());
  }
  void resume() override {
    set({RunState::kRunning, "unpaused"});
    emit(event::kResume, json::object());
  }
  void powerdown() override {
    if (fail_powerdown) throw Error("the power button is stuck");
    emit(event::kPowerdown, json::object());
  }
  void reset() override { emit(event::kReset, json{{"guest", false}, {"reason", "host-qmp-system-reset"}}); }
  void quit() override { quit_called = true; }
  std::vector<CpuInfo> query_cpus() override { return {{0, 100, false}, {1, 101, true}}; }
  VmIdentity identity() override { return {"web1", false, true}; }
  std::string info_registers() override { return "RAX=0000000000000001 RBX=0000000000000002\r\n"; }
  void set_event_callback(EventCallback cb) override {
    std::lock_guard lock(mutex_);
    on_event_ = std::move(cb);
  }
  void set_console_callback(ConsoleCallback cb) override {
    std::lock_guard lock(mutex_);
    on_console_ = std::move(cb);
  }
  void console_input(std::string_view bytes) override {
    std::lock_guard lock(mutex_);
    input_.append(bytes);
    input_cv_.notify_all();
  }

  // Test side: the guest prints; an event happens on "another thread".
  void print(std::string_view bytes) {
    ConsoleCallback cb;
    {
      std::lock_guard lock(mutex_);
      cb = on_console_;
    }
    if (cb) cb(bytes);
  }
  void emit(const std::string& name, json data) {
    EventCallback cb;
    {
      std::lock_guard lock(mutex_);
      cb = on_event_;
    }
    if (cb) cb(name, std::move(data));
  }
  bool wait_input(const std::string& expected, std::chrono::milliseconds timeout) {
    std::unique_lock lock(mutex_);
    return input_cv_.wait_for(lock, timeout, [&] { return input_ == expected; });
  }

  std::atomic<bool> quit_called{false};
  std::atomic<bool> fail_powerdown{false};

 private:
  void set(RunStatus s) {
    std::lock_guard lock(mutex_);
    status_ = s;
  }
  std::mutex mutex_;
  std::condition_variable input_cv_;
  RunStatus status_{RunState::kRunning, "booted"};
  EventCallback on_event_;
  ConsoleCallback on_console_;
  std::string input_;
};

// A temporary directory removed at the end of the test.
struct TempDir {
  TempDir() {
    char tmpl[] = "/tmp/keel-ctl-XXXXXX";
    path = ::mkdtemp(tmpl);
  }
  ~TempDir() { std::filesystem::remove_all(path); }
  std::string path;
};

// Runs a ControlServer on its own thread, as the VMM's main loop would.
class ControlServerTest : public ::testing::Test {
 protected:
  void SetUp() override { start({}); }
  void TearDown() override { stop(); }

  void start(ControlServerOptions options) {
    path = dir.path + "/control.sock";
    server = std::make_unique<ControlServer>(path, target, options);
    running = true;
    loop = std::thread([this] {
      while (running) server->run_once(20ms);
    });
  }
  void stop() {
    running = false;
    if (loop.joinable()) loop.join();
    server.reset();
  }

  TempDir dir;
  std::string path;
  FakeTarget target;
  std::unique_ptr<ControlServer> server;
  std::atomic<bool> running{false};
  std::thread loop;
};

// A raw client that sends arbitrary bytes and reads lines.
struct RawClient {
  explicit RawClient(const std::string& path) : fd(connect_unix(path, 2000ms)) {}
  void send(std::string_view bytes) { write_all(fd.get(), bytes); }
  json read() {
    std::string line;
    for (;;) {
      if (!wait_readable(fd.get(), 5000ms)) throw Error("timed out waiting for a line");
      char c;
      ssize_t n = ::recv(fd.get(), &c, 1, 0);
      if (n <= 0) throw Error("connection closed");
      if (c == '\n') return json::parse(line);
      line += c;
    }
  }
  json request(const std::string& line) {
    send(line + "\n");
    return read();
  }
  UniqueFd fd;
};

TEST_F(ControlServerTest, GreetsAndRequiresCapabilitiesNegotiation) {
  RawClient c(path);
  json greeting = c.read();
  ASSERT_TRUE(greeting.contains("QMP"));
  EXPECT_TRUE(greeting["QMP"]["capabilities"].is_array());
  // The dialect of QEMU 7.2 (clients gate on the version), and which keel serves it.
  EXPECT_EQ(greeting["QMP"]["version"]["qemu"]["major"], 7);
  EXPECT_EQ(greeting["QMP"]["version"]["package"], std::string("keel ") + kVersion);

  json early = c.request(R"({"execute": "query-status"})");
  EXPECT_EQ(early["error"]["class"], "CommandNotFound");

  EXPECT_EQ(c.request(R"({"execute": "qmp_capabilities"})"), json({{"return", json::object()}}));
  json again = c.request(R"({"execute": "qmp_capabilities"})");
  EXPECT_EQ(again["error"]["class"], "CommandNotFound");
  json status = c.request(R"({"execute": "query-status"})");
  EXPECT_EQ(status["return"]["status"], "running");
}

TEST_F(ControlServerTest, EchoesIdOfAnyType) {
  RawClient c(path);
  c.read();
  EXPECT_EQ(c.request(R"({"execute": "qmp_capabilities", "id": "neg"})")["id"], "neg");
  EXPECT_EQ(c.request(R"({"execute": "query-status", "id": 42})")["id"], 42);
  EXPECT_EQ(c.request(R"({"execute": "query-status", "id": {"a": [1]}})")["id"], json({{"a", {1}}}));
  EXPECT_EQ(c.request(R"({"execute": "no-such-command", "id": 7})")["id"], 7);
}

TEST_F(ControlServerTest, StatusPauseResumeAndEventsWithTimestamps) {
  ControlClient c = ControlClient::connect(path);
  json status = c.execute("query-status");
  EXPECT_EQ(status["running"], true);
  EXPECT_EQ(status["status"], "running");
  EXPECT_EQ(status["reason"], "booted");

  c.execute("stop");
  status = c.execute("query-status");
  EXPECT_EQ(status["running"], false);
  EXPECT_EQ(status["status"], "paused");
  EXPECT_EQ(status["reason"], "user");
  auto stop = c.next_event(5000ms);
  ASSERT_TRUE(stop);
  EXPECT_EQ((*stop)["event"], "STOP");
  EXPECT_GT((*stop)["timestamp"]["seconds"].get<int64_t>(), 1600000000);
  EXPECT_TRUE((*stop)["timestamp"]["microseconds"].is_number_integer());

  c.execute("cont");
  auto resume = c.next_event(5000ms);
  ASSERT_TRUE(resume);
  EXPECT_EQ((*resume)["event"], "RESUME");
  EXPECT_EQ(c.execute("query-status")["status"], "running");
}

// What libvirt, virsh qemu-monitor-command and QMP shells ask first, answered as QEMU 7.2 does.
TEST_F(ControlServerTest, QemuDialectQueriesAndHumanMonitor) {
  ControlClient c = ControlClient::connect(path);
  json version = c.execute("query-version");
  EXPECT_EQ(version["qemu"], json({{"major", 7}, {"minor", 2}, {"micro", 0}}));
  EXPECT_EQ(version["package"], std::string("keel ") + kVersion);
  EXPECT_EQ(c.execute("query-name"), json({{"name", "web1"}}));
  EXPECT_EQ(c.execute("query-kvm"), json({{"enabled", false}, {"present", true}}));
  json commands = c.execute("query-commands");
  for (const char* name : {"query-cpus-fast", "query-version", "query-name", "query-kvm",
                           "human-monitor-command"})
    EXPECT_NE(commands.dump().find(std::string("\"") + name + "\""), std::string::npos) << name;

  EXPECT_EQ(c.execute("human-monitor-command", {{"command-line", "info registers"}}),
            "RAX=0000000000000001 RBX=0000000000000002\r\n");
  EXPECT_EQ(c.execute("human-monitor-command", {{"command-line", " info status "}}),
            "VM status: running\r\n");
  EXPECT_EQ(c.execute("human-monitor-command", {{"command-line", "savevm x"}}),
            "unknown command: 'savevm'\r\n");
  EXPECT_THROW(c.execute("human-monitor-command", json::object()), std::exception);
}

TEST_F(ControlServerTest, PowerdownResetQuitAndCpus) {
  ControlClient c = ControlClient::connect(path);
  c.execute("system_powerdown");
  auto e = c.next_event(5000ms);
  ASSERT_TRUE(e);
  EXPECT_EQ((*e)["event"], "POWERDOWN");
  c.execute("system_reset");
  e = c.next_event(5000ms);
  ASSERT_TRUE(e);
  EXPECT_EQ((*e)["event"], "RESET");
  EXPECT_EQ((*e)["data"]["reason"], "host-qmp-system-reset");

  // query-cpus-fast as QEMU 7.2 answers it; query-cpus (removed from QEMU in 6.0) is the same.
  json cpus = c.execute("query-cpus-fast");
  ASSERT_EQ(cpus.size(), 2u);
  EXPECT_EQ(cpus[1]["cpu-index"], 1);
  EXPECT_EQ(cpus[1]["thread-id"], 101);
  EXPECT_EQ(cpus[1]["target"], "x86_64");
  EXPECT_EQ(cpus[1]["props"]["socket-id"], 1);
  EXPECT_EQ(c.execute("query-cpus"), cpus);

  json commands = c.execute("query-commands");
  EXPECT_GE(commands.size(), 9u);

  EXPECT_FALSE(target.quit_called);
  c.execute("quit");  // the reply arrives before the target is told to quit
  for (int i = 0; i < 500 && !target.quit_called; ++i) std::this_thread::sleep_for(1ms);
  EXPECT_TRUE(target.quit_called);
}

TEST_F(ControlServerTest, TargetFailureIsAGenericErrorReply) {
  ControlClient c = ControlClient::connect(path);
  target.fail_powerdown = true;
  try {
    c.execute("system_powerdown");
    FAIL() << "expected an error reply";
  } catch (const ControlError& e) {
    EXPECT_EQ(e.error_class(), "GenericError");
    EXPECT_STREQ(e.what(), "the power button is stuck");
  }
  EXPECT_EQ(c.execute("query-status")["status"], "running");  // still serving
}

TEST_F(ControlServerTest, MalformedMessagesGetErrorsAndTheConnectionSurvives) {
  RawClient c(path);
  c.read();
  c.request(R"({"execute": "qmp_capabilities"})");
  const char* bad[] = {
      "this is not json",
      "[1, 2, 3]",
      "42",
      R"({"arguments": {}})",
      R"({"execute": 17})",
      R"({"execute": "query-status", "bogus": 1})",
      R"({"execute": "query-status", "arguments": [1]})",
      R"({"execute": "query-status", "arguments": {"x": 1}})",
      R"({"execute": "no-such-command"})",
      "{\"execute\": \"query-status\"",  // truncated
      "\xff\xfe\x00garbage",
  };
  for (const char* line : bad) {
    json reply = c.request(std::string(line, std::strlen(line)));
    ASSERT_TRUE(reply.contains("error")) << line;
    EXPECT_TRUE(reply["error"]["class"].is_string());
    EXPECT_FALSE(reply["error"]["desc"].get<std::string>().empty());
  }
  EXPECT_EQ(c.request(R"({"execute": "query-status"})")["return"]["status"], "running");
}

TEST_F(ControlServerTest, OversizedMessageGetsOneErrorAndIsDiscarded) {
  RawClient c(path);
  c.read();
  c.request(R"({"execute": "qmp_capabilities"})");
  std::string huge = R"({"execute": "query-status", "id": ")" + std::string(300000, 'x') + "\"}\n";
  c.send(huge);
  json reply = c.read();
  ASSERT_TRUE(reply.contains("error"));
  EXPECT_NE(reply["error"]["desc"].get<std::string>().find("longer than"), std::string::npos);
  // Nothing of the oversized message is executed; the next one is.
  json next = c.request(R"({"execute": "query-status", "id": "after"})");
  EXPECT_EQ(next["id"], "after");
  EXPECT_EQ(next["return"]["status"], "running");
}

TEST_F(ControlServerTest, SeveralClientsEachGetRepliesAndEvents) {
  std::vector<ControlClient> clients;
  for (int i = 0; i < 8; ++i) clients.push_back(ControlClient::connect(path));
  RawClient unnegotiated(path);  // gets no events until it negotiates
  unnegotiated.read();
  clients[3].execute("stop");
  for (auto& c : clients) {
    auto e = c.next_event(5000ms);
    ASSERT_TRUE(e);
    EXPECT_EQ((*e)["event"], "STOP");
    EXPECT_EQ(c.execute("query-status")["status"], "paused");
  }
  json first = unnegotiated.request(R"({"execute": "qmp_capabilities"})");
  EXPECT_EQ(first, json({{"return", json::object()}}));  // no STOP event before it
}

TEST_F(ControlServerTest, EventsFromAnotherThreadReachClients) {
  ControlClient c = ControlClient::connect(path);
  std::thread vcpu([&] {
    for (int i = 0; i < 100; ++i) target.emit(event::kShutdown, json{{"guest", true}, {"n", i}});
  });
  vcpu.join();
  for (int i = 0; i < 100; ++i) {
    auto e = c.next_event(5000ms);
    ASSERT_TRUE(e);
    EXPECT_EQ((*e)["event"], "SHUTDOWN");
    EXPECT_EQ((*e)["data"]["n"], i);  // in order
  }
}

TEST_F(ControlServerTest, ClientsThatVanishMidMessageDoNotDisturbOthers) {
  ControlClient steady = ControlClient::connect(path);
  for (int i = 0; i < 20; ++i) {
    RawClient gone(path);
    gone.send(R"({"execute": "qmp_capa)");  // and close without the rest
  }
  {
    RawClient gone(path);
    gone.read();
    gone.send("{\"execute\": \"qmp_capabilities\"}\n{\"execute\": \"stop\"}\n");
    ::shutdown(gone.fd.get(), SHUT_WR);  // half-closed: what it sent still runs
  }
  auto e = steady.next_event(5000ms);
  ASSERT_TRUE(e);
  EXPECT_EQ((*e)["event"], "STOP");
  EXPECT_EQ(steady.execute("query-status")["status"], "paused");
}

TEST_F(ControlServerTest, ConsoleStreamCarriesOutputAndInput) {
  UniqueFd console = ControlClient::attach_console(path);
  ControlClient other = ControlClient::connect(path);  // JSON clients get no console bytes
  target.print("hello ");
  target.print("guest\n");
  std::string got;
  while (got.size() < 12) {
    ASSERT_TRUE(wait_readable(console.get(), 5000ms));
    char buf[64];
    ssize_t n = ::recv(console.get(), buf, sizeof(buf), 0);
    ASSERT_GT(n, 0);
    got.append(buf, static_cast<size_t>(n));
  }
  EXPECT_EQ(got, "hello guest\n");
  write_all(console.get(), "ls\r");
  EXPECT_TRUE(target.wait_input("ls\r", 5000ms));
  EXPECT_EQ(other.execute("query-status")["status"], "running");
  EXPECT_FALSE(other.next_event(50ms));  // console bytes are not events
}

// Reads from a console stream until `n` bytes came, dispatching the server on this thread when
// `server` is given (its loop thread is stopped).
std::string read_console(int fd, size_t n, ControlServer* server) {
  std::string got;
  while (got.size() < n) {
    if (server) server->run_once(0ms);
    if (!wait_readable(fd, 5000ms)) break;
    char buf[65536];
    ssize_t r = ::recv(fd, buf, sizeof(buf), 0);
    if (r <= 0) break;
    got.append(buf, static_cast<size_t>(r));
  }
  return got;
}

std::string letters(size_t n) {
  std::string s;
  for (size_t i = 0; i < n; ++i) s += static_cast<char>('a' + i % 26);
  return s;
}

TEST_F(ControlServerTest, ConsoleOutputByteByByteWakesTheLoopOncePerBatch) {
  UniqueFd console = ControlClient::attach_console(path);
  running = false;  // the loop thread stops; this thread dispatches from here on
  loop.join();
  const uint64_t before = server->wakeups_posted();
  const std::string text = letters(10000);
  for (char c : text) target.print(std::string_view(&c, 1));  // as a UART does: byte by byte
  EXPECT_EQ(server->wakeups_posted(), before + 1);
  EXPECT_EQ(read_console(console.get(), text.size(), server.get()), text);
  // Drained: the next byte wakes the loop again, and an event behind it rides the same wake-up.
  target.print("!");
  target.emit(event::kStop, json::object());
  EXPECT_EQ(server->wakeups_posted(), before + 2);
  EXPECT_EQ(read_console(console.get(), 1, server.get()), "!");
}

TEST_F(ControlServerTest, ConsoleOutputFromAnotherThreadArrivesWholeAndInOrder) {
  UniqueFd console = ControlClient::attach_console(path);
  const std::string text = letters(200000);  // under max_console_pending: nothing may be lost
  std::thread guest([&] {
    for (char c : text) target.print(std::string_view(&c, 1));
  });
  std::string got = read_console(console.get(), text.size(), nullptr);
  guest.join();
  ASSERT_EQ(got.size(), text.size());
  EXPECT_TRUE(got == text);
  EXPECT_LT(server->wakeups_posted(), text.size());
}

TEST_F(ControlServerTest, RefusesClientsBeyondTheLimit) {
  stop();
  start(ControlServerOptions{.max_clients = 2});
  ControlClient a = ControlClient::connect(path);
  ControlClient b = ControlClient::connect(path);
  EXPECT_THROW(ControlClient::connect(path, 2000ms), Error);
  EXPECT_EQ(a.execute("query-status")["status"], "running");
}

TEST_F(ControlServerTest, ClientsThatNeverNegotiateAreClosed) {
  stop();
  start(ControlServerOptions{.negotiate_timeout = 200ms});
  RawClient idle(path);
  idle.read();  // the greeting
  ControlClient active = ControlClient::connect(path);
  // The idle one is cut after its 200 ms; the negotiated one stays.
  EXPECT_TRUE(wait_readable(idle.fd.get(), 5000ms));
  char c;
  EXPECT_EQ(::recv(idle.fd.get(), &c, 1, 0), 0);
  EXPECT_EQ(active.execute("query-status")["status"], "running");
}

TEST_F(ControlServerTest, TheDaemonsTokenAlwaysFindsASlot) {
  stop();
  start(ControlServerOptions{.max_clients = 2, .daemon_token = "secret", .reserved_slots = 2});
  ControlClient a = ControlClient::connect(path);
  ControlClient b = ControlClient::connect(path);
  // Other clients beyond the limit are refused when they negotiate, whatever token they try.
  try {
    ControlClient::connect(path, 2000ms, "guess");
    ADD_FAILURE() << "a third client got in";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("too many control clients"), std::string::npos) << e.what();
  }
  // Every slot held by connections that never negotiate: the oldest make room for the daemon.
  std::vector<RawClient> idle;
  for (int i = 0; i < 10; ++i) idle.emplace_back(path);
  ControlClient daemon = ControlClient::connect(path, 2000ms, "secret");
  UniqueFd console = ControlClient::attach_console(path, 2000ms, "secret");
  EXPECT_EQ(daemon.execute("query-status")["status"], "running");
  EXPECT_EQ(a.execute("query-status")["status"], "running");
}

TEST_F(ControlServerTest, TheSocketIsForItsOwnerOnlyWhateverTheUmask) {
  stop();
  mode_t old = ::umask(0);
  start(ControlServerOptions{});
  ::umask(old);
  struct stat st {};
  ASSERT_EQ(::stat(path.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600u);
}

TEST_F(ControlServerTest, SocketFileIsRemovedWithTheServer) {
  EXPECT_TRUE(std::filesystem::exists(path));
  stop();
  EXPECT_FALSE(std::filesystem::exists(path));
}

}  // namespace
}  // namespace keel::control
