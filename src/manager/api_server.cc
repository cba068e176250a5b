#include "manager/api_server.h"

#include <sys/socket.h>
#include <unistd.h>

#include <httplib.h>

#include <filesystem>

#include "base/log.h"
#include "control/unix_socket.h"
#include "manager/vm_definition.h"

namespace keel::manager {

using nlohmann::json;
using namespace std::chrono_literals;

namespace {

constexpr const char* kJson = "application/json";

// httplib::Server bound to an AF_UNIX socket: cpp-httplib 0.11 (Debian 12) only binds TCP, but
// its accept loop works on any listening stream socket it is given in svr_sock_.
class UnixHttpServer : public httplib::Server {
 public:
  void adopt_listening_socket(UniqueFd fd) {
    control::set_nonblocking(fd.get(), false);
    svr_sock_ = fd.release();
  }
};

void reply(httplib::Response& res, int status, const json& body) {
  res.status = status;
  res.set_content(body.dump(-1, ' ', false, json::error_handler_t::replace) + "\n", kJson);
}

void reply_error(httplib::Response& res, int status, const std::string& code,
                 const std::string& message) {
  reply(res, status, json{{"error", {{"code", code}, {"message", message}}}});
}

// Runs `fn`, mapping keel's exceptions to HTTP statuses.
template <typename Fn>
void guarded(httplib::Response& res, Fn&& fn) {
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
json body_object(const httplib::Request& req, bool empty_ok) {
  if (req.body.empty() && empty_ok) return json::object();
  json body;
  try {
    body = json::parse(req.body);
  } catch (const json::parse_error& e) {
    throw UsageError(std::string("request body is not valid JSON: ") + e.what());
  }
  if (!body.is_object()) throw UsageError("request body must be a JSON object");
  return body;
}

std::string vm_name(const httplib::Request& req) {
  std::string name = req.matches[1];
  if (!valid_vm_name(name)) throw NotFoundError("no VM named '" + name + "'");
  return name;
}

}  // namespace

ApiServer::ApiServer(Domains& domains, const std::string& socket_path)
    : domains_(domains), socket_path_(socket_path) {
  // Two daemons on one socket would steal each other's clients.
  try {
    control::connect_unix(socket_path_, 0ms);
    throw Error("another daemon is already serving " + socket_path_);
  } catch (const Error& e) {
    if (std::string(e.what()).rfind("another daemon", 0) == 0) throw;
  }
  auto parent = std::filesystem::path(socket_path_).parent_path();
  if (!parent.empty()) std::filesystem::create_directories(parent);
  auto server = std::make_unique<UnixHttpServer>();
  server->adopt_listening_socket(control::listen_unix(socket_path_, 128));
  // Streaming responses (console, events) hold a thread each for as long as they last.
  server->new_task_queue = [] { return new httplib::ThreadPool(128); };
  server->set_payload_max_length(kMaxBody);
  server->set_read_timeout(30, 0);
  server->set_keep_alive_max_count(100);
  server_ = std::move(server);
  routes();
}

ApiServer::~ApiServer() {
  stop();
  ::unlink(socket_path_.c_str());
}

void ApiServer::serve() { server_->listen_after_bind(); }

void ApiServer::stop() {
  stopping_ = true;
  domains_.close_streams();
  server_->stop();
}

void ApiServer::routes() {
  httplib::Server& s = *server_;

  s.set_exception_handler([](const httplib::Request&, httplib::Response& res, std::exception_ptr ep) {
    try {
      std::rethrow_exception(ep);
    } catch (const std::exception& e) {
      reply_error(res, 500, "failed", e.what());
    } catch (...) {
      reply_error(res, 500, "failed", "unknown error");
    }
  });
  s.set_error_handler([](const httplib::Request& req, httplib::Response& res) {
    if (!res.body.empty()) return;  // a handler already said why
    if (res.status == 404) {
      reply_error(res, 404, "no_route", "no such API path: " + req.method + " " + req.path);
    } else if (res.status == 413) {
      reply_error(res, 413, "too_large", "request body larger than " + std::to_string(kMaxBody));
    } else {
      reply_error(res, res.status, "bad_request", "the request was refused");
    }
  });

  s.Get("/v1/version", [](const httplib::Request&, httplib::Response& res) {
    reply(res, 200, json{{"name", "keel"}, {"version", "0.1"}, {"api", 1}});
  });

  s.Get("/v1/vms", [this](const httplib::Request&, httplib::Response& res) {
    guarded(res, [&] { reply(res, 200, domains_.list()); });
  });
  s.Post("/v1/vms", [this](const httplib::Request& req, httplib::Response& res) {
    guarded(res, [&] {
      json body;
      try {
        body = json::parse(req.body);
      } catch (const json::parse_error& e) {
        throw DefinitionError(std::string("malformed JSON: ") + e.what());
      }
      reply(res, 201, domains_.define(body));
    });
  });
  s.Get(R"(/v1/vms/([^/]+))", [this](const httplib::Request& req, httplib::Response& res) {
    guarded(res, [&] { reply(res, 200, domains_.info(vm_name(req))); });
  });
  s.Delete(R"(/v1/vms/([^/]+))", [this](const httplib::Request& req, httplib::Response& res) {
    guarded(res, [&] {
      domains_.undefine(vm_name(req));
      reply(res, 200, json::object());
    });
  });

  s.Post(R"(/v1/vms/([^/]+)/start)", [this](const httplib::Request& req, httplib::Response& res) {
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
      {"destroy", &Domains::destroy},   {"suspend", &Domains::suspend},
      {"resume", &Domains::resume}};
  for (auto [path, verb] : verbs) {
    s.Post(std::string(R"(/v1/vms/([^/]+)/)") + path,
           [this, verb](const httplib::Request& req, httplib::Response& res) {
             guarded(res, [&] {
               body_object(req, true);
               std::string name = vm_name(req);
               (domains_.*verb)(name);
               reply(res, 200, domains_.info(name));
             });
           });
  }

  // The console: GET streams the guest's output (chunked), POST sends the body as input.
  s.Get(R"(/v1/vms/([^/]+)/console)", [this](const httplib::Request& req, httplib::Response& res) {
    guarded(res, [&] {
      auto console = domains_.console(vm_name(req));
      uint64_t position = req.has_param("history") && req.get_param_value("history") == "1"
                              ? 0
                              : console->end();
      res.set_chunked_content_provider(
          "application/octet-stream",
          [this, console, position](size_t, httplib::DataSink& sink) mutable {
            std::string bytes = console->read(position, 200ms);
            if (!bytes.empty() && !sink.write(bytes.data(), bytes.size())) return false;
            if (console->closed() || stopping_) {
              sink.done();
              return true;
            }
            return true;
          });
    });
  });
  s.Post(R"(/v1/vms/([^/]+)/console)", [this](const httplib::Request& req, httplib::Response& res) {
    guarded(res, [&] {
      domains_.console_write(vm_name(req), req.body);
      reply(res, 200, json::object());
    });
  });

  s.Get("/v1/events", [this](const httplib::Request&, httplib::Response& res) {
    uint64_t position = domains_.events().end();
    res.set_chunked_content_provider(
        "application/x-ndjson", [this, position](size_t, httplib::DataSink& sink) mutable {
          for (const std::string& line : domains_.events().read(position, 200ms)) {
            std::string out = line + "\n";
            if (!sink.write(out.data(), out.size())) return false;
          }
          if (domains_.events().closed() || stopping_) {
            sink.done();
            return true;
          }
          return true;
        });
  });
}

}  // namespace keel::manager
