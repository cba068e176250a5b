// The daemon's HTTP/1.1 + JSON API on a unix socket (docs/api.yaml), served by cpp-httplib on its
// thread pool. Each request runs on a pool thread and calls into Domains, which does the locking.
#pragma once

#include <atomic>
#include <memory>
#include <string>

#include "base/fd.h"
#include "manager/domains.h"

namespace httplib {
class Server;
}

namespace keel::manager {

class ApiServer {
 public:
  static constexpr size_t kMaxBody = 1 << 20;

  // Binds `socket_path` (refusing if another daemon answers there) and sets up the routes.
  ApiServer(Domains& domains, const std::string& socket_path);
  ~ApiServer();
  ApiServer(const ApiServer&) = delete;
  ApiServer& operator=(const ApiServer&) = delete;

  // Serves until stop(). Blocks.
  void serve();
  // Thread-safe: makes serve() return; streaming responses end.
  void stop();

 private:
  void routes();

  Domains& domains_;
  std::string socket_path_;
  std::unique_ptr<httplib::Server> server_;
  std::atomic<bool> stopping_{false};
};

}  // namespace keel::manager
