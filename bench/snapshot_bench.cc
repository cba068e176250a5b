// Snapshot rows: the default guest (512 MiB, booted to its shell) saved and restored by keel
// against QEMU on the same engine (emu/tcg here, kvm/kvm where KVM runs a stock kernel).
//   - save: keel's `snapshot-save` (VM paused, state + sparse RAM file) against QEMU's `stop` then
//     `migrate` to "exec:cat > FILE" (its way of saving a VM to a file), until it completes;
//   - restore to running: from process start until the guest answers a command typed at its
//     shell: `keel run --restore DIR` against `qemu -incoming "exec:cat FILE"` (typed once QEMU
//     reports running, since its console input before that is lost with the incoming serial state).
#include <filesystem>
#include <regex>
#include <stdexcept>
#include <string>
#include <unistd.h>

#include <nlohmann/json.hpp>

#include "bench.h"
#include "control/control_client.h"
#include "guest_vm.h"

namespace keel::bench {
namespace {

using Clock = std::chrono::steady_clock;
using namespace std::chrono_literals;
using nlohmann::json;

double seconds_since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

struct Saved {
  explicit Saved(bool qemu) : dir(qemu ? "qemu-saved-vm" : "keel-snapshot") {}
  TempFile dir;  // keel: a directory; QEMU: a file
  ~Saved() { std::filesystem::remove_all(dir.path()); }
};

const std::regex kReady("KEEL-GUEST-READY");
const std::regex kAnswer("r-42");
constexpr const char* kCommand = "echo r-$((6*7))\n";

// Boots, saves to `saved`, returns the save's seconds.
double save(bool qemu, Saved& saved) {
  TempFile sock("snapshot.sock");
  std::vector<std::string> extra =
      qemu ? std::vector<std::string>{"-qmp", "unix:" + sock.path() + ",server=on,wait=off"}
           : std::vector<std::string>{"--sandbox", "off", "--control", sock.path()};
  Vm vm(vm_command(qemu, extra));
  vm.wait_for(kReady, kBoot);
  control::ControlClient client = control::ControlClient::connect(sock.path(), 30s);
  auto start = Clock::now();
  if (!qemu) {
    client.execute("snapshot-save", json{{"path", saved.dir.path()}, {"resume", false}}, 600s);
    return seconds_since(start);
  }
  client.execute("stop");
  client.execute("migrate", json{{"uri", "exec:cat > " + saved.dir.path()}});
  for (;;) {
    std::string status = client.execute("query-migrate")["status"];
    if (status == "completed") return seconds_since(start);
    if (status == "failed") throw std::runtime_error("QEMU's migrate to a file failed");
    client.next_event(5ms);  // paces the polling
  }
}

double restore(bool qemu, Saved& saved) {
  TempFile sock("restore.sock");
  if (!qemu) {
    Vm vm({KEEL_BINARY, "run", "--restore", saved.dir.path(), "--sandbox", "off"});
    vm.type(kCommand);
    vm.wait_for(kAnswer, 600s);
    return vm.elapsed();
  }
  Vm vm(vm_command(true, {"-incoming", "exec:cat " + saved.dir.path(), "-qmp",
                          "unix:" + sock.path() + ",server=on,wait=off"}));
  control::ControlClient client = control::ControlClient::connect(sock.path(), 60s);
  // The incoming state may be in before the QMP connection (RESUME then went to nobody). The VM
  // was saved stopped, so QEMU ends the incoming migration paused: `cont` runs it, as keel's
  // restore runs the VM.
  for (;;) {
    std::string status = client.execute("query-status")["status"];
    if (status == "running") break;
    if (status == "paused" || status == "postmigrate") {
      client.execute("cont");
      continue;
    }
    client.next_event(5ms);
  }
  vm.type(kCommand);
  vm.wait_for(kAnswer, 600s);
  return vm.elapsed();
}

KEEL_BENCH_ROW(Row{
    .name = "snapshot save, default guest 512 MiB",
    .unit = "s",
    .baseline = "QEMU stop + migrate to a file, same guest and engine",
    .sample =
        [] {
          Saved k(false), q(true);
          return Sample{save(false, k), save(true, q)};
        },
    .unavailable = guest_unavailable,
});

KEEL_BENCH_ROW(Row{
    .name = "snapshot restore to a shell answer, default guest 512 MiB",
    .unit = "s",
    .baseline = "QEMU -incoming from that file, same guest and engine",
    .sample =
        [] {
          Saved k(false), q(true);
          save(false, k);
          save(true, q);
          return Sample{restore(false, k), restore(true, q)};
        },
    .unavailable = guest_unavailable,
});

}  // namespace
}  // namespace keel::bench
