#include "engine/kvm/kvm_probe.h"

#include <chrono>
#include <condition_variable>
#include <cstring>
#include <mutex>
#include <optional>
#include <sstream>
#include <thread>

#include "arch/x86/boot_state.h"
#include "base/error.h"
#include "engine/kvm/probe_guest_list.h"
#include "engine/kvm/kvm_engine.h"
#include "engine/kvm/kvm_system.h"

namespace keel {

namespace {

constexpr uint64_t kProbeLoadAddr = 0x100000;
constexpr uint64_t kProbeStackTop = 0x80000;
constexpr uint64_t kProbeMemory = 4 << 20;
constexpr uint16_t kProbeExitPort = 0x504;
constexpr auto kProbeDeadline = std::chrono::seconds(5);

// Port 0x504: the probe's 8-bit verdict; ends the run.
class ProbeExitDevice : public BusDevice {
 public:
  void read(uint64_t, std::span<uint8_t> data) override { std::memset(data.data(), 0, data.size()); }
  void write(uint64_t, std::span<const uint8_t> data) override {
    std::lock_guard lock(mutex_);
    if (!status_ && !data.empty()) status_ = data[0];
    if (vcpu_) vcpu_->kick();
  }
  void attach(Vcpu* vcpu) {
    std::lock_guard lock(mutex_);
    vcpu_ = vcpu;
  }
  std::optional<uint8_t> status() {
    std::lock_guard lock(mutex_);
    return status_;
  }

 private:
  std::mutex mutex_;
  Vcpu* vcpu_ = nullptr;
  std::optional<uint8_t> status_;
};

// Runs one probe guest in its own VM; `ok` iff it reports status 0.
KvmProbeCheck run_probe(const ProbeGuest& guest) {
  KvmProbeCheck check{guest.name, guest.description, false, ""};
  try {
    GuestMemory memory(kProbeMemory);
    IoBus pio("pio"), mmio("mmio");
    auto exit_device = std::make_shared<ProbeExitDevice>();
    pio.add(kProbeExitPort, 1, exit_device);
    KvmEngine engine({memory, pio, mmio}, {.vcpus = 1});
    auto vcpu = engine.create_vcpu(0);
    memory.write(kProbeLoadAddr, guest.code.data(), guest.code.size());
    vcpu->set_state(guest.protected_mode
                        ? x86::setup_protected_mode(memory, kProbeLoadAddr)
                        : x86::setup_long_mode(memory, {.rip = kProbeLoadAddr, .rsp = kProbeStackTop}));
    exit_device->attach(vcpu.get());

    std::mutex mutex;
    std::condition_variable done_cv;
    bool done = false;
    std::optional<VcpuExit> exit;
    std::string error;
    std::thread thread([&] {
      std::optional<VcpuExit> e;
      std::string err;
      try {
        e = vcpu->run();
      } catch (const std::exception& ex) {
        err = ex.what();
      }
      std::lock_guard lock(mutex);
      exit = e;
      error = err;
      done = true;
      done_cv.notify_all();
    });
    bool finished;
    {
      std::unique_lock lock(mutex);
      finished = done_cv.wait_for(lock, kProbeDeadline, [&] { return done; });
    }
    if (!finished) vcpu->kick();
    thread.join();
    exit_device->attach(nullptr);

    auto status = exit_device->status();
    if (status && *status == 0) {
      check.ok = true;
      check.detail = "ok";
    } else if (status) {
      check.detail = "the probe guest reported failure " + std::to_string(*status);
    } else if (!error.empty()) {
      check.detail = error;
    } else if (!finished) {
      check.detail = "no answer within " + std::to_string(kProbeDeadline.count()) + " s";
    } else {
      check.detail = std::string("the guest stopped early: ") + to_string(*exit);
    }
  } catch (const std::exception& e) {
    check.detail = std::string("could not run the probe: ") + e.what();
  }
  return check;
}

}  // namespace

bool KvmProbeResult::can_run_guests() const {
  if (!device_ok || api_version != kKvmApiVersion || capabilities.empty()) return false;
  for (const auto& c : capabilities)
    if (!c.present) return false;
  return true;
}

bool KvmProbeResult::can_run_stock_kernel() const {
  if (!can_run_guests() || checks.empty()) return false;
  for (const auto& c : checks)
    if (!c.ok) return false;
  return true;
}

const KvmProbeCheck* KvmProbeResult::check(std::string_view name) const {
  for (const auto& c : checks)
    if (c.name == name) return &c;
  return nullptr;
}

std::string KvmProbeResult::reason() const {
  if (!device_ok) return device_error;
  if (api_version != kKvmApiVersion)
    return "KVM API version " + std::to_string(api_version) + ", keel needs " +
           std::to_string(kKvmApiVersion);
  for (const auto& c : capabilities)
    if (!c.present) return "KVM lacks " + c.name;
  if (checks.empty()) return "the probe guests did not run";
  std::string failing;
  const KvmProbeCheck* first = nullptr;
  for (const auto& c : checks) {
    if (c.ok) continue;
    if (!first) first = &c;
    failing += (failing.empty() ? "" : ", ") + c.description;
  }
  if (!first) return "KVM ran every probe guest (" + std::to_string(checks.size()) + " checks)";
  return "KVM cannot run a stock kernel on this host: " + failing + " fail (" + first->name +
         ": " + first->detail + ")";
}

std::string KvmProbeResult::verdict() const {
  if (checks.empty() || !can_run_guests()) return reason();
  std::string failing;
  for (const auto& c : checks)
    if (!c.ok) failing += (failing.empty() ? "" : ", ") + c.description;
  if (failing.empty()) return reason();
  return "KVM cannot run a stock kernel on this host (" + failing + " fail)";
}

KvmProbeResult probe_kvm() {
  KvmProbeResult result;
  result.device = kKvmDevice;
  std::optional<KvmSystem> kvm;
  try {
    kvm.emplace(KvmSystem::open(result.device));
    result.device_ok = true;
  } catch (const Error& e) {
    result.device_error = e.what();
    return result;
  }
  result.api_version = kvm->api_version();
  for (const auto& cap : required_kvm_capabilities())
    result.capabilities.push_back({cap.name, kvm->check_extension(cap.id) > 0});
  kvm.reset();
  if (!result.can_run_guests()) return result;
  // Each probe runs in its own VM; running them side by side keeps `--accel auto` quick.
  auto guests = probe_guests();
  result.checks.resize(guests.size());
  std::vector<std::thread> threads;
  for (size_t i = 0; i < guests.size(); ++i)
    threads.emplace_back([&, i] { result.checks[i] = run_probe(guests[i]); });
  for (auto& t : threads) t.join();
  return result;
}

std::string to_text(const KvmProbeResult& r) {
  std::ostringstream out;
  out << r.device << ": " << (r.device_ok ? "accessible" : r.device_error) << "\n";
  if (r.device_ok) {
    out << "KVM API version: " << r.api_version << " (keel needs " << kKvmApiVersion << ")\n";
    out << "capabilities:\n";
    for (const auto& c : r.capabilities)
      out << "  " << (c.present ? "present  " : "MISSING  ") << c.name << "\n";
  }
  if (!r.checks.empty()) {
    out << "probe guests:\n";
    for (const auto& c : r.checks) {
      out << "  " << (c.ok ? "ok    " : "FAIL  ") << c.name << " (" << c.description << ")";
      if (!c.ok) out << ": " << c.detail;
      out << "\n";
    }
  }
  out << "KVM can run keel's test guests: " << (r.can_run_guests() ? "yes" : "no") << "\n";
  out << "KVM can run a stock kernel: " << (r.can_run_stock_kernel() ? "yes" : "no") << " -- "
      << r.reason() << "\n";
  return out.str();
}

nlohmann::json to_json(const KvmProbeResult& r) {
  nlohmann::json j;
  j["device"] = r.device;
  j["accessible"] = r.device_ok;
  if (!r.device_ok) j["error"] = r.device_error;
  j["api_version"] = r.api_version;
  j["capabilities"] = nlohmann::json::object();
  for (const auto& c : r.capabilities) j["capabilities"][c.name] = c.present;
  j["checks"] = nlohmann::json::array();
  for (const auto& c : r.checks)
    j["checks"].push_back(
        {{"name", c.name}, {"description", c.description}, {"ok", c.ok}, {"detail", c.detail}});
  j["can_run_guests"] = r.can_run_guests();
  j["can_run_stock_kernel"] = r.can_run_stock_kernel();
  j["reason"] = r.reason();
  return j;
}

}  // namespace keel
