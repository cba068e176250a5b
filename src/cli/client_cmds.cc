// The virsh-like verbs. Each is a client of the daemon's HTTP API only (manager/api_client.h).
#include <poll.h>
#include <sys/wait.h>
#include <termios.h>
#include <unistd.h>

#include <atomic>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <mutex>
#include <optional>
#include <sstream>
#include <thread>

#include <nlohmann/json.hpp>

#include "base/error.h"
#include "base/version.h"
#include <CLI/CLI.hpp>

#include "cli/verbs.h"
#include "manager/api_client.h"
#include "manager/vm_definition.h"

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
  cmd->add_option("--socket", options.socket, "The daemon's API socket")
      ->capture_default_str()
      ->type_name("PATH");
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

// Attaches the terminal to the VM's console until Ctrl-] (or end of input), or until the VM
// stops, which ends the stream (then a line says so). The daemon refuses a VM that is not running.
void attach_console(manager::ApiClient& api, const std::string& name) {
  std::string path = "/v1/vms/" + name + "/console";
  api.call("GET", "/v1/vms/" + name);  // fail early, with the daemon's message, if it is unknown
  std::optional<RawTerminal> raw;
  raw.emplace();
  std::atomic<bool> stream_ended{false};
  std::atomic<bool> detach{false};
  std::exception_ptr output_error;
  // Input goes to the guest only once the output stream is open: input that ends the guest
  // (piped, all at once) must not stop the VM before the stream could attach to it.
  std::mutex open_mutex;
  std::condition_variable open_changed;
  bool opened = false;
  auto set_opened = [&] {
    std::lock_guard lock(open_mutex);
    opened = true;
    open_changed.notify_all();
  };
  std::thread output([&] {
    try {
      api.stream(path, [&](std::string_view bytes) {
        write_stdout(bytes);
        return !detach;
      }, [&] { return detach.load(); }, [&] {
        // Said once the stream is open: the output from here on reaches this terminal.
        std::fprintf(stderr, "Connected to domain '%s'\nEscape character is ^] (Ctrl + ])\n",
                     name.c_str());
        set_opened();
      });
      stream_ended = !detach;
    } catch (...) {
      output_error = std::current_exception();
    }
    detach = true;
    set_opened();
  });
  {
    std::unique_lock lock(open_mutex);
    open_changed.wait(lock, [&] { return opened; });
  }
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
  raw.reset();
  std::fprintf(stderr, "\n");
  if (output_error) std::rethrow_exception(output_error);
  if (stream_ended) {
    // The daemon ended the stream: the VM stopped. Say how it is now.
    std::string why = "stopped";
    try {
      json vm = api.call("GET", "/v1/vms/" + name);
      std::string state = vm.value("state", "?"), reason = vm.value("reason", "");
      why = "is " + state + (reason.empty() ? "" : " (" + reason + ")");
    } catch (const std::exception&) {
      why = "is gone";
    }
    std::fprintf(stderr, "Domain '%s' %s: console closed\n", name.c_str(), why.c_str());
  }
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
  row("Autostart:", def.value("autostart", false) ? "enable" : "disable");  // as virsh dominfo
  row("On crash:", def.value("on_crash", "destroy"));
  if (vm.contains("control_socket")) row("Control socket:", vm["control_socket"].get<std::string>());
  row("Log:", vm.value("log", "-"));
}

// A definition file as the daemon should see it: its relative paths (kernel, initrd, test_guest,
// disks, cloud-init files) made absolute against the file's own directory, so examples work from anywhere.
std::string resolve_paths(const std::string& text, const std::string& file) {
  json doc = json::parse(text, nullptr, false);
  if (!doc.is_object()) return text;  // the daemon names what is wrong with it
  std::filesystem::path base = std::filesystem::absolute(file).parent_path();
  auto resolve = [&](json& value) {
    if (value.is_string() && !value.get<std::string>().empty() && value.get<std::string>()[0] != '/')
      value = (base / value.get<std::string>()).lexically_normal().string();
  };
  for (const char* key : {"kernel", "initrd", "test_guest"})
    if (doc.contains(key)) resolve(doc[key]);
  if (doc.contains("disks") && doc["disks"].is_array())
    for (json& disk : doc["disks"])
      if (disk.is_object() && disk.contains("path")) resolve(disk["path"]);
  if (doc.contains("cloud_init") && doc["cloud_init"].is_object())
    for (const char* key : {"user_data", "meta_data", "network_config"})
      if (doc["cloud_init"].contains(key)) resolve(doc["cloud_init"][key]);
  return doc.dump();
}

// PUT /v1/vms/NAME with the definition: defines it, or replaces the definition of one that is
// shut off (as virsh define). 201 created, 200 replaced; throws ApiError otherwise.
bool put_definition(manager::ApiClient& api, const std::string& text, const std::string& what) {
  json doc = json::parse(text, nullptr, false);
  std::string name = doc.is_object() && doc.contains("name") && doc["name"].is_string()
                         ? doc["name"].get<std::string>()
                         : "";
  // A definition without a usable name goes to POST, which says what is wrong with it.
  manager::HttpResponse r = manager::valid_vm_name(name)
                                ? api.request("PUT", "/v1/vms/" + name, text)
                                : api.request("POST", "/v1/vms", text);
  json body = json::parse(r.body, nullptr, false);
  if (r.status != 200 && r.status != 201) {
    bool known = body.is_object() && body.contains("error") && body["error"].is_object();
    std::string msg = known ? body["error"].value("message", "refused")
                            : "refused (" + std::to_string(r.status) + ")";
    throw manager::ApiError(r.status, known ? body["error"].value("code", "") : "",
                            "cannot define " + what + ": " + msg);
  }
  return r.status == 201;
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

// The editor the user wants, on `path`; false if it failed (non-zero exit).
bool run_editor(const std::string& path) {
  const char* editor = std::getenv("VISUAL");
  if (!editor || !*editor) editor = std::getenv("EDITOR");
  if (!editor || !*editor) editor = "vi";
  // Through the shell, as git and virsh do: EDITOR may carry arguments ("code --wait").
  std::string command = std::string(editor) + " \"$1\"";
  pid_t pid = ::fork();
  if (pid < 0) throw_errno("fork");
  if (pid == 0) {
    ::execl("/bin/sh", "sh", "-c", command.c_str(), "sh", path.c_str(), static_cast<char*>(nullptr));
    ::_exit(127);
  }
  int status = 0;
  while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  return WIFEXITED(status) && WEXITSTATUS(status) == 0;
}

void edit_definition(const ClientOptions& o) {
  manager::ApiClient api = o.api();
  json vm = api.call("GET", "/v1/vms/" + o.name);
  std::string original = vm.value("definition", json::object()).dump(2) + "\n";
  char tmpl[] = "/tmp/keel-edit-XXXXXX.json";
  int fd = ::mkstemps(tmpl, 5);
  if (fd < 0) throw_errno("mkstemps");
  ::close(fd);
  std::string path = tmpl;
  struct Remove {
    std::string path;
    ~Remove() { ::unlink(path.c_str()); }
  } remove{path};
  std::ofstream(path, std::ios::trunc) << original;
  for (;;) {
    if (!run_editor(path)) throw Error("the editor failed; the definition of '" + o.name + "' is unchanged");
    std::string edited = read_file(path);
    if (edited == original) {
      std::printf("Domain '%s' definition not changed\n", o.name.c_str());
      return;
    }
    try {
      put_definition(api, resolve_paths(edited, path), "the edited definition");
      std::printf("Domain '%s' definition edited\n", o.name.c_str());
      return;
    } catch (const manager::ApiError& e) {
      // Refused (it names the field): edit again, if someone is there to do it.
      std::fprintf(stderr, "keel: error: %s\n", e.what());
      if (!::isatty(STDIN_FILENO)) throw Error("the definition of '" + o.name + "' is unchanged");
      std::fprintf(stderr, "Edit again? [y/N] ");
      std::string answer;
      if (!std::getline(std::cin, answer) || (answer != "y" && answer != "Y"))
        throw Error("the definition of '" + o.name + "' is unchanged");
    }
  }
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
    cmd->add_option("file", *file, "The definition (JSON)")->required()->type_name("PATH");
    cmd->callback(defer([o, file] {
      manager::ApiClient api = o->api();
      std::string text = resolve_paths(read_file(*file), *file);
      put_definition(api, text, *file);
      json doc = json::parse(text, nullptr, false);
      std::printf("Domain '%s' defined from %s\n", doc.value("name", "?").c_str(), file->c_str());
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
  // save NAME DIR, snapshot NAME DIR: the VM's state to DIR (virsh save; snapshot keeps it
  // running). Paths are made absolute here: the daemon does not share our directory.
  for (bool keep_running : {false, true}) {
    auto o = std::make_shared<ClientOptions>();
    auto dir = std::make_shared<std::string>();
    CLI::App* cmd = client_verb(app, keep_running ? "snapshot" : "save",
                                keep_running ? "Save a running VM's state to a directory; it goes on running"
                                             : "Save a VM's state to a directory and stop it (restore continues it)",
                                *o);
    cmd->add_option("dir", *dir, "The directory (created if missing; an older save there is replaced)")
        ->required()
        ->type_name("DIR");
    cmd->callback(defer([o, dir, keep_running] {
      std::string path = std::filesystem::absolute(*dir).lexically_normal().string();
      o->api().call("POST", "/v1/vms/" + o->name + (keep_running ? "/snapshot" : "/save"), json{{"dir", path}});
      std::printf(keep_running ? "Domain '%s' snapshot saved to %s\n" : "Domain '%s' saved to %s\n",
                  o->name.c_str(), path.c_str());
    }));
  }
  // restore DIR [--name NEW] [--paused]
  {
    auto o = std::make_shared<ClientOptions>();
    auto dir = std::make_shared<std::string>();
    auto name = std::make_shared<std::string>();
    auto paused = std::make_shared<bool>(false);
    CLI::App* cmd = client_verb(app, "restore", "Continue a VM saved with save or snapshot", *o, false);
    cmd->add_option("dir", *dir, "The directory it was saved to")->required()->type_name("DIR");
    cmd->add_option("--name", *name, "Restore it as a new VM of this name (the saved one's name by default)");
    cmd->add_flag("--paused", *paused, "Leave its vCPUs stopped");
    cmd->callback(defer([o, dir, name, paused] {
      std::string path = std::filesystem::absolute(*dir).lexically_normal().string();
      json body{{"dir", path}, {"paused", *paused}};
      if (!name->empty()) body["name"] = *name;
      json vm = o->api().call("POST", "/v1/restore", body);
      std::printf("Domain '%s' restored from %s%s\n", vm.value("name", "?").c_str(), path.c_str(),
                  *paused ? " (paused)" : "");
    }));
  }
  // migrate NAME --to SOCKET [--downtime-limit MS]
  {
    auto o = std::make_shared<ClientOptions>();
    auto to = std::make_shared<std::string>();
    auto downtime = std::make_shared<uint64_t>(300);
    CLI::App* cmd = client_verb(app, "migrate", "Live-migrate a running VM to another keel daemon", *o);
    cmd->add_option("--to", *to, "The other daemon's API socket")->required()->type_name("SOCKET");
    cmd->add_option("--downtime-limit", *downtime, "The longest pause allowed at the switch-over, in ms")
        ->capture_default_str()
        ->check(CLI::Range(uint64_t{1}, uint64_t{3'600'000}));
    cmd->callback(defer([o, to, downtime] {
      std::string target = std::filesystem::absolute(*to).lexically_normal().string();
      o->api().call("POST", "/v1/vms/" + o->name + "/migrate",
                    json{{"to", target}, {"downtime_limit_ms", *downtime}});
      std::printf("Domain '%s' migrated to %s\n", o->name.c_str(), target.c_str());
    }));
  }
  // shutdown / reboot / destroy / suspend / resume NAME
  struct Simple {
    const char* verb;
    const char* help;
    const char* done;
  };
  for (Simple s : {Simple{"shutdown", "Press the VM's ACPI power button", "is being shutdown"},
                   Simple{"reboot",
                          "Reboot the VM: the guest is asked (ACPI power button) and booted again "
                          "once it has shut down",
                          "is being rebooted"},
                   Simple{"reset", "Reset the VM at once, without asking the guest", "was reset"},
                   Simple{"destroy",
                          "Stop the VM now (SIGTERM to its VMM, SIGKILL if it is still there 10 s "
                          "later)",
                          "destroyed"},
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
    auto names = std::make_shared<bool>(false);
    CLI::App* cmd = client_verb(app, "list", "List VMs (running or paused; --all for every one)",
                                *o, false);
    cmd->add_flag("--all", *all, "Include shut off VMs");
    cmd->add_flag("--json", *as_json, "Print JSON");
    cmd->add_flag("--name", *names, "Print only the names, one per line (as virsh list --name)");
    cmd->callback(defer([o, all, as_json, names] {
      json vms = o->api().call("GET", "/v1/vms");
      if (*names) {
        for (const json& vm : vms)
          if (*all || vm.value("state", "") != "shut off")
            std::printf("%s\n", vm.value("name", "?").c_str());
      } else if (*as_json) {
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
  // dumpdef NAME: the definition, as `keel define` takes it (virsh dumpxml)
  {
    auto o = std::make_shared<ClientOptions>();
    client_verb(app, "dumpdef", "Print a VM's definition (JSON, as keel define takes it)", *o)
        ->callback(defer([o] {
          json vm = o->api().call("GET", "/v1/vms/" + o->name);
          std::printf("%s\n", vm.value("definition", json::object()).dump(2).c_str());
        }));
  }
  // edit NAME: the definition in $VISUAL/$EDITOR, checked by the daemon when saved (virsh edit)
  {
    auto o = std::make_shared<ClientOptions>();
    client_verb(app, "edit",
                "Edit a VM's definition in $VISUAL or $EDITOR (vi); the daemon checks it when the "
                "editor exits, and the VM must be shut off for most changes",
                *o)
        ->callback(defer([o] { edit_definition(*o); }));
  }
  // autostart NAME [--disable]
  {
    auto o = std::make_shared<ClientOptions>();
    auto disable = std::make_shared<bool>(false);
    CLI::App* cmd = client_verb(app, "autostart",
                                "Start the VM whenever the daemon starts (once per host boot)", *o);
    cmd->add_flag("--disable", *disable, "Do not start it with the daemon");
    cmd->callback(defer([o, disable] {
      manager::ApiClient api = o->api();
      json def = api.call("GET", "/v1/vms/" + o->name).value("definition", json::object());
      def["autostart"] = !*disable;
      api.call("PUT", "/v1/vms/" + o->name, def);
      std::printf("Domain '%s' %s\n", o->name.c_str(),
                  *disable ? "unmarked as autostarted" : "marked as autostarted");
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
  // version: this keel's, and the daemon's when it answers (as virsh version)
  {
    auto o = std::make_shared<ClientOptions>();
    client_verb(app, "version", "Show keel's version and the daemon's", *o, false)
        ->callback(defer([o] {
          std::printf("keel %s\n", kVersion);
          std::fflush(stdout);
          json v = o->api().call("GET", "/v1/version");
          std::printf("daemon: keel %s (API %d) on %s\n", v.value("version", "?").c_str(),
                      v.value("api", 0), o->socket.c_str());
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
