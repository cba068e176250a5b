// The daemon's HTTP/1.1 + JSON API on a unix socket (docs/api.yaml), served by HttpServer: each
// request runs on one of its workers and calls into Domains, which does the locking; console and
// event streams run on threads of their own.
//
// Who may use it: the socket is created 0660, owned by the daemon's user and the admin group
// (`keel` by default) when that group exists; every connection's peer must be root, the daemon's
// own user or a member of that group (SO_PEERCRED, SO_PEERGROUPS), else it gets 403.
#pragma once

#include <sys/types.h>

#include <memory>
#include <optional>
#include <string>

#include "manager/domains.h"
#include "manager/http_server.h"
#include "manager/metrics.h"
#include "manager/web_console.h"

namespace keel::manager {

struct ApiOptions {
  std::string group = "keel";  // members may use the API; ignored when no such group exists
  HttpServerOptions http;      // limits and deadlines (tests shorten them)
  // The web console's TCP listener ("127.0.0.1:8006"; empty: none). Anything but a loopback
  // address is refused unless `http_allow_remote`.
  std::string http_listen;
  bool http_allow_remote = false;
  std::string token_file;  // the web console's token (web_console.h)
};

class ApiServer {
 public:
  static constexpr size_t kMaxBody = 1 << 20;

  // Binds `socket_path` (refusing if another daemon answers there) and sets up the routes.
  ApiServer(Domains& domains, const std::string& socket_path, ApiOptions options = {});
  ~ApiServer();
  ApiServer(const ApiServer&) = delete;
  ApiServer& operator=(const ApiServer&) = delete;

  // Serves until stop(). Blocks.
  void serve();
  // Thread-safe: makes serve() return; streaming responses end.
  void stop();

  // Whether `peer` may use the API (root, the daemon's user, a member of `group`).
  static bool authorized(const PeerCredentials& peer, std::optional<gid_t> group);

  // The web console's address with its login token ("" without --http).
  std::string web_url() const;

 private:
  void routes();

  Domains& domains_;
  std::string socket_path_;
  Metrics metrics_;
  std::unique_ptr<WebAccess> web_;
  std::string web_address_;  // "127.0.0.1:8006" as listening
  std::unique_ptr<HttpServer> server_;
};

// The gid of `name`, if such a group exists.
std::optional<gid_t> group_id(const std::string& name);

}  // namespace keel::manager
