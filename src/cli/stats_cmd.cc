// keel stats NAME [--json] [--socket PATH]: what a VM has counted (as `virsh domstats`), from the
// daemon's GET /v1/vms/NAME/stats (manager/metrics.h); the same figures as GET /metrics.
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <string>

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include "cli/verbs.h"
#include "manager/api_client.h"

namespace keel::cli {

using nlohmann::json;

namespace {

struct StatsOptions {
  std::string socket;
  std::string name;
  bool json = false;
};

// One "key=value" line, as virsh domstats prints them.
void line(const std::string& key, const json& value) {
  std::string text = value.is_string() ? value.get<std::string>() : value.dump();
  std::printf("  %s=%s\n", key.c_str(), text.c_str());
}

void print_stats(const json& s) {
  std::printf("Domain: '%s'\n", s.value("name", "").c_str());
  line("state", s.value("state", ""));
  if (!s.value("reason", "").empty()) line("reason", s["reason"]);
  for (const char* key : {"engine", "vcpus", "memory_mib", "uptime_seconds"})
    if (s.contains(key)) line(key, s[key]);
  for (const json& cpu : s.value("cpu", json::array())) {
    std::string prefix = "vcpu." + std::to_string(cpu.value("index", 0)) + ".";
    line(prefix + "cpu_seconds", cpu.value("cpu_seconds", 0.0));
    if (cpu.contains("instructions")) line(prefix + "instructions", cpu["instructions"]);
    if (cpu.contains("exits"))
      for (const auto& [reason, count] : cpu["exits"].items())
        line(prefix + "exits." + reason, count);
  }
  for (const char* list : {"disks", "nets"})
    for (const json& device : s.value(list, json::array()))
      for (const auto& [key, value] : device.items())
        if (key != "name") line(device.value("name", "?") + "." + key, value);
  if (s.contains("console"))
    for (const auto& [key, value] : s["console"].items()) line("console." + key, value);
  if (s.contains("stats_error")) line("stats_error", s["stats_error"]);
}

}  // namespace

void add_stats_verb(CLI::App& app, Action& action) {
  auto o = std::make_shared<StatsOptions>();
  const char* env = std::getenv("KEEL_SOCKET");
  o->socket = env && *env ? env : "/run/keel/keel.sock";
  CLI::App* cmd = app.add_subcommand("stats", "Print what a VM has counted (vCPU time, I/O, ...)");
  cmd->add_option("name", o->name, "The VM")->required();
  cmd->add_option("--socket", o->socket, "The daemon's API socket")->capture_default_str();
  cmd->add_flag("--json", o->json, "Print JSON");
  cmd->callback([&action, o] {
    action = [o] {
      json s = manager::ApiClient(o->socket).call("GET", "/v1/vms/" + o->name + "/stats");
      if (o->json) std::printf("%s\n", s.dump(2).c_str());
      else print_stats(s);
      return 0;
    };
  });
}

}  // namespace keel::cli
