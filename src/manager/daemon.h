// `keel daemon`: the store, the VM table (with its supervisor thread) and the HTTP API, put
// together. Stopping the daemon leaves the VMs running; the next daemon adopts them.
#pragma once

#include <memory>
#include <string>

#include "base/fd.h"
#include "manager/api_server.h"
#include "manager/domains.h"
#include "manager/store.h"

namespace keel::manager {

struct DaemonOptions {
  std::string state_dir = "/var/lib/keel";
  std::string socket_path = "/run/keel/keel.sock";
  std::string vmm_binary;  // empty: this executable (/proc/self/exe)
  std::string group = "keel";  // members may use the API (the socket is root:GROUP 0660)
  bool cgroups = true;         // one cgroup v2 per VM where the host has cgroup v2
  std::string sandbox = "on";  // "off": VMMs run with `keel run --sandbox off`
  std::string pidfile;         // written once the API serves, removed at exit ("" = none)
  ApiOptions api;              // limits and deadlines (tests shorten them)
  DomainsOptions domains;      // state_dir, vmm_binary and cgroup_parent are filled in
};

class Daemon {
 public:
  // Locks the state directory (one daemon per store), opens the store, adopts the VMs that were
  // running, binds the API socket, starts the autostart VMs (once per host boot), writes the
  // pidfile and tells systemd it is ready. Throws Error naming what failed.
  explicit Daemon(DaemonOptions options);
  ~Daemon();

  void serve();  // until stop()
  void stop();   // thread-safe

 private:
  DaemonOptions options_;
  UniqueFd lock_;
  std::unique_ptr<Store> store_;
  std::unique_ptr<Domains> domains_;
  std::unique_ptr<ApiServer> api_;
};

}  // namespace keel::manager
