// keel probe [--json]: what this host's KVM can do (engine/kvm/kvm_probe.h).
#include <CLI/CLI.hpp>

#include <cstdio>
#include <memory>

#include "cli/verbs.h"
#include "engine/kvm/kvm_probe.h"

namespace keel::cli {

void add_probe_verb(CLI::App& app, Action& action) {
  auto json = std::make_shared<bool>(false);
  CLI::App* sub = app.add_subcommand(
      "probe", "Report /dev/kvm access, API version, capabilities, and whether KVM can run a "
               "stock Linux kernel on this host (exit status 1 when it cannot, as kvm-ok)");
  sub->add_flag("--json", *json, "Print the result as JSON");
  sub->callback([json, &action] {
    action = [json] {
      KvmProbeResult result = probe_kvm();
      if (*json) std::printf("%s\n", to_json(result).dump(2).c_str());
      else std::printf("%s", to_text(result).c_str());
      return result.can_run_stock_kernel() ? 0 : 1;
    };
  });
}

}  // namespace keel::cli
