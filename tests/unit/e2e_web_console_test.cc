// `keel daemon --http` end to end, outside the browser: a non-loopback address is refused without
// --http-allow-remote (and says why), the token file is private and survives a restart, the
// daemon prints the login URL, and the TCP listener serves the API and /metrics to the token's
// holder only. (The page itself is tested in chromium: web/test/console.test.mjs.)
#include <sys/stat.h>

#include <boost/asio/connect.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>

#include <regex>

#include "e2e_manager_helpers.h"

namespace keel::e2e {
namespace {

namespace asio = boost::asio;
namespace http = boost::beast::http;

class WebConsoleDaemonTest : public DaemonFixture {
 protected:
  std::vector<std::string> daemon_extra_args() override { return extra; }

  // The login URL the daemon printed last: port and token.
  void read_url() {
    std::regex url(R"(web console at http://([0-9.]+):([0-9]+)/\?token=([0-9a-f]+))");
    std::string log = read_whole(dir + "/daemon.log");
    std::smatch last;
    for (std::sregex_iterator it(log.begin(), log.end(), url), end; it != end; ++it) last = *it;
    ASSERT_FALSE(last.empty()) << log;
    port = static_cast<uint16_t>(std::stoi(last[2]));
    token = last[3];
  }

  // One request to the TCP listener; status and body.
  std::pair<int, std::string> get(const std::string& target, const std::string& authorization) {
    asio::io_context ioc;
    asio::ip::tcp::socket socket(ioc);
    socket.connect({asio::ip::make_address("127.0.0.1"), port});
    http::request<http::string_body> req{http::verb::get, target, 11};
    req.set(http::field::host, "127.0.0.1:" + std::to_string(port));
    if (!authorization.empty()) req.set(http::field::authorization, authorization);
    http::write(socket, req);
    boost::beast::flat_buffer buffer;
    http::response<http::string_body> res;
    http::read(socket, buffer, res);
    return {res.result_int(), res.body()};
  }

  std::vector<std::string> extra;
  uint16_t port = 0;
  std::string token;
};

TEST_F(WebConsoleDaemonTest, ANonLoopbackAddressNeedsHttpAllowRemote) {
  CommandResult r = run_keel({"daemon", "--state-dir", state_dir, "--socket", socket, "--http",
                              "0.0.0.0:0"}, dir);
  EXPECT_EQ(r.exit_code, 2) << r.err;
  EXPECT_NE(r.err.find("not a loopback address"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("--http-allow-remote"), std::string::npos) << r.err;
  r = run_keel({"daemon", "--state-dir", state_dir, "--socket", socket, "--http", "nowhere"}, dir);
  EXPECT_EQ(r.exit_code, 2) << r.err;
  EXPECT_NE(r.err.find("expected ADDRESS:PORT"), std::string::npos) << r.err;

  extra = {"--http", "0.0.0.0:0", "--http-allow-remote"};
  start_daemon();
  std::smatch m;
  std::string log = read_whole(dir + "/daemon.log");
  ASSERT_TRUE(std::regex_search(log, m, std::regex(R"(web console at http://0\.0\.0\.0:([0-9]+)/)")))
      << log;
  port = static_cast<uint16_t>(std::stoi(m[1]));
  token = read_whole(state_dir + "/http.token");
  token.pop_back();  // its newline
  EXPECT_EQ(get("/v1/vms", "Bearer " + token).first, 200);
}

TEST_F(WebConsoleDaemonTest, TheListenerServesTheTokensHolderOnly) {
  extra = {"--http", "127.0.0.1:0"};
  start_daemon();
  read_url();
  struct stat st{};
  ASSERT_EQ(::stat((state_dir + "/http.token").c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600u);
  EXPECT_EQ(read_whole(state_dir + "/http.token"), token + "\n");

  EXPECT_EQ(get("/v1/vms", "").first, 401);
  EXPECT_EQ(get("/metrics", "Bearer " + token + "x").first, 401);
  EXPECT_EQ(get("/v1/vms", "Basic " + token).first, 401);
  EXPECT_EQ(get("/v1/vms", "Bearer " + token).first, 200);
  auto [status, body] = get("/metrics", "Bearer " + token);
  EXPECT_EQ(status, 200);
  EXPECT_NE(body.find("# TYPE keel_api_requests_total counter"), std::string::npos) << body;
  auto page = get("/", "Bearer " + token);
  EXPECT_EQ(page.first, 200);
  EXPECT_NE(page.second.find("/assets/app.js"), std::string::npos);
  EXPECT_EQ(get("/assets/app.js", "Bearer " + token).first, 200);
  EXPECT_EQ(get("/assets/nope.js", "Bearer " + token).first, 404);
  EXPECT_EQ(get("/assets/../http.token", "Bearer " + token).first, 404);

  // The same token after a restart: a logged-in browser stays logged in.
  stop_daemon(SIGTERM);
  start_daemon();
  std::string before = token;
  read_url();
  EXPECT_EQ(token, before);
}

}  // namespace
}  // namespace keel::e2e
