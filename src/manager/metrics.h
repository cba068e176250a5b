// The daemon's metrics (docs/architecture.md, "Metrics"): its own API request counts and
// latencies, the console input it relayed per VM, and, gathered on demand, every running VM's
// statistics (the VMM's query-stats over its control socket). Served as JSON per VM
// (GET /v1/vms/NAME/stats, `keel stats`) and as Prometheus text (GET /metrics).
#pragma once

#include <array>
#include <cstdint>
#include <map>
#include <mutex>
#include <string>
#include <tuple>

#include <nlohmann/json.hpp>

namespace keel::manager {

class Domains;

class Metrics {
 public:
  // Thread-safe: one API request answered (`route` is its pattern, or "(none)"; a method HTTP
  // does not define counts as "other").
  void observe_request(const std::string& method, const std::string& route, int status,
                       double seconds);
  // Thread-safe: bytes typed into a VM's console through the API.
  void add_console_input(const std::string& vm, uint64_t bytes);

  // One VM: state, definition figures, and what its VMM counted (when it runs). Throws
  // NotFoundError for an unknown VM.
  nlohmann::json vm_stats(Domains& domains, const std::string& name) const;
  // Every VM and the API in the Prometheus text exposition format (version 0.0.4).
  std::string prometheus(Domains& domains) const;

  static constexpr std::array<double, 10> kLatencyBuckets = {0.001, 0.0025, 0.005, 0.01, 0.025,
                                                             0.05,  0.1,    0.5,   1,    10};

 private:
  struct Latency {
    std::array<uint64_t, kLatencyBuckets.size()> buckets{};  // cumulative per upper bound
    uint64_t count = 0;
    double sum = 0;
  };
  mutable std::mutex mutex_;
  std::map<std::tuple<std::string, std::string, int>, uint64_t> requests_;  // method, route, code
  std::map<std::pair<std::string, std::string>, Latency> latency_;           // method, route
  std::map<std::string, uint64_t> console_input_;
};

}  // namespace keel::manager
