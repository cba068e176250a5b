// keel_bench [--runs N] [--filter TEXT] [--list]: runs every registered row (bench.h) N times
// (default 7, keel and baseline alternating) and prints row, keel, baseline, ratio (medians).
#include <CLI/CLI.hpp>
#include <algorithm>
#include <cstdio>
#include <exception>

#include "bench.h"
#include "engine/kvm/kvm_probe.h"

namespace keel::bench {

std::vector<Row>& rows() {
  static std::vector<Row> registered;
  return registered;
}

std::optional<std::string> kvm_unavailable() {
  KvmProbeResult probe = probe_kvm();
  if (!probe.can_run_guests()) return probe.reason();
  return std::nullopt;
}

double median(std::vector<double> values) {
  if (values.empty()) return 0;
  std::sort(values.begin(), values.end());
  size_t n = values.size();
  return n % 2 ? values[n / 2] : (values[n / 2 - 1] + values[n / 2]) / 2;
}

}  // namespace keel::bench

int main(int argc, char** argv) {
  using namespace keel::bench;
  CLI::App app{"keel benchmarks: keel against a baseline in the same run"};
  int runs = 7;
  std::string filter;
  bool list = false;
  app.add_option("--runs", runs, "measurements per row (median reported)")->check(CLI::Range(1, 1000));
  app.add_option("--filter", filter, "only rows whose name contains this text");
  app.add_flag("--list", list, "list the rows and exit");
  CLI11_PARSE(app, argc, argv);

  if (list) {
    for (const auto& row : rows())
      std::printf("%s (%s; baseline: %s)\n", row.name.c_str(), row.unit.c_str(), row.baseline.c_str());
    return 0;
  }

  std::printf("%-32s %12s %12s %8s  %-12s %s\n", "row", "keel", "baseline", "ratio", "unit",
              "baseline is");
  int failures = 0;
  for (const auto& row : rows()) {
    if (!filter.empty() && row.name.find(filter) == std::string::npos) continue;
    if (auto why = row.unavailable()) {
      std::printf("%-32s skipped: %s\n", row.name.c_str(), why->c_str());
      continue;
    }
    try {
      std::vector<double> keel_values, baseline_values;
      for (int i = 0; i < runs; ++i) {
        Sample s = row.sample();
        keel_values.push_back(s.keel);
        baseline_values.push_back(s.baseline);
      }
      double k = median(keel_values), b = median(baseline_values);
      std::printf("%-32s %12.3f %12.3f %8.3f  %-12s %s\n", row.name.c_str(), k, b,
                  b != 0 ? k / b : 0.0, row.unit.c_str(), row.baseline.c_str());
    } catch (const std::exception& e) {
      std::printf("%-32s failed: %s\n", row.name.c_str(), e.what());
      ++failures;
    }
    std::fflush(stdout);
  }
  return failures ? 1 : 0;
}
