// Live-migration rows: the default guest (512 MiB, booted to its shell) migrated between two
// processes on this host by keel and by QEMU on the same engine (emu/tcg here), over a Unix
// socket, each with its defaults (keel: 300 ms downtime budget; QEMU: its default bandwidth
// limit and downtime budget). The rows report the sources' own figures: QEMU's `query-migrate`
// once "completed", keel's log line as its source ends ("migrated to the target in N ms
// (downtime D ms)"); every sample checks that the guest answers a command on the target.
#include <regex>
#include <stdexcept>
#include <string>

#include <nlohmann/json.hpp>

#include "bench.h"
#include "control/control_client.h"
#include "guest_vm.h"

namespace keel::bench {
namespace {

using namespace std::chrono_literals;
using nlohmann::json;

const std::regex kReady("KEEL-GUEST-READY");
const std::regex kAnswer("m-42");
constexpr const char* kCommand = "echo m-$((6*7))\n";

struct Migrated {
  double total_s = 0;
  double downtime_s = 0;
};

Migrated migrate(bool qemu) {
  TempFile source_sock("migrate-source.sock"), target_sock("migrate-target.sock"), stream("migrate.sock");
  std::vector<std::string> source_args =
      qemu ? std::vector<std::string>{"-qmp", "unix:" + source_sock.path() + ",server=on,wait=off"}
           : std::vector<std::string>{"--sandbox", "off", "--control", source_sock.path()};
  Vm source(vm_command(qemu, source_args));
  source.wait_for(kReady, kBoot);

  std::string uri = "unix:" + stream.path();
  std::optional<Vm> target;
  if (qemu) {
    target.emplace(vm_command(true, {"-incoming", uri, "-qmp", "unix:" + target_sock.path() + ",server=on,wait=off"}));
    // QEMU listens for the stream before it serves QMP.
    control::ControlClient::connect(target_sock.path(), 60s);
  } else {
    target.emplace(std::vector<std::string>{KEEL_BINARY, "run", "--incoming", uri, "--sandbox", "off"});
    target->wait_for(std::regex("waiting for the incoming VM"), 60s);
  }

  control::ControlClient client = control::ControlClient::connect(source_sock.path(), 30s);
  client.execute("migrate", json{{"uri", uri}});
  Migrated m;
  if (qemu) {
    for (;;) {
      json done = client.execute("query-migrate");
      std::string status = done["status"];
      if (status == "failed") throw std::runtime_error("QEMU's migration failed: " + done.dump());
      if (status == "completed") {
        m = {done["total-time"].get<double>() / 1000, done["downtime"].get<double>() / 1000};
        break;
      }
      client.next_event(5ms);  // paces the polling
    }
    // The source was running, so QEMU runs the VM on the target once the stream is in.
    control::ControlClient t = control::ControlClient::connect(target_sock.path(), 30s);
    while (t.execute("query-status")["status"] != "running") t.next_event(5ms);
  } else {
    // keel's source ends once the target has the VM; its last words say how long it took.
    auto said = source.wait_for(std::regex(R"(migrated to the target in (\d+) ms \(downtime (\d+) ms\))"), 600s);
    m = {std::stod(said.groups[1]) / 1000, std::stod(said.groups[2]) / 1000};
  }
  target->type(kCommand);
  target->wait_for(kAnswer, 600s);
  return m;
}

KEEL_BENCH_ROW(Row{
    .name = "live migration total time, default guest 512 MiB",
    .unit = "s",
    .baseline = "QEMU migrate to -incoming over a Unix socket, same guest and engine",
    .sample = [] { return Sample{migrate(false).total_s, migrate(true).total_s}; },
    .unavailable = guest_unavailable,
});

KEEL_BENCH_ROW(Row{
    .name = "live migration downtime, default guest 512 MiB",
    .unit = "s",
    .baseline = "QEMU's downtime for the same migration",
    .sample = [] { return Sample{migrate(false).downtime_s, migrate(true).downtime_s}; },
    .unavailable = guest_unavailable,
});

}  // namespace
}  // namespace keel::bench
