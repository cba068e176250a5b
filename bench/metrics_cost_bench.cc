// "boot to init while scraped": what collecting metrics costs a boot. The default guest boots on
// `keel run --control` while a client asks its control socket for query-stats every 100 ms (what
// the daemon does for each GET /metrics or stats request; Prometheus scrapes every 15 s by
// default, the web console polls every 2 s), against the same boot that nobody asks. The VMM's
// counters are always kept, so this is their cost plus the collection's. Goal: under 1%.
#include <unistd.h>

#include <atomic>
#include <filesystem>
#include <regex>
#include <thread>

#include "bench.h"
#include "control/control_client.h"
#include "guest_vm.h"

namespace keel::bench {
namespace {

using namespace std::chrono_literals;

double seconds_to_init(bool scraped) {
  std::string socket = std::filesystem::temp_directory_path() /
                       ("keel-bench-stats-" + std::to_string(::getpid()) + ".sock");
  Vm vm(vm_command(false, {"--control", socket}, bench_cmdline(true)));
  std::atomic<bool> stop{false};
  std::atomic<int> scrapes{0};
  std::thread scraper;
  if (scraped) {
    scraper = std::thread([&] {
      try {
        auto client = control::ControlClient::connect(socket, 30s);
        while (!stop) {
          client.execute("query-stats");
          ++scrapes;
          std::this_thread::sleep_for(100ms);
        }
      } catch (const std::exception&) {
        // the VM went away: counted scrapes say whether it worked
      }
    });
  }
  vm.wait_for(std::regex("KEEL-GUEST-READY"), kBoot);
  double seconds = vm.elapsed();
  stop = true;
  if (scraper.joinable()) scraper.join();
  std::filesystem::remove(socket);
  if (scraped && scrapes == 0) throw std::runtime_error("metrics bench: no query-stats answered");
  return seconds;
}

KEEL_BENCH_ROW(Row{
    .name = "boot to init while scraped every 100 ms",
    .unit = "s",
    .baseline = "the same boot, not scraped",
    .sample = [] { return Sample{seconds_to_init(true), seconds_to_init(false)}; },
    .unavailable = guest_unavailable,
});

}  // namespace
}  // namespace keel::bench
