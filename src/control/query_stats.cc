// query-stats: what a running VM has counted, for the daemon's metrics (docs/architecture.md,
// "Metrics"). Every figure is read on demand from counters that their one writing thread keeps
// (vCPU, device worker), so collecting costs the hot paths nothing; vCPU load is the vCPU
// threads' CPU time (their thread CPU clocks), which needs no counting at all.
#include <time.h>

#include <nlohmann/json.hpp>

#include "base/error.h"
#include "control/machine_target.h"
#include "devices/legacy/boot_progress.h"
#include "devices/virtio/virtio_blk.h"
#include "devices/virtio/virtio_net.h"
#include "devices/virtio/virtio_pci.h"
#include "devices/virtio/virtio_platform.h"
#include "engine/engine_factory.h"
#include "vm/machine.h"

namespace keel::control {

using nlohmann::json;

namespace {

// The CPU time of thread `tid` of this process: its thread CPU clock, as the kernel numbers them
// (MAKE_THREAD_CPUCLOCK(tid, CPUCLOCK_SCHED)); glibc offers it only for a pthread_t.
double thread_cpu_seconds(long tid) {
  if (tid <= 0) return 0;
  clockid_t clock = static_cast<clockid_t>((~static_cast<unsigned>(tid) << 3) | 4 | 2);
  timespec ts{};
  if (::clock_gettime(clock, &ts) != 0) return 0;
  return static_cast<double>(ts.tv_sec) + static_cast<double>(ts.tv_nsec) * 1e-9;
}

}  // namespace

json ControlTarget::query_stats() { throw Error("this VM keeps no statistics"); }

json MachineTarget::query_stats() {
  Machine& m = machine_;
  std::vector<long> tids = m.vcpu_thread_ids();
  json vcpus = json::array();
  for (uint32_t i = 0; i < m.vcpu_count(); ++i) {
    json vcpu{{"index", i}, {"cpu_seconds", thread_cpu_seconds(i < tids.size() ? tids[i] : 0)}};
    VcpuCounters counters = vcpu_counters(m.vcpu(i));
    if (!counters.exits.empty()) {
      json exits = json::object();
      for (const auto& [reason, count] : counters.exits) exits[reason] = count;
      vcpu["exits"] = exits;
    }
    if (counters.instructions) vcpu["instructions"] = *counters.instructions;
    vcpus.push_back(vcpu);
  }
  json disks = json::array(), nets = json::array();
  for (const auto& pci : m.pci().devices()) {
    VirtioDevice& device = pci->device();
    if (auto* blk = dynamic_cast<VirtioBlk*>(&device)) {
      const auto& c = blk->counters();
      disks.push_back(json{{"name", "vd" + std::string(1, static_cast<char>('a' + disks.size()))},
                           {"read_bytes", c.read_bytes.get()},
                           {"write_bytes", c.write_bytes.get()},
                           {"read_requests", c.reads.get()},
                           {"write_requests", c.writes.get()},
                           {"flush_requests", c.flushes.get()},
                           {"errors", c.errors.get()}});
    } else if (auto* net = dynamic_cast<VirtioNet*>(&device)) {
      const auto& c = net->counters();
      nets.push_back(json{{"name", "net" + std::to_string(nets.size())},
                          {"rx_bytes", c.rx_bytes.get()},
                          {"rx_packets", c.rx_packets.get()},
                          {"tx_bytes", c.tx_bytes.get()},
                          {"tx_packets", c.tx_packets.get()}});
    }
  }
  double uptime = static_cast<double>(BootProgress::now_ns() - m.created_ns()) * 1e-9;
  return json{{"engine", m.engine().name()}, {"uptime_seconds", uptime}, {"vcpus", vcpus},
              {"disks", disks}, {"nets", nets}};
}

}  // namespace keel::control
