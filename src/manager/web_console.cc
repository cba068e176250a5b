#include "manager/web_console.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <fstream>

#include <boost/asio/ip/address.hpp>

#include "base/error.h"
#include "manager/vmm_process.h"
#include "manager/web_assets.h"

namespace keel::manager {

namespace {

// Compares without stopping at the first difference, so the time taken says nothing about how
// much of a guess was right.
bool same_secret(const std::string& a, const std::string& b) {
  if (a.size() != b.size() || a.empty()) return false;
  unsigned char diff = 0;
  for (size_t i = 0; i < a.size(); ++i) diff |= static_cast<unsigned char>(a[i] ^ b[i]);
  return diff == 0;
}

// The value of cookie `name` in a Cookie header ("a=1; b=2"), or "".
std::string cookie(const HttpRequest& req, const std::string& name) {
  const std::string* header = req.header("cookie");
  if (!header) return {};
  std::string_view rest = *header;
  while (!rest.empty()) {
    size_t end = rest.find(';');
    std::string_view pair = rest.substr(0, end);
    rest = end == std::string_view::npos ? std::string_view() : rest.substr(end + 1);
    while (!pair.empty() && pair.front() == ' ') pair.remove_prefix(1);
    if (pair.size() > name.size() && pair.substr(0, name.size()) == name &&
        pair[name.size()] == '=')
      return std::string(pair.substr(name.size() + 1));
  }
  return {};
}

const char* kLoginPage = R"(<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>keel: log in</title>
<style>
body { font: 15px system-ui, sans-serif; background: #f4f5f7; color: #1d2330; }
main { max-width: 30em; margin: 12vh auto; background: #fff; padding: 2em; border-radius: 8px;
       box-shadow: 0 1px 4px #0002; }
input { font: inherit; width: 100%; box-sizing: border-box; padding: .5em; margin: .6em 0; }
button { font: inherit; padding: .45em 1.2em; }
.error { color: #b3261e; }
code { background: #eef; padding: 0 .2em; }
</style></head>
<body><main>
<h1>keel</h1>
<p>The web console needs the token the daemon printed when it started (also in
<code>http.token</code> in its state directory).</p>
%MESSAGE%
<form method="get" action="/"><label>Token <input name="token" id="token" type="password"
autocomplete="off" autofocus></label><button type="submit" id="login">Log in</button></form>
</main></body></html>
)";

void login_page(HttpReply& res, const std::string& message) {
  std::string page = kLoginPage;
  page.replace(page.find("%MESSAGE%"), 9,
               message.empty() ? "" : "<p class=\"error\" id=\"error\">" + message + "</p>");
  res.status = 401;
  res.content_type = "text/html; charset=utf-8";
  res.body = std::move(page);
}

void refuse(HttpReply& res, int status, const std::string& code, const std::string& message) {
  res.status = status;
  res.content_type = "application/json";
  res.body = HttpServer::error_body(code, message);
}

bool wants_html(const HttpRequest& req) {
  const std::string* accept = req.header("accept");
  return req.method == "GET" && accept && accept->find("text/html") != std::string::npos;
}

PeerCredentials daemon_user() {
  PeerCredentials p;
  p.uid = ::geteuid();
  p.gid = ::getegid();
  int n = ::getgroups(0, nullptr);
  if (n > 0) {
    p.groups.resize(static_cast<size_t>(n));
    n = ::getgroups(n, p.groups.data());
    p.groups.resize(static_cast<size_t>(std::max(n, 0)));
  }
  return p;
}

}  // namespace

HttpListen parse_http_listen(const std::string& text) {
  size_t colon = text.rfind(':');
  if (colon == std::string::npos || colon + 1 >= text.size())
    throw UsageError("--http '" + text + "': expected ADDRESS:PORT, e.g. 127.0.0.1:8006");
  std::string host = text.substr(0, colon), port = text.substr(colon + 1);
  if (host.size() >= 2 && host.front() == '[' && host.back() == ']')
    host = host.substr(1, host.size() - 2);
  if (host == "localhost") host = "127.0.0.1";
  if (port.size() > 5 || !std::all_of(port.begin(), port.end(), ::isdigit) || std::stoi(port) > 65535)
    throw UsageError("--http '" + text + "': '" + port + "' is not a port number");
  boost::system::error_code ec;
  auto ip = boost::asio::ip::make_address(host, ec);
  if (ec) throw UsageError("--http '" + text + "': '" + host + "' is not an IP address");
  return HttpListen{host, static_cast<uint16_t>(std::stoi(port)), ip.is_loopback()};
}

WebAccess::WebAccess(const std::string& token_file) {
  std::ifstream in(token_file);
  if (in && std::getline(in, token_) && token_.size() >= 32) return;
  token_ = random_token() + random_token();  // 256 bits
  std::string tmp = token_file + ".tmp";
  int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0600);
  if (fd < 0) throw_errno("create " + tmp);
  std::string line = token_ + "\n";
  bool ok = ::fchmod(fd, 0600) == 0 && ::write(fd, line.data(), line.size()) ==
                                           static_cast<ssize_t>(line.size()) &&
            ::fsync(fd) == 0;
  ::close(fd);
  if (!ok || ::rename(tmp.c_str(), token_file.c_str()) != 0) throw_errno("write " + token_file);
}

bool WebAccess::gate(HttpRequest& req, HttpReply& res) const {
  if (!req.tcp) return true;
  res.headers.emplace_back("X-Frame-Options", "DENY");
  res.headers.emplace_back("Cache-Control", "no-store");

  // Login: /?token=TOKEN sets the cookie and sends the browser on without the token.
  if (auto t = req.query.find("token"); t != req.query.end()) {
    if (req.method != "GET" || !same_secret(t->second, token_)) {
      login_page(res, "That token is not the daemon's.");
      return false;
    }
    // Back to the same page, never elsewhere: "//host/..." would be another site.
    std::string location = req.path.rfind("//", 0) == 0 ? "/" : req.path;
    char sep = '?';
    for (const auto& [key, value] : req.query) {
      if (key == "token") continue;
      location += sep + key + (value.empty() ? "" : "=" + value);
      sep = '&';
    }
    res.status = 303;
    res.content_type = "text/plain";
    res.body = "logged in\n";
    res.headers.emplace_back("Location", location);
    res.headers.emplace_back("Set-Cookie",
                             "keel_token=" + token_ + "; HttpOnly; SameSite=Strict; Path=/");
    res.headers.emplace_back("Set-Cookie",
                             "keel_csrf=" + random_token() + "; SameSite=Strict; Path=/");
    return false;
  }

  bool by_cookie = false;
  if (const std::string* auth = req.header("authorization")) {
    const std::string prefix = "Bearer ";
    if (auth->size() <= prefix.size() || auth->compare(0, prefix.size(), prefix) != 0 ||
        !same_secret(auth->substr(prefix.size()), token_)) {
      refuse(res, 401, "unauthorized", "the Authorization header does not carry the daemon's token");
      res.headers.emplace_back("WWW-Authenticate", "Bearer");
      return false;
    }
  } else if (same_secret(cookie(req, "keel_token"), token_)) {
    by_cookie = true;
  } else {
    if (wants_html(req)) {
      login_page(res, "");
    } else {
      refuse(res, 401, "unauthorized",
             "the web console needs the daemon's token: log in at /?token=TOKEN, or send "
             "Authorization: Bearer TOKEN");
    }
    res.headers.emplace_back("WWW-Authenticate", "Bearer");
    return false;
  }

  if (by_cookie) {
    // A cookie rides along with requests other sites make the browser send: only the page's
    // own requests may use it.
    const std::string* host = req.header("host");
    const std::string* origin = req.header("origin");
    std::string own = host ? "http://" + *host : "";
    if (origin && (!host || *origin != own)) {
      refuse(res, 403, "cross_origin",
             "requests from " + *origin + " may not use this console's login");
      return false;
    }
    if (req.websocket && !origin) {
      refuse(res, 403, "cross_origin", "a WebSocket must say its Origin");
      return false;
    }
    bool safe = req.method == "GET" || req.method == "HEAD" || req.method == "OPTIONS";
    if (!safe) {
      const std::string* csrf = req.header("x-keel-csrf");
      if (!csrf || !same_secret(*csrf, cookie(req, "keel_csrf"))) {
        refuse(res, 403, "csrf",
               "a " + req.method + " from the web console must carry its X-Keel-CSRF header");
        return false;
      }
    }
  }
  req.peer = daemon_user();
  return true;
}

bool serve_web_asset(const std::string& path, HttpReply& res) {
  std::string name = path == "/" ? "index.html" : path.substr(1);
  for (const WebAsset& asset : web_assets()) {
    if (name != asset.path) continue;
    res.status = 200;
    res.content_type = asset.type;
    res.body.assign(reinterpret_cast<const char*>(asset.data), asset.size);
    res.headers.emplace_back("Content-Security-Policy",
                             "default-src 'self'; img-src 'self' data:; style-src 'self' "
                             "'unsafe-inline'; frame-ancestors 'none'");
    return true;
  }
  return false;
}

}  // namespace keel::manager
