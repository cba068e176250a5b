// Runs a purpose-built test guest (tests/guests/NAME.asm -> build/tests/guests/NAME.bin) on an
// engine: guest RAM, the port-I/O and MMIO buses, the engine, one thread per vCPU, and the test
// devices of the guest ABI (tests/guests/README.md):
//
//   ports 0x500-0x503  32-bit `out` reports a value (GuestResult::reports); `in` of any size
//                      reads bytes of TestPorts::input()
//   port  0x504        8-bit `out` ends the run with that status (0 = pass)
//   port  0x505        8-bit `out` N pulses GSI N on the engine's interrupt controller
//   ports 0x508-0x50B  32-bit `out` (dest APIC id << 8 | vector) sends a fixed MSI
//   MMIO  0xD0000000   4 KiB of registers that read back what was written (TestMmio)
//
// Every access to the test devices is logged in order, so a test can check sizes, directions
// and values. run() returns when the guest writes its status, a device asks power() to stop the
// machine, a vCPU stops for another reason (shutdown, error), or the deadline passes; it then
// kicks every vCPU and joins the threads.
//
// Other engineers add their own devices to pio()/mmio() before run(); tests are parametrised
// over engines (see guest_conformance_test.cc).
#pragma once

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "bus/io_bus.h"
#include "devices/power.h"
#include "engine/engine.h"
#include "memory/guest_memory.h"

namespace keel::guest_test {

inline constexpr uint64_t kGuestLoadAddr = 0x100000;
inline constexpr uint64_t kGuestStackTop = 0x80000;  // vCPU i: kGuestStackTop - i * kGuestStackSize
inline constexpr uint64_t kGuestStackSize = 0x4000;
inline constexpr uint32_t kGuestMaxVcpus = 16;
inline constexpr uint16_t kPortReport = 0x500;
inline constexpr uint16_t kPortExit = 0x504;
inline constexpr uint16_t kPortIrq = 0x505;
inline constexpr uint16_t kPortMsi = 0x508;
inline constexpr uint16_t kTestPortsSize = 12;
inline constexpr uint64_t kTestMmioBase = 0xD000'0000;
inline constexpr uint64_t kTestMmioSize = 0x1000;

struct IoAccess {
  bool write = false;
  uint64_t addr = 0;  // port or guest-physical address
  uint32_t size = 0;
  uint64_t value = 0;  // little-endian value of the data
  bool operator==(const IoAccess&) const = default;
};
std::ostream& operator<<(std::ostream& os, const IoAccess& a);

// What the harness does when the guest asks to end the run.
class RunControl {
 public:
  virtual ~RunControl() = default;
  virtual void finish(uint8_t status) = 0;
};

class TestPorts : public BusDevice {
 public:
  TestPorts(RunControl& control, InterruptController& irq) : control_(control), irq_(irq) {}
  void read(uint64_t offset, std::span<uint8_t> data) override;
  void write(uint64_t offset, std::span<const uint8_t> data) override;

  void set_input(uint32_t value);
  std::vector<IoAccess> log() const;
  std::vector<uint32_t> reports() const;  // 32-bit writes to 0x500, in order

 private:
  RunControl& control_;
  InterruptController& irq_;
  mutable std::mutex mutex_;
  uint32_t input_ = 0x44332211;
  std::vector<IoAccess> log_;
};

class TestMmio : public BusDevice {
 public:
  void read(uint64_t offset, std::span<uint8_t> data) override;
  void write(uint64_t offset, std::span<const uint8_t> data) override;
  std::vector<IoAccess> log() const;

 private:
  mutable std::mutex mutex_;
  std::vector<uint8_t> regs_ = std::vector<uint8_t>(kTestMmioSize);
  std::vector<IoAccess> log_;
};

// Calls a function on every write: a test's trigger port (e.g. 0x50C, which irqfd_msi.asm writes
// when it is ready for an interrupt). Reads return zero.
class OnWrite : public BusDevice {
 public:
  explicit OnWrite(std::function<void()> fn) : fn_(std::move(fn)) {}
  void read(uint64_t, std::span<uint8_t> data) override { std::fill(data.begin(), data.end(), 0); }
  void write(uint64_t, std::span<const uint8_t>) override { fn_(); }

 private:
  std::function<void()> fn_;
};

struct GuestOptions {
  uint32_t vcpus = 1;
  uint64_t memory = 64ull << 20;
  std::chrono::milliseconds deadline{20000};
  // Secondary vCPUs start at the entry with the guest; false: they wait for INIT/SIPI from the
  // guest (as under Linux).
  bool start_aps = true;
  EmuTier emu_tier = EmuTier::kJit;  // emu: which tiers run the guest
};

struct GuestResult {
  std::optional<uint8_t> status;  // what the guest wrote to port 0x504
  // What a device asked through GuestHarness::power() (ACPI S5, i8042 reset ...), and its detail.
  std::optional<StopReason> stop;
  std::string stop_detail;
  bool timed_out = false;
  std::vector<std::optional<VcpuExit>> exits;  // per vCPU; nullopt where run() threw
  std::vector<std::string> errors;             // per vCPU; the error run() threw, or empty
  std::vector<uint32_t> reports;
  // One line per vCPU, for failure messages.
  std::string summary() const;
  // The first vCPU error, or empty.
  std::string first_error() const;
};

class GuestHarness : private RunControl, private PowerControl {
 public:
  // Creates memory, buses, the engine and the test devices, loads the guest and sets every vCPU
  // to the guest ABI's entry state. Throws Error if the guest binary is missing.
  GuestHarness(Accel accel, const std::string& guest, GuestOptions options = {});
  ~GuestHarness() override;

  GuestMemory& memory() { return *memory_; }
  IoBus& pio() { return *pio_; }
  IoBus& mmio() { return *mmio_; }
  Engine& engine() { return *engine_; }
  Vcpu& vcpu(uint32_t i) { return *vcpus_.at(i); }
  TestPorts& ports() { return *ports_; }
  TestMmio& test_mmio() { return *test_mmio_; }
  // For devices under test that power off or reset the machine: a request ends the run and is
  // reported in GuestResult::stop.
  PowerControl& power() { return *this; }

  // Runs every vCPU on its own thread until the guest ends the run, a vCPU stops, or the
  // deadline passes. Call once.
  GuestResult run();

 private:
  void finish(uint8_t status) override;
  void request_stop(StopReason reason, std::string detail) override;
  void stop_all();

  GuestOptions options_;
  std::unique_ptr<GuestMemory> memory_;
  std::unique_ptr<IoBus> pio_, mmio_;
  std::unique_ptr<Engine> engine_;
  std::vector<std::unique_ptr<Vcpu>> vcpus_;
  std::shared_ptr<TestPorts> ports_;
  std::shared_ptr<TestMmio> test_mmio_;

  std::mutex mutex_;
  std::optional<uint8_t> status_;
  std::optional<StopReason> stop_;
  std::string stop_detail_;
};

// Why `accel` cannot run test guests on this host (for GTEST_SKIP), or nullopt. Cached.
std::optional<std::string> engine_unavailable(Accel accel);

// Why `accel` cannot run a guest that needs the behaviour the KVM probe check `check` tests
// (e.g. "int3_cpl0"), or nullopt. Only the kvm engine consults the probe.
std::optional<std::string> behaviour_unavailable(Accel accel, const std::string& check);

// Why guest CPL0 code does not run natively on this engine and host: on a KVM that emulates guest
// CPL0 (kvm_pvm), the host's instruction emulator does what hardware would do atomically (a
// page-crossing LOCK read-modify-write becomes a plain write) without the atomicity.
std::optional<std::string> native_cpl0_unavailable(Accel accel);

// Reads build/tests/guests/NAME.bin.
std::vector<uint8_t> load_guest_binary(const std::string& name);

}  // namespace keel::guest_test
