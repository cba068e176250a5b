// libFuzzer target: the daemon's HTTP API (manager/http_server.h and the routes of ApiServer over
// a real Domains and Store) fed raw bytes through its unix socket: request lines, headers,
// Content-Length and chunked bodies, pipelining, definitions, commands on VMs. VMMs cannot start
// (the VMM binary does not exist), so nothing outlives an input.
#include <sys/socket.h>
#include <unistd.h>

#include <filesystem>
#include <string>
#include <thread>

#include "control/unix_socket.h"
#include "manager/api_server.h"
#include "manager/store.h"

namespace {

using namespace std::chrono_literals;

struct Daemon {
  std::string dir = "/dev/shm/keel-fuzz-http-" + std::to_string(::getpid());
  std::string socket = dir + "/api.sock";
  std::unique_ptr<keel::manager::Store> store;
  std::unique_ptr<keel::manager::Domains> domains;
  std::unique_ptr<keel::manager::ApiServer> api;
  std::thread thread;

  Daemon() {
    std::filesystem::create_directories(dir);
    store = std::make_unique<keel::manager::Store>(dir + "/keel.db");
    keel::manager::DomainsOptions options;
    options.state_dir = dir;
    options.vmm_binary = dir + "/no-such-vmm";
    options.start_timeout = 500ms;
    domains = std::make_unique<keel::manager::Domains>(*store, options);
    keel::manager::ApiOptions api_options;
    api_options.http.header_timeout = 200ms;
    api_options.http.body_timeout = 200ms;
    api = std::make_unique<keel::manager::ApiServer>(*domains, socket, api_options);
    thread = std::thread([this] { api->serve(); });
  }
  ~Daemon() {
    api->stop();
    thread.join();
    api.reset();
    domains.reset();
    store.reset();
    std::filesystem::remove_all(dir);
  }
};

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static Daemon d;
  keel::UniqueFd fd = keel::control::connect_unix(d.socket, 1000ms);
  std::string_view input(reinterpret_cast<const char*>(data), std::min<size_t>(size, 1 << 20));
  try {
    keel::control::write_all(fd.get(), input, 1000ms);
  } catch (const keel::Error&) {
  }
  ::shutdown(fd.get(), SHUT_WR);
  // Whatever comes back, until the server closes or a stream goes quiet.
  char sink[65536];
  while (keel::control::wait_readable(fd.get(), 200ms))
    if (::recv(fd.get(), sink, sizeof sink, 0) <= 0) break;
  return 0;
}
