// The web console's side of the daemon (docs/architecture.md, "Web console"): who may use the TCP
// listener of `keel daemon --http`, and the page's assets.
//
// Access needs the token kept in STATE_DIR/http.token (0600, made once). A browser logs in by
// opening /?token=TOKEN: the answer sets the token as an HttpOnly, SameSite=Strict cookie and
// redirects to the same address without it. Scripts send `Authorization: Bearer TOKEN`. Without
// either, every path answers 401 (a login page for a browser). A request that rides on the cookie
// must come from the page itself: an Origin header, if any, must be the listener's own, a
// WebSocket must carry that Origin, and a state-changing method must echo the keel_csrf cookie in
// an X-Keel-CSRF header (a double-submit token other sites can neither read nor set). Whoever has
// the token acts as the daemon's own user: it could read the token file.
#pragma once

#include <cstdint>
#include <string>

#include "manager/http_server.h"

namespace keel::manager {

struct HttpListen {
  std::string address;  // an IP address
  uint16_t port = 0;
  bool loopback = false;
};

// "127.0.0.1:8006", "[::1]:8006", "localhost:8006". Throws UsageError naming what is wrong.
HttpListen parse_http_listen(const std::string& text);

class WebAccess {
 public:
  // Reads the token from `token_file`, or makes one there (0600) when it does not exist.
  explicit WebAccess(const std::string& token_file);

  const std::string& token() const { return token_; }
  // HttpServer's gate: lets unix-socket requests through untouched; decides about TCP ones.
  bool gate(HttpRequest& req, HttpReply& res) const;

 private:
  std::string token_;
};

// The page's files (index.html, assets/...), built from web/ by esbuild and embedded: GET of
// `path` answered from them; false if there is no such file.
bool serve_web_asset(const std::string& path, HttpReply& res);

}  // namespace keel::manager
