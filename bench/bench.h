// keel_bench: a table of keel against a baseline measured in the same run, as ratios.
//
// A row is registered from any bench/*.cc file with KEEL_BENCH_ROW; the runner (main.cc) runs
// each row's sample function N times and prints the medians and keel/baseline.
#pragma once

#include <functional>
#include <optional>
#include <string>
#include <vector>

namespace keel::bench {

struct Sample {
  double keel = 0;
  double baseline = 0;
};

struct Row {
  std::string name;      // "pio exit round trip"
  std::string unit;      // "us/exit"; lower is better unless higher_is_better
  std::string baseline;  // what the baseline is: "raw ioctl(KVM_RUN) loop"
  // One measurement of both sides. Throws on failure.
  std::function<Sample()> sample;
  // Why the row cannot run on this host (then it is listed as skipped), or nullopt.
  std::function<std::optional<std::string>()> unavailable = [] { return std::nullopt; };
  bool higher_is_better = false;
};

// The registered rows, in registration order within a file.
std::vector<Row>& rows();

struct Registrar {
  explicit Registrar(Row row) { rows().push_back(std::move(row)); }
};

double median(std::vector<double> values);

// For Row::unavailable of rows that run guests on KVM: the probe's reason when this host's KVM
// cannot run them, else nullopt.
std::optional<std::string> kvm_unavailable();

}  // namespace keel::bench

#define KEEL_BENCH_CONCAT2(a, b) a##b
#define KEEL_BENCH_CONCAT(a, b) KEEL_BENCH_CONCAT2(a, b)
// KEEL_BENCH_ROW(Row{...}); at namespace scope in a bench/*.cc file.
#define KEEL_BENCH_ROW(...) \
  static const ::keel::bench::Registrar KEEL_BENCH_CONCAT(keel_bench_row_, __LINE__)(__VA_ARGS__)
