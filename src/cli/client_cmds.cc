// The virsh-like verbs. Each is a client of the daemon's HTTP API only (manager/api_client.h).
#include <poll.h>
#include <termios.h>
#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <sstream>
#include <thread>

#include <nlohmann/json.hpp>

#include "base/error.h"
#include <CLI/CLI.hpp>

#include "cli/verbs.h"
#include "manager/api_client.h"

namespace keel::cli {

using nlohmann::json;

namespace {

constexpr char kDetachKey = 0x1d;  // Ctrl-]

std::string default_socket() {
  const char* env = std::getenv("KEEL_SOCKET");
  return env && *env ? env : "/run/keel/keel.sock";
}

// Options every client verb shares.
struct ClientOptions {
  std::string socket = default_socket();
  std::string name;
  double timeout = 60;  // seconds for each request (a stream: until it opens)

  manager::ApiClient api() const {
    return manager::ApiClient(socket, std::chrono::milliseconds(static_cast<int64_t>(timeout * 1000)));
  }
};

CLI::App* client_verb(CLI::App& app, const char* verb, const char* help, ClientOptions& options,
                      bool takes_name = true) {
  CLI::App* cmd = app.add_subcommand(verb, help);
  cmd->add_option("--socket", options.socket, "The daemon's API socket")->capture_default_str();
  cmd->add_option("--timeout", options.timeout,
                  "Seconds to wait for the daemon's answer (a console or event stream: until it "
                  "opens)")
      ->capture_default_str()
      ->check(CLI::Range(0.001, 86400.0));
  if (takes_name) cmd->add_option("name", options.name, "The VM")->required();
  return cmd;
}

// The terminal in raw mode for as long as this lives (when stdin is a terminal).
class RawTerminal {
 public:
  RawTerminal() {
    if (!::isatty(STDIN_FILENO) || ::tcgetattr(STDIN_FILENO, &saved_) != 0) return;
    termios raw = saved_;
    ::cfmakeraw(&raw);
    raw.c_oflag |= OPOST;  // keep "\n" -> "\r\n" so the daemon's messages stay readable
    if (::tcsetattr(STDIN_FILENO, TCSANOW, &raw) == 0) active_ = true;
  }
  ~RawTerminal() {
    if (active_) ::tcsetattr(STDIN_FILENO, TCSANOW, &saved_);
  }
  RawTerminal(const RawTerminal&) = delete;
  RawTerminal& operator=(const RawTerminal&) = delete;

 private:
  termios saved_{};
  bool active_ = false;
};

void write_stdout(std::string_view bytes) {
  while (!bytes.empty()) {
    ssize_t n = ::write(STDOUT_FILENO, bytes.data(), bytes.size());
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return;
    bytes.remove_prefix(static_cast<size_t>(n));
  }
}

// Attaches the terminal to the VM's console until Ctrl-] (or end of input, or the stream ends).
void attach_console(manager::ApiClient& api, const std::string& name) {
  std::string path = "/v1/vms/" + name + "/console";
  api.call("GET", "/v1/vms/" + name);  // fail early, with the daemon's message, if it is unknown
  RawTerminal raw;
  std::atomic<bool> detach{false};
  std::exception_ptr output_error;
  std::thread output([&] {
    try {
      api.stream(path, [&](std::string_view bytes) {
        write_stdout(bytes);
        return !detach;
      }, [&] { return detach.load(); }, [&] {
        // Said once the stream is open: the output from here on reaches this terminal.
        std::fprintf(stderr, "Connected to domain '%s'\nEscape character is ^] (Ctrl + ])\n",
                     name.c_str());
      });
    } catch (...) {
      output_error = std::current_exception();
    }
    detach = true;
  });
  char buf[1024];
  while (!detach) {
    pollfd p{STDIN_FILENO, POLLIN, 0};
    if (::poll(&p, 1, 200) <= 0) continue;
    ssize_t n = ::read(STDIN_FILENO, buf, sizeof(buf));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;  // end of input
    std::string_view input(buf, static_cast<size_t>(n));
    size_t key = input.find(kDetachKey);
    if (key != std::string_view::npos) {
      input = input.substr(0, key);
      detach = true;
    }
    if (!input.empty()) {
      api.request("POST", path, input, "application/octet-stream");
    }
  }
  detach = true;
  output.join();
  std::fprintf(stderr, "\n");
  if (output_error) std::rethrow_exception(output_error);
}

std::string state_text(const json& vm) {
  std::string state = vm.value("state", "?");
  std::string reason = vm.value("reason", "");
  return reason.empty() ? state : state + " (" + reason + ")";
}

void print_list(const json& vms, bool all) {
  std::printf(" %-7s %-24s %s\n", "PID", "Name", "State");
  std::printf("%s\n", std::string(52, '-').c_str());
  for (const json& vm : vms) {
    if (!all && vm.value("state", "") == "shut off") continue;
    std::string pid = vm.contains("pid") ? std::to_string(vm["pid"].get<int64_t>()) : "-";
    std::printf(" %-7s %-24s %s\n", pid.c_str(), vm.value("name", "?").c_str(),
                state_text(vm).c_str());
  }
}

void print_info(const json& vm) {
  const json& def = vm.value("definition", json::object());
  auto row = [](const char* key, const std::string& value) {
    std::printf("%-16s %s\n", key, value.c_str());
  };
  row("Name:", vm.value("name", "?"));
  row("State:", state_text(vm));
  row("PID:", vm.contains("pid") ? std::to_string(vm["pid"].get<int64_t>()) : "-");
  row("CPU(s):", std::to_string(def.value("vcpus", 0)));
  row("Memory:", std::to_string(def.value("memory_mib", 0)) + " MiB");
  row("Accel:", def.value("accel", "?"));
  if (def.contains("kernel")) row("Kernel:", def["kernel"].get<std::string>());
  if (def.contains("test_guest")) row("Test guest:", def["test_guest"].get<std::string>());
  row("Disks:", std::to_string(def.value("disks", json::array()).size()));
  row("Networks:", std::to_string(def.value("nets", json::array()).size()));
  if (vm.contains("control_socket")) row("Control socket:", vm["control_socket"].get<std::string>());
  row("Log:", vm.value("log", "-"));
}

std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw Error("cannot read " + path);
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

std::string describe_event(const json& e) {
  std::string text = "event '" + e.value("event", "?") + "' for domain '" + e.value("vm", "?") +
                     "': " + state_text(e);
  if (e.contains("detail")) text += " - " + e["detail"].get<std::string>();
  return text;
}

}  // namespace

void add_client_verbs(CLI::App& app, Action& action) {
  // Each verb's parse callback hands its work to main() as the action to run.
  auto defer = [&action](std::function<void()> work) {
    return [&action, work] {
      action = [work] {
        work();
        return 0;
      };
    };
  };
  // define FILE.json
  {
    auto o = std::make_shared<ClientOptions>();
    auto file = std::make_shared<std::string>();
    CLI::App* cmd = client_verb(app, "define", "Define a VM from a JSON file", *o, false);
    cmd->add_option("file", *file, "The definition (JSON)")->required();
    cmd->callback(defer([o, file] {
      manager::ApiClient api = o->api();
      std::string text = read_file(*file);
      manager::HttpResponse r = api.request("POST", "/v1/vms", text);
      json body = json::parse(r.body, nullptr, false);
      if (r.status != 201) {
        std::string msg = body.is_object() && body.contains("error")
                              ? body["error"].value("message", "refused")
                              : "refused (" + std::to_string(r.status) + ")";
        throw Error("cannot define " + *file + ": " + msg);
      }
      std::printf("Domain '%s' defined from %s\n", body.value("name", "?").c_str(), file->c_str());
    }));
  }
  // undefine NAME
  {
    auto o = std::make_shared<ClientOptions>();
    client_verb(app, "undefine", "Remove a VM's definition", *o)->callback(defer([o] {
      o->api().call("DELETE", "/v1/vms/" + o->name);
      std::printf("Domain '%s' has been undefined\n", o->name.c_str());
    }));
  }
  // start NAME [--paused] [--console]
  {
    auto o = std::make_shared<ClientOptions>();
    auto paused = std::make_shared<bool>(false);
    auto console = std::make_shared<bool>(false);
    CLI::App* cmd = client_verb(app, "start", "Start a defined VM", *o);
    cmd->add_flag("--paused", *paused, "Leave its vCPUs stopped");
    cmd->add_flag("--console", *console, "Attach to its console from the first byte");
    cmd->callback(defer([o, paused, console] {
      manager::ApiClient api = o->api();
      // With --console, start paused and attach before the first instruction, so nothing is lost.
      api.call("POST", "/v1/vms/" + o->name + "/start", json{{"paused", *paused || *console}});
      std::printf("Domain '%s' started%s\n", o->name.c_str(), *paused ? " (paused)" : "");
      std::fflush(stdout);
      if (*console) {
        std::thread resume;
        if (!*paused) {
          resume = std::thread([&api, o] {
            // The console stream is being opened on the main thread; resuming a little later
            // loses nothing, as the daemon keeps the recent console history.
            api.call("POST", "/v1/vms/" + o->name + "/resume");
          });
        }
        try {
          attach_console(api, o->name);
        } catch (...) {
          if (resume.joinable()) resume.join();
          throw;
        }
        if (resume.joinable()) resume.join();
      }
    }));
  }
  // shutdown / reboot / destroy / suspend / resume NAME
  struct Simple {
    const char* verb;
    const char* help;
    const char* done;
  };
  for (Simple s : {Simple{"shutdown", "Press the VM's ACPI power button", "is being shutdown"},
                   Simple{"reboot", "Reset the VM", "is being rebooted"},
                   Simple{"destroy", "Stop the VM now (kill its VMM)", "destroyed"},
                   Simple{"suspend", "Pause the VM's vCPUs", "suspended"},
                   Simple{"resume", "Let a paused VM run again", "resumed"}}) {
    auto o = std::make_shared<ClientOptions>();
    client_verb(app, s.verb, s.help, *o)->callback(defer([o, s] {
      o->api().call("POST", "/v1/vms/" + o->name + "/" + s.verb);
      std::printf("Domain '%s' %s\n", o->name.c_str(), s.done);
    }));
  }
  // list [--all] [--json]
  {
    auto o = std::make_shared<ClientOptions>();
    auto all = std::make_shared<bool>(false);
    auto as_json = std::make_shared<bool>(false);
    CLI::App* cmd = client_verb(app, "list", "List VMs (running or paused; --all for every one)",
                                *o, false);
    cmd->add_flag("--all", *all, "Include shut off VMs");
    cmd->add_flag("--json", *as_json, "Print JSON");
    cmd->callback(defer([o, all, as_json] {
      json vms = o->api().call("GET", "/v1/vms");
      if (*as_json) {
        json out = json::array();
        for (const json& vm : vms) {
          if (*all || vm.value("state", "") != "shut off") out.push_back(vm);
        }
        std::printf("%s\n", out.dump(2).c_str());
      } else {
        print_list(vms, *all);
      }
    }));
  }
  // info NAME [--json]
  {
    auto o = std::make_shared<ClientOptions>();
    auto as_json = std::make_shared<bool>(false);
    CLI::App* cmd = client_verb(app, "info", "Show a VM's state and definition", *o);
    cmd->add_flag("--json", *as_json, "Print JSON");
    cmd->callback(defer([o, as_json] {
      json vm = o->api().call("GET", "/v1/vms/" + o->name);
      if (*as_json) {
        std::printf("%s\n", vm.dump(2).c_str());
      } else {
        print_info(vm);
      }
    }));
  }
  // console NAME
  {
    auto o = std::make_shared<ClientOptions>();
    client_verb(app, "console", "Attach to a VM's serial console (Ctrl-] detaches)", *o)
        ->callback(defer([o] {
          manager::ApiClient api = o->api();
          attach_console(api, o->name);
        }));
  }
  // events [--json]
  {
    auto o = std::make_shared<ClientOptions>();
    auto as_json = std::make_shared<bool>(false);
    CLI::App* cmd = client_verb(app, "events", "Print lifecycle events until interrupted", *o, false);
    cmd->add_flag("--json", *as_json, "Print one JSON object per line");
    cmd->callback(defer([o, as_json] {
      manager::ApiClient api = o->api();
      std::string pending;
      api.stream("/v1/events", [&](std::string_view bytes) {
        pending.append(bytes);
        size_t nl;
        while ((nl = pending.find('\n')) != std::string::npos) {
          std::string line = pending.substr(0, nl);
          pending.erase(0, nl + 1);
          if (*as_json) {
            std::printf("%s\n", line.c_str());
          } else {
            json e = json::parse(line, nullptr, false);
            if (e.is_object()) std::printf("%s\n", describe_event(e).c_str());
          }
          std::fflush(stdout);
        }
        return true;
      });
    }));
  }
}

}  // namespace keel::cli
