// The web console's access rules (manager/web_console.h) on their own: the --http address parser,
// the token file, and the gate every TCP request passes: token by query (login), by cookie or by
// Bearer header, the same-origin rule for cookie requests and WebSockets, and the CSRF header for
// state-changing cookie requests. Missing, malformed and wrong credentials each get their answer.
#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>

#include <gtest/gtest.h>

#include "base/error.h"
#include "manager/web_console.h"

namespace keel::manager {
namespace {

TEST(WebConsoleListen, ParsesLoopbackAndOtherAddresses) {
  HttpListen v4 = parse_http_listen("127.0.0.1:8006");
  EXPECT_EQ(v4.address, "127.0.0.1");
  EXPECT_EQ(v4.port, 8006);
  EXPECT_TRUE(v4.loopback);
  HttpListen v6 = parse_http_listen("[::1]:0");
  EXPECT_EQ(v6.address, "::1");
  EXPECT_TRUE(v6.loopback);
  EXPECT_TRUE(parse_http_listen("localhost:80").loopback);
  EXPECT_FALSE(parse_http_listen("0.0.0.0:8006").loopback);
  EXPECT_FALSE(parse_http_listen("192.168.1.2:8006").loopback);
}

TEST(WebConsoleListen, RefusesMalformedAddressesNamingTheFault) {
  auto message = [](const std::string& text) {
    try {
      parse_http_listen(text);
    } catch (const UsageError& e) {
      return std::string(e.what());
    }
    return std::string("accepted");
  };
  EXPECT_NE(message("8006").find("expected ADDRESS:PORT"), std::string::npos);
  EXPECT_NE(message("127.0.0.1:").find("expected ADDRESS:PORT"), std::string::npos);
  EXPECT_NE(message("127.0.0.1:99999").find("not a port number"), std::string::npos);
  EXPECT_NE(message("127.0.0.1:80a").find("not a port number"), std::string::npos);
  EXPECT_NE(message("example.org:80").find("not an IP address"), std::string::npos);
}

class WebAccessTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/keel-web-XXXXXX";
    dir_ = ::mkdtemp(tmpl);
    access_ = std::make_unique<WebAccess>(dir_ + "/http.token");
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }

  // A TCP request as a browser on the console's own page sends it.
  static HttpRequest tcp(const std::string& method, const std::string& path) {
    HttpRequest req;
    req.method = method;
    req.path = path;
    req.tcp = true;
    req.headers["host"] = "127.0.0.1:8006";
    return req;
  }
  std::string cookies(const std::string& csrf = "c5rf") const {
    return "keel_token=" + access_->token() + "; keel_csrf=" + csrf;
  }
  // `req` with `name: value` is refused with `status` and an answer that contains `says`.
  void expect_refused(HttpRequest req, const std::string& name, const std::string& value,
                      int status, const std::string& says) {
    req.headers[name] = value;
    HttpReply res;
    EXPECT_FALSE(access_->gate(req, res)) << name << ": " << value;
    EXPECT_EQ(res.status, status) << name << ": " << value;
    EXPECT_NE(res.body.find(says), std::string::npos) << name << ": " << value << "\n" << res.body;
  }
  static std::string header(const HttpReply& res, const std::string& name) {
    for (const auto& [key, value] : res.headers)
      if (key == name) return value;
    return {};
  }

  std::string dir_;
  std::unique_ptr<WebAccess> access_;
};

TEST_F(WebAccessTest, MakesAPrivateTokenOnceAndKeepsIt) {
  std::string file = dir_ + "/http.token";
  struct stat st{};
  ASSERT_EQ(::stat(file.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600u);
  EXPECT_GE(access_->token().size(), 32u);
  EXPECT_EQ(WebAccess(file).token(), access_->token());
  std::ifstream in(file);
  std::string line;
  std::getline(in, line);
  EXPECT_EQ(line, access_->token());
}

TEST_F(WebAccessTest, UnixSocketRequestsPassUntouched) {
  HttpRequest req;
  req.method = "POST";
  req.path = "/v1/vms";
  HttpReply res;
  EXPECT_TRUE(access_->gate(req, res));
  EXPECT_TRUE(res.headers.empty());
}

TEST_F(WebAccessTest, WithoutTheTokenABrowserGetsTheLoginPageAndAScript401) {
  HttpRequest page = tcp("GET", "/");
  page.headers["accept"] = "text/html,application/xhtml+xml";
  HttpReply res;
  EXPECT_FALSE(access_->gate(page, res));
  EXPECT_EQ(res.status, 401);
  EXPECT_NE(res.content_type.find("text/html"), std::string::npos);
  EXPECT_NE(res.body.find("id=\"token\""), std::string::npos);

  HttpRequest api = tcp("GET", "/v1/vms");
  HttpReply res2;
  EXPECT_FALSE(access_->gate(api, res2));
  EXPECT_EQ(res2.status, 401);
  EXPECT_NE(res2.body.find("\"unauthorized\""), std::string::npos);
  EXPECT_EQ(header(res2, "WWW-Authenticate"), "Bearer");
}

TEST_F(WebAccessTest, LoginSetsTheCookiesAndDropsTheTokenFromTheAddress) {
  HttpRequest req = tcp("GET", "/");
  req.query["token"] = access_->token();
  req.query["x"] = "1";
  HttpReply res;
  EXPECT_FALSE(access_->gate(req, res));
  EXPECT_EQ(res.status, 303);
  EXPECT_EQ(header(res, "Location"), "/?x=1");
  std::vector<std::string> set;
  for (const auto& [key, value] : res.headers)
    if (key == "Set-Cookie") set.push_back(value);
  ASSERT_EQ(set.size(), 2u);
  EXPECT_EQ(set[0].rfind("keel_token=" + access_->token() + ";", 0), 0u) << set[0];
  EXPECT_NE(set[0].find("HttpOnly"), std::string::npos);
  EXPECT_NE(set[0].find("SameSite=Strict"), std::string::npos);
  EXPECT_EQ(set[1].rfind("keel_csrf=", 0), 0u) << set[1];
}

TEST_F(WebAccessTest, LoginRedirectsOnlyToThisSite) {
  HttpRequest req = tcp("GET", "//evil.example/x");
  req.query["token"] = access_->token();
  HttpReply res;
  EXPECT_FALSE(access_->gate(req, res));
  EXPECT_EQ(res.status, 303);
  EXPECT_EQ(header(res, "Location"), "/");
}

TEST_F(WebAccessTest, AWrongLoginTokenGetsTheLoginPageWithItsError) {
  for (std::string token : {std::string("nope"), std::string(""), access_->token() + "x",
                            access_->token().substr(1) + "0"}) {
    HttpRequest req = tcp("GET", "/");
    req.query["token"] = token;
    HttpReply res;
    EXPECT_FALSE(access_->gate(req, res)) << token;
    EXPECT_EQ(res.status, 401) << token;
    EXPECT_NE(res.body.find("not the daemon's"), std::string::npos) << token;
  }
}

TEST_F(WebAccessTest, BearerTokenLetsAScriptIn) {
  HttpRequest req = tcp("POST", "/v1/vms/a/start");
  req.headers["authorization"] = "Bearer " + access_->token();
  HttpReply res;
  EXPECT_TRUE(access_->gate(req, res));
  EXPECT_EQ(req.peer.uid, ::geteuid());  // it acts as the daemon's user
}

TEST_F(WebAccessTest, MalformedOrWrongAuthorizationIsRefused) {
  const std::string& token = access_->token();
  std::vector<std::string> values{"Bearer",           "Bearer ",      "Basic " + token,
                                  "bearer " + token,  "Bearer " + token + " ", "Bearer wrong",
                                  "Bearer " + std::string(4096, 'a')};
  for (const std::string& value : values)
    expect_refused(tcp("GET", "/metrics"), "authorization", value, 401, "Authorization header");
  // A wrong header is not rescued by a right cookie.
  HttpRequest req = tcp("GET", "/v1/vms");
  req.headers["authorization"] = "Bearer wrong";
  req.headers["cookie"] = cookies();
  HttpReply res;
  EXPECT_FALSE(access_->gate(req, res));
}

TEST_F(WebAccessTest, CookieGetFromThePageIsLetIn) {
  HttpRequest req = tcp("GET", "/v1/vms");
  req.headers["cookie"] = "other=1; " + cookies();
  HttpReply res;
  EXPECT_TRUE(access_->gate(req, res));
}

TEST_F(WebAccessTest, WrongOrMalformedCookieIsRefused) {
  const std::string& token = access_->token();
  std::vector<std::string> values{"keel_token=",          "keel_token=wrong", "keel_token",
                                  "keel_tokenx=" + token, "keel_token=" + token + "0", ";;;="};
  for (const std::string& value : values)
    expect_refused(tcp("GET", "/v1/vms"), "cookie", value, 401, "unauthorized");
}

TEST_F(WebAccessTest, CookieRequestsFromAnotherOriginAreRefused) {
  for (std::string origin : {"http://evil.example", "http://127.0.0.1:8007", "null",
                             "https://127.0.0.1:8006"}) {
    HttpRequest req = tcp("GET", "/v1/vms");
    req.headers["cookie"] = cookies();
    expect_refused(req, "origin", origin, 403, "cross_origin");
  }
}

TEST_F(WebAccessTest, WebSocketNeedsItsOwnOrigin) {
  HttpRequest without = tcp("GET", "/v1/vms/a/console/ws");
  without.websocket = true;
  without.headers["cookie"] = cookies();
  HttpReply res;
  EXPECT_FALSE(access_->gate(without, res));
  EXPECT_EQ(res.status, 403);

  HttpRequest foreign = without;
  foreign.headers["origin"] = "http://evil.example";
  HttpReply res2;
  EXPECT_FALSE(access_->gate(foreign, res2));
  EXPECT_EQ(res2.status, 403);

  HttpRequest own = without;
  own.headers["origin"] = "http://127.0.0.1:8006";
  HttpReply res3;
  EXPECT_TRUE(access_->gate(own, res3));
}

TEST_F(WebAccessTest, StateChangingCookieRequestsNeedTheCsrfHeader) {
  auto gate = [&](const std::string* csrf_header, const std::string& csrf_cookie) {
    HttpRequest req = tcp("POST", "/v1/vms/a/destroy");
    req.headers["cookie"] = cookies(csrf_cookie);
    req.headers["origin"] = "http://127.0.0.1:8006";
    if (csrf_header) req.headers["x-keel-csrf"] = *csrf_header;
    HttpReply res;
    bool passed = access_->gate(req, res);
    if (!passed) {
      EXPECT_EQ(res.status, 403);
      EXPECT_NE(res.body.find("X-Keel-CSRF"), std::string::npos);
    }
    return passed;
  };
  std::string right = "c5rf", wrong = "c5rg", empty;
  EXPECT_TRUE(gate(&right, "c5rf"));
  EXPECT_FALSE(gate(nullptr, "c5rf"));
  EXPECT_FALSE(gate(&wrong, "c5rf"));
  EXPECT_FALSE(gate(&empty, ""));  // no cookie, empty header: not a match
  for (const char* method : {"PUT", "DELETE", "PATCH"}) {
    HttpRequest req = tcp(method, "/v1/vms/a");
    req.headers["cookie"] = cookies();
    HttpReply res;
    EXPECT_FALSE(access_->gate(req, res)) << method;
  }
}

}  // namespace
}  // namespace keel::manager
