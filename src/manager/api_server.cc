#include "manager/api_server.h"

#include <grp.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <filesystem>

#include "base/log.h"
#include "base/version.h"
#include "control/unix_socket.h"
#include "manager/vm_definition.h"

namespace keel::manager {

using nlohmann::json;
using namespace std::chrono_literals;

namespace {

void reply(HttpReply& res, int status, const json& body) {
  res.status = status;
  res.content_type = "application/json";
  res.body = body.dump(-1, ' ', false, json::error_handler_t::replace) + "\n";
}

void reply_error(HttpReply& res, int status, const std::string& code,
                 const std::string& message) {
  res.status = status;
  res.content_type = "application/json";
  res.body = HttpServer::error_body(code, message);
}

// Runs `fn`, mapping keel's exceptions to HTTP statuses.
template <typename Fn>
void guarded(HttpReply& res, Fn&& fn) {
  try {
    fn();
  } catch (const DefinitionError& e) {
    reply_error(res, 422, "invalid_definition", e.what());
  } catch (const DuplicateError& e) {
    reply_error(res, 409, "duplicate", e.what());
  } catch (const NotFoundError& e) {
    reply_error(res, 404, "not_found", e.what());
  } catch (const ConflictError& e) {
    reply_error(res, 409, "wrong_state", e.what());
  } catch (const UsageError& e) {
    reply_error(res, 400, "bad_request", e.what());
  } catch (const std::exception& e) {
    reply_error(res, 500, "failed", e.what());
  }
}

// The JSON object in a request body ({} when the body is empty); UsageError otherwise.
json body_object(const HttpRequest& req, bool empty_ok) {
  if (req.body.empty() && empty_ok) return json::object();
  json body;
  try {
    body = json::parse(req.body);
  } catch (const json::exception& e) {  // parse_error, or out_of_range (a number too large)
    throw UsageError(std::string("request body is not valid JSON: ") + e.what());
  }
  if (!body.is_object()) throw UsageError("request body must be a JSON object");
  return body;
}

// A definition in a request body; malformed JSON is a refused definition (422).
json definition_body(const HttpRequest& req) {
  try {
    return json::parse(req.body);
  } catch (const json::exception& e) {  // parse_error, or out_of_range (a number too large)
    throw DefinitionError(std::string("malformed JSON: ") + e.what());
  }
}

std::string vm_name(const HttpRequest& req) {
  std::string name = req.matches.at(0);
  if (!valid_vm_name(name)) throw NotFoundError("no VM named '" + name + "'");
  return name;
}

// A VM's console output from `position` on, until the console's history is closed.
class ConsoleStream : public ResponseStream {
 public:
  ConsoleStream(std::shared_ptr<ByteHistory> history, uint64_t position)
      : history_(std::move(history)), subscription_(*history_), position_(position) {}
  int wait_fd() const override { return subscription_.fd(); }
  std::optional<std::string> next() override {
    subscription_.consume();  // before reading, so an append after the read wakes us again
    std::string bytes = history_->read(position_, 0ms);
    if (bytes.empty() && history_->closed()) return std::nullopt;
    return bytes;
  }

 private:
  std::shared_ptr<ByteHistory> history_;
  ByteHistory::Subscription subscription_;
  uint64_t position_;
};

// The console as a WebSocket (the web console's terminal): output as binary messages, each
// message from the client typed into the guest.
class ConsoleSocket : public WebSocketSession {
 public:
  ConsoleSocket(Domains& domains, Metrics& metrics, std::string name,
                std::shared_ptr<ByteHistory> history, uint64_t position)
      : domains_(domains), metrics_(metrics), name_(std::move(name)),
        output_(std::move(history), position) {}
  int wait_fd() const override { return output_.wait_fd(); }
  std::optional<std::string> next() override { return output_.next(); }
  void on_message(std::string_view data) override {
    domains_.console_write(name_, data);
    metrics_.add_console_input(name_, data.size());
  }

 private:
  Domains& domains_;
  Metrics& metrics_;
  std::string name_;
  ConsoleStream output_;
};

// Lifecycle events (one JSON object per line) from now on.
class EventStream : public ResponseStream {
 public:
  explicit EventStream(MessageHistory& history)
      : history_(history), subscription_(history), position_(history.end()) {}
  int wait_fd() const override { return subscription_.fd(); }
  std::optional<std::string> next() override {
    subscription_.consume();
    std::vector<std::string> lines = history_.read(position_, 0ms);
    if (lines.empty() && history_.closed()) return std::nullopt;
    std::string out;
    for (const auto& line : lines) out += line + "\n";
    return out;
  }

 private:
  MessageHistory& history_;
  MessageHistory::Subscription subscription_;
  uint64_t position_;
};

// The socket's directory: created 0755 if missing (the socket's own mode guards it), never
// loosened if it exists.
void make_socket_directory(const std::filesystem::path& dir) {
  if (dir.empty() || std::filesystem::exists(dir)) return;
  make_socket_directory(dir.parent_path());
  if (::mkdir(dir.c_str(), 0755) != 0 && errno != EEXIST) throw_errno("mkdir " + dir.string());
  ::chmod(dir.c_str(), 0755);  // whatever the umask
}

}  // namespace

std::optional<gid_t> group_id(const std::string& name) {
  if (name.empty()) return std::nullopt;
  std::vector<char> buf(16384);
  group g{};
  group* found = nullptr;
  if (::getgrnam_r(name.c_str(), &g, buf.data(), buf.size(), &found) != 0 || !found)
    return std::nullopt;
  return found->gr_gid;
}

bool ApiServer::authorized(const PeerCredentials& peer, std::optional<gid_t> group) {
  if (peer.uid == 0 || peer.uid == ::geteuid()) return true;
  if (!group) return false;
  return peer.gid == *group ||
         std::find(peer.groups.begin(), peer.groups.end(), *group) != peer.groups.end();
}

ApiServer::ApiServer(Domains& domains, const std::string& socket_path, ApiOptions options)
    : domains_(domains), socket_path_(socket_path) {
  // Two daemons on one socket would steal each other's clients.
  try {
    control::connect_unix(socket_path_, 0ms);
    throw Error("another daemon is already serving " + socket_path_);
  } catch (const Error& e) {
    if (std::string(e.what()).rfind("another daemon", 0) == 0) throw;
  }
  make_socket_directory(std::filesystem::path(socket_path_).parent_path());
  UniqueFd listening = control::listen_unix(socket_path_, 128);
  // The daemon runs with umask 077, so the socket is born 0600 and only ever widened to 0660.
  std::optional<gid_t> group = group_id(options.group);
  if (group && ::chown(socket_path_.c_str(), ::geteuid(), *group) != 0)
    throw_errno("chown " + socket_path_);
  if (::chmod(socket_path_.c_str(), 0660) != 0) throw_errno("chmod " + socket_path_);
  if (!group && !options.group.empty())
    log::info("daemon: no group '{}': only root may use {}", options.group, socket_path_);

  options.http.max_body_bytes = kMaxBody;
  options.http.authorize = [group](const PeerCredentials& peer) { return authorized(peer, group); };
  server_ = std::make_unique<HttpServer>(std::move(listening), options.http);
  server_->set_observer([this](const HttpRequest& req, int status, double seconds) {
    metrics_.observe_request(req.method, req.route.empty() ? "(none)" : req.route, status, seconds);
  });
  if (!options.http_listen.empty()) {
    HttpListen listen = parse_http_listen(options.http_listen);
    if (!listen.loopback && !options.http_allow_remote)
      throw UsageError("--http " + options.http_listen +
                       ": not a loopback address. The web console speaks plain HTTP, and whoever "
                       "has its token controls every VM: put it behind a TLS proxy or an SSH "
                       "tunnel, or add --http-allow-remote if other hosts should reach it as it is");
    web_ = std::make_unique<WebAccess>(options.token_file);
    uint16_t port = server_->listen_tcp(listen.address, listen.port);
    bool v6 = listen.address.find(':') != std::string::npos;
    web_address_ = (v6 ? "[" + listen.address + "]" : listen.address) + ":" + std::to_string(port);
    server_->set_gate([web = web_.get()](HttpRequest& req, HttpReply& res) {
      return web->gate(req, res);
    });
  }
  routes();
}

std::string ApiServer::web_url() const {
  if (!web_) return {};
  return "http://" + web_address_ + "/?token=" + web_->token();
}

ApiServer::~ApiServer() {
  stop();
  server_.reset();
  ::unlink(socket_path_.c_str());
}

void ApiServer::serve() { server_->serve(); }

void ApiServer::stop() {
  domains_.close_streams();
  server_->stop();
}

void ApiServer::routes() {
  HttpServer& s = *server_;
  using Req = const HttpRequest&;
  using Res = HttpReply&;

  s.route("GET", "/v1/version", [](Req, Res res) {
    reply(res, 200, json{{"name", "keel"}, {"version", kVersion}, {"api", kApiVersion}});
  });

  s.route("GET", "/v1/vms", [this](Req, Res res) {
    guarded(res, [&] { reply(res, 200, domains_.list()); });
  });
  s.route("POST", "/v1/vms", [this](Req req, Res res) {
    guarded(res, [&] {
      reply(res, 201, domains_.define(definition_body(req), req.peer));
    });
  });
  s.route("PUT", R"(/v1/vms/([^/]+))", [this](Req req, Res res) {
    guarded(res, [&] {
      auto [created, vm] = domains_.put(vm_name(req), definition_body(req), req.peer);
      reply(res, created ? 201 : 200, vm);
    });
  });
  s.route("GET", R"(/v1/vms/([^/]+))", [this](Req req, Res res) {
    guarded(res, [&] { reply(res, 200, domains_.info(vm_name(req))); });
  });
  s.route("DELETE", R"(/v1/vms/([^/]+))", [this](Req req, Res res) {
    guarded(res, [&] {
      domains_.undefine(vm_name(req));
      reply(res, 200, json::object());
    });
  });

  s.route("POST", R"(/v1/vms/([^/]+)/start)", [this](Req req, Res res) {
    guarded(res, [&] {
      json body = body_object(req, true);
      bool paused = false;
      for (auto& [key, value] : body.items()) {
        if (key != "paused") throw UsageError("field '" + key + "': unknown field");
        if (!value.is_boolean()) throw UsageError("field 'paused': expected a boolean");
        paused = value.get<bool>();
      }
      reply(res, 200, domains_.start(vm_name(req), paused));
    });
  });
  using Verb = void (Domains::*)(const std::string&);
  const std::pair<const char*, Verb> verbs[] = {
      {"shutdown", &Domains::shutdown}, {"reboot", &Domains::reboot},
      {"reset", &Domains::reset},       {"destroy", &Domains::destroy},
      {"suspend", &Domains::suspend},   {"resume", &Domains::resume}};
  for (const auto& entry : verbs) {
    Verb verb = entry.second;  // clang 14 cannot capture a structured binding
    s.route("POST", std::string(R"(/v1/vms/([^/]+)/)") + entry.first, [this, verb](Req req, Res res) {
      guarded(res, [&] {
        body_object(req, true);
        std::string name = vm_name(req);
        (domains_.*verb)(name);
        reply(res, 200, domains_.info(name));
      });
    });
  }

  // VM state (domains_state.cc): save, snapshot, restore, migrate and a migration's target.
  auto fields = [](const json& body, std::initializer_list<const char*> known) {
    for (auto& [key, value] : body.items()) {
      bool ok = false;
      for (const char* k : known) ok = ok || key == k;
      if (!ok) throw UsageError("field '" + key + "': unknown field");
    }
  };
  auto string_field = [](const json& body, const char* key, bool required) {
    if (!body.contains(key)) {
      if (required) throw UsageError(std::string("field '") + key + "': missing");
      return std::string();
    }
    if (!body[key].is_string()) throw UsageError(std::string("field '") + key + "': expected a string");
    return body[key].get<std::string>();
  };
  for (const char* verb : {"save", "snapshot"}) {
    bool keep_running = std::string(verb) == "snapshot";
    s.route("POST", std::string(R"(/v1/vms/([^/]+)/)") + verb, [=, this](Req req, Res res) {
      guarded(res, [&] {
        json body = body_object(req, false);
        fields(body, {"dir"});
        reply(res, 200, domains_.save(vm_name(req), string_field(body, "dir", true), req.peer, keep_running));
      });
    });
  }
  s.route("POST", "/v1/restore", [=, this](Req req, Res res) {
    guarded(res, [&] {
      json body = body_object(req, false);
      fields(body, {"dir", "name", "paused"});
      std::string name = string_field(body, "name", false);
      if (!name.empty() && !valid_vm_name(name)) throw UsageError("field 'name': '" + name + "' is not a valid VM name");
      if (body.contains("paused") && !body["paused"].is_boolean())
        throw UsageError("field 'paused': expected a boolean");
      reply(res, 200, domains_.restore(string_field(body, "dir", true), name, body.value("paused", false), req.peer));
    });
  });
  s.route("POST", R"(/v1/vms/([^/]+)/migrate)", [=, this](Req req, Res res) {
    guarded(res, [&] {
      json body = body_object(req, false);
      fields(body, {"to", "downtime_limit_ms"});
      uint64_t downtime = 300;
      if (body.contains("downtime_limit_ms")) {
        if (!body["downtime_limit_ms"].is_number_unsigned() || body["downtime_limit_ms"].get<uint64_t>() > 3'600'000)
          throw UsageError("field 'downtime_limit_ms': expected milliseconds, at most 3600000");
        downtime = body["downtime_limit_ms"].get<uint64_t>();
      }
      // Only root moves a VM away: the target daemon defines it with the source's credentials.
      if (!req.peer.is_root()) throw ConflictError("only root may migrate a VM to another daemon");
      reply(res, 200, domains_.migrate(vm_name(req), string_field(body, "to", true), downtime));
    });
  });
  s.route("POST", R"(/v1/vms/([^/]+)/incoming)", [=, this](Req req, Res res) {
    guarded(res, [&] {
      json body = body_object(req, false);
      fields(body, {"definition", "paused"});
      if (!body.contains("definition") || !body["definition"].is_object())
        throw UsageError("field 'definition': expected the VM's definition (an object)");
      if (body.contains("paused") && !body["paused"].is_boolean())
        throw UsageError("field 'paused': expected a boolean");
      std::string name = req.matches.at(0);
      if (!valid_vm_name(name)) throw UsageError("'" + name + "' is not a valid VM name");
      reply(res, 200, domains_.incoming(name, body["definition"], body.value("paused", false), req.peer));
    });
  });

  // The console: GET streams the guest's output (chunked), POST sends the body as input.
  s.route("GET", R"(/v1/vms/([^/]+)/console)", [this](Req req, Res res) {
    guarded(res, [&] {
      auto history = req.query.find("history");
      bool from_start = history != req.query.end() && history->second == "1";
      auto console = domains_.console(vm_name(req), from_start);
      uint64_t position = from_start ? 0 : console->end();
      res.content_type = "application/octet-stream";
      res.stream = std::make_unique<ConsoleStream>(console, position);
    });
  });
  s.route("POST", R"(/v1/vms/([^/]+)/console)", [this](Req req, Res res) {
    guarded(res, [&] {
      domains_.console_write(vm_name(req), req.body);
      metrics_.add_console_input(vm_name(req), req.body.size());
      reply(res, 200, json::object());
    });
  });
  // The console as a WebSocket (the web console's terminal), from its recent history on.
  s.route("GET", R"(/v1/vms/([^/]+)/console/ws)", [this](Req req, Res res) {
    guarded(res, [&] {
      std::string name = vm_name(req);
      auto console = domains_.console(name, true);  // a stopped VM's: its last run's output
      res.websocket = std::make_unique<ConsoleSocket>(domains_, metrics_, name, console, 0);
    });
  });

  // Metrics: one VM as JSON (keel stats), every VM and the API as Prometheus text.
  s.route("GET", R"(/v1/vms/([^/]+)/stats)", [this](Req req, Res res) {
    guarded(res, [&] { reply(res, 200, metrics_.vm_stats(domains_, vm_name(req))); });
  });
  s.route("GET", "/metrics", [this](Req, Res res) {
    res.content_type = "text/plain; version=0.0.4; charset=utf-8";
    res.body = metrics_.prometheus(domains_);
  });

  // The web console's page and its assets (embedded in keel).
  s.route("GET", R"(/|/index\.html|/assets/[A-Za-z0-9._-]+)", [](Req req, Res res) {
    if (!serve_web_asset(req.path, res))
      reply_error(res, 404, "no_route", "no such file: " + req.path);
  });

  s.route("GET", "/v1/events", [this](Req, Res res) {
    res.content_type = "application/x-ndjson";
    res.stream = std::make_unique<EventStream>(domains_.events());
  });
}

}  // namespace keel::manager
