#include "manager/metrics.h"

#include <time.h>

#include <charconv>
#include <cmath>
#include <span>
#include <string_view>
#include <vector>

#include "base/log.h"
#include "manager/domains.h"
#include "manager/store.h"

namespace keel::manager {

using nlohmann::json;

namespace {

// Prometheus label values escape backslash, double quote and newline.
std::string escape(const std::string& value) {
  std::string out;
  for (char c : value) {
    if (c == '\\') out += "\\\\";
    else if (c == '"') out += "\\\"";
    else if (c == '\n') out += "\\n";
    else out += c;
  }
  return out;
}

std::string number(double v) {
  if (std::isinf(v)) return v > 0 ? "+Inf" : "-Inf";
  char buf[64];
  auto [end, ec] = std::to_chars(buf, buf + sizeof buf, v);  // shortest that reads back the same
  return std::string(buf, ec == std::errc() ? end : buf);
}

// Metric families in exposition order, each with its samples together (as the format asks).
class Exposition {
 public:
  using Labels = std::vector<std::pair<std::string, std::string>>;
  void add(const std::string& family, const char* type, const char* help,
           const std::string& sample, const Labels& labels, double value) {
    Family& f = families_[family];
    if (f.type.empty()) {
      order_.push_back(family);
      f.type = type;
      f.help = help;
    }
    std::string line = sample;
    if (!labels.empty()) {
      line += '{';
      for (size_t i = 0; i < labels.size(); ++i)
        line += (i ? "," : "") + labels[i].first + "=\"" + escape(labels[i].second) + "\"";
      line += '}';
    }
    f.lines.push_back(line + " " + number(value));
  }
  std::string text() const {
    std::string out;
    for (const auto& name : order_) {
      const Family& f = families_.at(name);
      out += "# HELP " + name + " " + f.help + "\n# TYPE " + name + " " + f.type + "\n";
      for (const auto& line : f.lines) out += line + "\n";
    }
    return out;
  }

 private:
  struct Family {
    std::string type, help;
    std::vector<std::string> lines;
  };
  std::vector<std::string> order_;
  std::map<std::string, Family> families_;
};

// A device's counters: the Prometheus family, its member in query-stats, its help.
struct DeviceCounter {
  const char* family;
  const char* key;
  const char* help;
};
constexpr DeviceCounter kDiskCounters[] = {
    {"keel_vm_disk_read_bytes_total", "read_bytes", "Bytes the guest read from the disk."},
    {"keel_vm_disk_write_bytes_total", "write_bytes", "Bytes the guest wrote to the disk."},
    {"keel_vm_disk_read_requests_total", "read_requests", "Read requests completed."},
    {"keel_vm_disk_write_requests_total", "write_requests", "Write requests completed."},
    {"keel_vm_disk_flush_requests_total", "flush_requests", "Flush requests completed."},
    {"keel_vm_disk_errors_total", "errors", "Requests that failed with an I/O error."},
};
constexpr DeviceCounter kNetCounters[] = {
    {"keel_vm_network_receive_bytes_total", "rx_bytes", "Bytes delivered to the guest."},
    {"keel_vm_network_receive_packets_total", "rx_packets", "Frames delivered to the guest."},
    {"keel_vm_network_transmit_bytes_total", "tx_bytes", "Bytes the guest sent."},
    {"keel_vm_network_transmit_packets_total", "tx_packets", "Frames the guest sent."},
};

void add_counters(Exposition& e, const Exposition::Labels& labels, const json& device,
                  std::span<const DeviceCounter> counters) {
  for (const DeviceCounter& c : counters)
    e.add(c.family, "counter", c.help, c.family, labels, device.value(c.key, 0.0));
}

double unix_now() {
  timespec ts{};
  ::clock_gettime(CLOCK_REALTIME, &ts);
  return static_cast<double>(ts.tv_sec) + static_cast<double>(ts.tv_nsec) * 1e-9;
}

}  // namespace

void Metrics::observe_request(const std::string& raw_method, const std::string& route,
                              int status, double seconds) {
  // The method is the client's word (refused requests are counted too): a label only for the
  // methods HTTP defines, so nobody can grow the series without bound.
  static constexpr std::string_view kMethods[] = {"GET",     "HEAD",    "POST",  "PUT",
                                                  "DELETE",  "CONNECT", "OPTIONS", "TRACE",
                                                  "PATCH"};
  std::string method = "other";
  for (std::string_view m : kMethods)
    if (raw_method == m) method = m;
  std::lock_guard lock(mutex_);
  ++requests_[{method, route, status}];
  Latency& l = latency_[{method, route}];
  ++l.count;
  l.sum += seconds;
  for (size_t i = 0; i < kLatencyBuckets.size(); ++i)
    if (seconds <= kLatencyBuckets[i]) ++l.buckets[i];
}

void Metrics::add_console_input(const std::string& vm, uint64_t bytes) {
  std::lock_guard lock(mutex_);
  console_input_[vm] += bytes;
}

json Metrics::vm_stats(Domains& domains, const std::string& name) const {
  json info = domains.info(name);
  const json& def = info.value("definition", json::object());
  json out{{"name", name},
           {"state", info.value("state", "")},
           {"reason", info.value("reason", "")},
           {"vcpus", def.value("vcpus", 0)},
           {"memory_mib", def.value("memory_mib", 0)},
           {"accel", def.value("accel", "auto")},
           {"time", unix_now()}};
  if (info.value("state", "") != kStateShutOff) {
    try {
      json stats = domains.query_vmm(name, "query-stats");
      if (stats.is_object()) {
        for (const char* key : {"engine", "uptime_seconds"})
          if (stats.contains(key)) out[key] = stats[key];
        out["cpu"] = stats.value("vcpus", json::array());
        out["disks"] = stats.value("disks", json::array());
        out["nets"] = stats.value("nets", json::array());
      }
    } catch (const std::exception& e) {
      // A VMM that went away between the two looks, or one that does not answer.
      out["stats_error"] = e.what();
    }
  }
  uint64_t input = 0;
  {
    std::lock_guard lock(mutex_);
    if (auto it = console_input_.find(name); it != console_input_.end()) input = it->second;
  }
  out["console"] = json{{"output_bytes", domains.console(name, true)->end()}, {"input_bytes", input}};
  return out;
}

std::string Metrics::prometheus(Domains& domains) const {
  Exposition e;
  for (const json& vm : domains.list()) {
    std::string name = vm.value("name", "");
    json s;
    try {
      s = vm_stats(domains, name);
    } catch (const std::exception&) {
      continue;  // undefined meanwhile
    }
    std::string state = s.value("state", "");
    for (const char* each : {"running", "paused", "shut off"})
      e.add("keel_vm_state", "gauge", "1 for the VM's state, 0 for the others.", "keel_vm_state",
            {{"vm", name}, {"state", each}}, state == each ? 1 : 0);
    e.add("keel_vm_vcpus", "gauge", "vCPUs in the VM's definition.", "keel_vm_vcpus",
          {{"vm", name}}, s.value("vcpus", 0));
    e.add("keel_vm_memory_bytes", "gauge", "Guest RAM in the VM's definition.",
          "keel_vm_memory_bytes", {{"vm", name}}, s.value("memory_mib", 0) * 1048576.0);
    if (s.contains("uptime_seconds"))
      e.add("keel_vm_uptime_seconds", "gauge", "Seconds since the VM's VMM built it.",
            "keel_vm_uptime_seconds", {{"vm", name}, {"engine", s.value("engine", "")}},
            s["uptime_seconds"].get<double>());
    for (const json& cpu : s.value("cpu", json::array())) {
      std::string vcpu = std::to_string(cpu.value("index", 0));
      e.add("keel_vm_vcpu_seconds_total", "counter", "CPU time of the vCPU's host thread.",
            "keel_vm_vcpu_seconds_total", {{"vm", name}, {"vcpu", vcpu}},
            cpu.value("cpu_seconds", 0.0));
      if (cpu.contains("exits"))
        for (const auto& [reason, count] : cpu["exits"].items())
          e.add("keel_vm_exits_total", "counter", "vCPU exits to the VMM by reason (kvm).",
                "keel_vm_exits_total", {{"vm", name}, {"vcpu", vcpu}, {"reason", reason}},
                count.get<double>());
      if (cpu.contains("instructions"))
        e.add("keel_vm_instructions_total", "counter",
              "Guest instructions retired (emu, where they are counted).",
              "keel_vm_instructions_total", {{"vm", name}, {"vcpu", vcpu}},
              cpu["instructions"].get<double>());
    }
    for (const json& disk : s.value("disks", json::array()))
      add_counters(e, {{"vm", name}, {"disk", disk.value("name", "")}}, disk, kDiskCounters);
    for (const json& net : s.value("nets", json::array()))
      add_counters(e, {{"vm", name}, {"interface", net.value("name", "")}}, net, kNetCounters);
    const json& console = s["console"];
    e.add("keel_vm_console_output_bytes_total", "counter",
          "Bytes the guest wrote to its serial console.", "keel_vm_console_output_bytes_total",
          {{"vm", name}}, console.value("output_bytes", 0.0));
    e.add("keel_vm_console_input_bytes_total", "counter",
          "Bytes typed into the guest's console through the API.",
          "keel_vm_console_input_bytes_total", {{"vm", name}}, console.value("input_bytes", 0.0));
  }
  std::lock_guard lock(mutex_);
  for (const auto& [key, count] : requests_) {
    const auto& [method, route, code] = key;
    e.add("keel_api_requests_total", "counter", "API requests answered.",
          "keel_api_requests_total",
          {{"method", method}, {"route", route}, {"code", std::to_string(code)}},
          static_cast<double>(count));
  }
  for (const auto& [key, l] : latency_) {
    const auto& [method, route] = key;
    const char* help = "Time from a request's complete head to its answer.";
    for (size_t i = 0; i < kLatencyBuckets.size(); ++i)
      e.add("keel_api_request_duration_seconds", "histogram", help,
            "keel_api_request_duration_seconds_bucket",
            {{"method", method}, {"route", route}, {"le", number(kLatencyBuckets[i])}},
            static_cast<double>(l.buckets[i]));
    e.add("keel_api_request_duration_seconds", "histogram", help,
          "keel_api_request_duration_seconds_bucket",
          {{"method", method}, {"route", route}, {"le", "+Inf"}}, static_cast<double>(l.count));
    e.add("keel_api_request_duration_seconds", "histogram", help,
          "keel_api_request_duration_seconds_sum", {{"method", method}, {"route", route}}, l.sum);
    e.add("keel_api_request_duration_seconds", "histogram", help,
          "keel_api_request_duration_seconds_count", {{"method", method}, {"route", route}},
          static_cast<double>(l.count));
  }
  return e.text();
}

}  // namespace keel::manager
