// libFuzzer target: the web console's gate (manager/web_console.h) on TCP requests whose method,
// path, query and credentials headers (Cookie, Authorization, Origin, Host, X-Keel-CSRF, Accept)
// come from the input, split at NUL bytes. The gate must never crash, and must let a request in
// only if it carries the daemon's token (Bearer, or the keel_token cookie).
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <string>
#include <vector>

#include "manager/web_console.h"

namespace {

struct Access {
  std::string dir = "/dev/shm/keel-fuzz-web-" + std::to_string(::getpid());
  std::unique_ptr<keel::manager::WebAccess> access;
  Access() {
    std::filesystem::create_directories(dir);
    access = std::make_unique<keel::manager::WebAccess>(dir + "/http.token");
  }
  ~Access() { std::filesystem::remove_all(dir); }
};

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static Access a;
  const std::string& token = a.access->token();
  std::vector<std::string> fields(1);
  for (size_t i = 0; i < size && i < 64 * 1024; ++i) {
    if (data[i] == 0) fields.emplace_back();
    else fields.back() += static_cast<char>(data[i]);
  }
  fields.resize(9);
  // "$TOKEN" in the input stands for the real token, so the fuzzer reaches the paths behind it.
  for (auto& f : fields)
    for (size_t at; (at = f.find("$TOKEN")) != std::string::npos;) f.replace(at, 6, token);

  keel::manager::HttpRequest req;
  req.tcp = true;
  req.method = fields[0];
  req.path = fields[1];
  if (!fields[2].empty()) req.query["token"] = fields[2];
  const char* headers[] = {"cookie", "authorization", "origin", "host", "x-keel-csrf", "accept"};
  for (size_t i = 0; i < 6; ++i)
    if (!fields[3 + i].empty()) req.headers[headers[i]] = fields[3 + i];
  req.websocket = !fields[1].empty() && fields[1].back() == 'w';

  keel::manager::HttpReply res;
  bool passed = a.access->gate(req, res);
  if (passed) {
    bool bearer = req.headers["authorization"] == "Bearer " + token;
    bool cookie = req.headers["cookie"].find("keel_token=" + token) != std::string::npos;
    if (!bearer && !cookie) std::abort();  // in without the token
  } else if (res.status < 300 && res.status != 0) {
    std::abort();  // refused, yet answered as a success
  }
  return 0;
}
