#include "guest_harness.h"

#include <condition_variable>
#include <cstring>
#include <fstream>
#include <iterator>
#include <map>
#include <ostream>
#include <sstream>
#include <thread>

#include "arch/x86/boot_state.h"
#include "base/error.h"
#include "engine/engine_factory.h"
#include "engine/kvm/kvm_probe.h"

namespace keel::guest_test {

namespace {

uint64_t le_value(std::span<const uint8_t> data) {
  uint64_t v = 0;
  std::memcpy(&v, data.data(), std::min<size_t>(data.size(), 8));
  return v;
}

const KvmProbeResult& cached_probe() {
  static const KvmProbeResult result = probe_kvm();
  return result;
}

}  // namespace

std::ostream& operator<<(std::ostream& os, const IoAccess& a) {
  return os << (a.write ? "write" : "read") << " 0x" << std::hex << a.addr << std::dec << "/"
            << a.size << " = 0x" << std::hex << a.value << std::dec;
}

void TestPorts::read(uint64_t offset, std::span<uint8_t> data) {
  std::lock_guard lock(mutex_);
  for (size_t i = 0; i < data.size(); ++i) {
    uint64_t byte = offset + i;
    data[i] = byte < 4 ? static_cast<uint8_t>(input_ >> (8 * byte)) : 0;
  }
  log_.push_back({false, kPortReport + offset, static_cast<uint32_t>(data.size()), le_value(data)});
}

void TestPorts::write(uint64_t offset, std::span<const uint8_t> data) {
  uint64_t value = le_value(data);
  {
    std::lock_guard lock(mutex_);
    log_.push_back({true, kPortReport + offset, static_cast<uint32_t>(data.size()), value});
  }
  uint16_t port = static_cast<uint16_t>(kPortReport + offset);
  if (port == kPortExit && data.size() == 1) {
    control_.finish(static_cast<uint8_t>(value));
  } else if (port == kPortIrq && data.size() == 1) {
    irq_.set_irq(static_cast<uint32_t>(value), true);
    irq_.set_irq(static_cast<uint32_t>(value), false);
  } else if (port == kPortMsi && data.size() == 4) {
    uint32_t dest = static_cast<uint32_t>(value >> 8) & 0xFF;
    irq_.send_msi({0xFEE0'0000ull | (dest << 12), static_cast<uint32_t>(value & 0xFF)});
  }
}

void TestPorts::set_input(uint32_t value) {
  std::lock_guard lock(mutex_);
  input_ = value;
}

std::vector<IoAccess> TestPorts::log() const {
  std::lock_guard lock(mutex_);
  return log_;
}

std::vector<uint32_t> TestPorts::reports() const {
  std::lock_guard lock(mutex_);
  std::vector<uint32_t> out;
  for (const auto& a : log_)
    if (a.write && a.addr == kPortReport && a.size == 4) out.push_back(static_cast<uint32_t>(a.value));
  return out;
}

void TestMmio::read(uint64_t offset, std::span<uint8_t> data) {
  std::lock_guard lock(mutex_);
  for (size_t i = 0; i < data.size(); ++i)
    data[i] = offset + i < regs_.size() ? regs_[offset + i] : 0xFF;
  log_.push_back({false, kTestMmioBase + offset, static_cast<uint32_t>(data.size()), le_value(data)});
}

void TestMmio::write(uint64_t offset, std::span<const uint8_t> data) {
  std::lock_guard lock(mutex_);
  for (size_t i = 0; i < data.size(); ++i)
    if (offset + i < regs_.size()) regs_[offset + i] = data[i];
  log_.push_back({true, kTestMmioBase + offset, static_cast<uint32_t>(data.size()), le_value(data)});
}

std::vector<IoAccess> TestMmio::log() const {
  std::lock_guard lock(mutex_);
  return log_;
}

std::string GuestResult::summary() const {
  std::ostringstream os;
  os << "status " << (status ? std::to_string(*status) : "none")
     << (timed_out ? ", timed out" : "");
  if (stop)
    os << ", " << (*stop == StopReason::kPowerOff ? "power off" : "reset") << " requested ("
       << stop_detail << ")";
  os << "; reports:";
  for (auto r : reports) os << " 0x" << std::hex << r << std::dec;
  for (size_t i = 0; i < exits.size(); ++i) {
    os << "\n  vCPU " << i << ": ";
    if (exits[i]) os << to_string(*exits[i]);
    else os << "error: " << errors[i];
  }
  return os.str();
}

std::string GuestResult::first_error() const {
  for (const auto& e : errors)
    if (!e.empty()) return e;
  return {};
}

std::vector<uint8_t> load_guest_binary(const std::string& name) {
  std::string path = std::string(KEEL_TEST_GUEST_DIR) + "/" + name + ".bin";
  std::ifstream in(path, std::ios::binary);
  if (!in) throw Error("test guest not found: " + path);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

GuestHarness::GuestHarness(Accel accel, const std::string& guest, GuestOptions options)
    : options_(options) {
  if (options_.vcpus == 0 || options_.vcpus > kGuestMaxVcpus)
    throw Error("test guests run on 1 to " + std::to_string(kGuestMaxVcpus) + " vCPUs");
  auto code = load_guest_binary(guest);
  memory_ = std::make_unique<GuestMemory>(options_.memory);
  pio_ = std::make_unique<IoBus>("pio");
  mmio_ = std::make_unique<IoBus>("mmio");
  engine_ = create_engine(accel, {*memory_, *pio_, *mmio_},
                          {.vcpus = options_.vcpus, .emu_tier = options_.emu_tier});

  ports_ = std::make_shared<TestPorts>(static_cast<RunControl&>(*this), engine_->interrupts());
  test_mmio_ = std::make_shared<TestMmio>();
  pio_->add(kPortReport, kTestPortsSize, ports_);
  mmio_->add(kTestMmioBase, kTestMmioSize, test_mmio_);

  memory_->write(kGuestLoadAddr, code.data(), code.size());
  x86::write_boot_tables(*memory_);
  for (uint32_t i = 0; i < options_.vcpus; ++i) {
    auto vcpu = engine_->create_vcpu(i);
    x86::CpuState st = x86::boot_cpu_state({.rip = kGuestLoadAddr,
                                            .rsp = kGuestStackTop - i * kGuestStackSize,
                                            .rsi = options_.vcpus,
                                            .bsp = i == 0});
    st.gpr[x86::RDI] = i;
    vcpu->set_state(st);
    if (i > 0 && options_.start_aps) vcpu->make_runnable();
    vcpus_.push_back(std::move(vcpu));
  }
}

GuestHarness::~GuestHarness() = default;

void GuestHarness::finish(uint8_t status) {
  {
    std::lock_guard lock(mutex_);
    if (!status_) status_ = status;
  }
  stop_all();
}

void GuestHarness::request_stop(StopReason reason, std::string detail) {
  {
    std::lock_guard lock(mutex_);
    if (!stop_) {
      stop_ = reason;
      stop_detail_ = std::move(detail);
    }
  }
  stop_all();
}

void GuestHarness::stop_all() {
  for (auto& v : vcpus_) v->kick();
}

GuestResult GuestHarness::run() {
  size_t n = vcpus_.size();
  GuestResult result;
  result.exits.resize(n);
  result.errors.resize(n);

  std::mutex done_mutex;
  std::condition_variable done_cv;
  size_t done = 0;
  std::vector<std::thread> threads;
  for (size_t i = 0; i < n; ++i) {
    threads.emplace_back([&, i] {
      std::optional<VcpuExit> exit;
      std::string error;
      try {
        exit = vcpus_[i]->run();
      } catch (const std::exception& e) {
        error = e.what();
      }
      // A vCPU that stops by itself (error, shutdown, reset) ends the run for all; one halted
      // for good (HLT with interrupts off: emu's HANG) is done, as the Machine counts it.
      if (!exit || (*exit != VcpuExit::kStopped && *exit != VcpuExit::kHalted)) stop_all();
      std::lock_guard lock(done_mutex);
      result.exits[i] = exit;
      result.errors[i] = error;
      ++done;
      done_cv.notify_all();
    });
  }

  auto deadline = std::chrono::steady_clock::now() + options_.deadline;
  {
    std::unique_lock lock(done_mutex);
    if (!done_cv.wait_until(lock, deadline, [&] { return done == n; })) result.timed_out = true;
  }
  if (result.timed_out) stop_all();
  for (auto& t : threads) t.join();

  std::lock_guard lock(mutex_);
  result.status = status_;
  result.stop = stop_;
  result.stop_detail = stop_detail_;
  result.reports = ports_->reports();
  return result;
}

std::optional<std::string> engine_unavailable(Accel accel) {
  static std::mutex mutex;
  static std::map<Accel, std::optional<std::string>> cache;
  std::lock_guard lock(mutex);
  if (auto it = cache.find(accel); it != cache.end()) return it->second;
  std::optional<std::string> why;
  if (accel == Accel::kKvm && !cached_probe().can_run_guests()) {
    why = "kvm cannot run test guests here: " + cached_probe().reason();
  } else {
    try {
      GuestMemory memory(1 << 20);
      IoBus pio("pio"), mmio("mmio");
      create_engine(accel, {memory, pio, mmio}, {.vcpus = 1});
    } catch (const std::exception& e) {
      why = std::string(to_string(accel)) + " engine unavailable: " + e.what();
    }
  }
  cache[accel] = why;
  return why;
}

std::optional<std::string> behaviour_unavailable(Accel accel, const std::string& check) {
  if (auto why = engine_unavailable(accel)) return why;
  if (accel != Accel::kKvm) return std::nullopt;
  const auto* c = cached_probe().check(check);
  if (!c) return "the KVM probe has no check named " + check;
  if (c->ok) return std::nullopt;
  return "this host's KVM fails the probe " + c->name + " (" + c->description + "): " + c->detail;
}

std::optional<std::string> native_cpl0_unavailable(Accel accel) {
  if (auto why = engine_unavailable(accel)) return why;
  if (accel != Accel::kKvm || cached_probe().can_run_stock_kernel()) return std::nullopt;
  return "this host's KVM emulates guest CPL0 in its instruction emulator, which does a "
         "page-crossing locked operation as a plain write: " + cached_probe().reason();
}

}  // namespace keel::guest_test
