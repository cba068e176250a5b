// The sandbox a Program runs in, on any engine, through the Vcpu interface only.
//
// Guest memory holds identity-mapped 4 KiB pages (program.h, layout), a GDT with 64-bit CPL0 and
// CPL3 segments and a TSS whose RSP0 is the kernel stack, and an IDT whose 32 exception vectors
// point at CPL0 stubs `out kPortException+vector, al; jmp $`. The vCPU enters CPL3 directly through
// set_state (CS/SS with DPL 3): no CPL0 code runs unless an exception is delivered. The TSS's I/O
// permission bitmap lets CPL3 write the stop ports (and only those); a BusDevice there records
// which port was written and kicks the vCPU.
//
// Found on kvm_pvm (this host), with a raw KVM program and then through this sandbox:
// - CPL3 runs natively; exception delivery from CPL3 through this IDT and TSS works for #DE #UD
//   #GP #SS #PF, and the CPL0 stub's `out imm8, al` runs in the host's instruction emulator.
// - RFLAGS.IOPL is not honoured: set to 3, it reads back as 0 and `out` at CPL3 raises #GP unless
//   the TSS I/O bitmap allows the port. Hence IOPL=0 plus the bitmap.
// - The frame pushed for a fault has RF set in the saved RFLAGS, as the SDM requires.
#pragma once

#include <array>
#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "difftest/program.h"
#include "engine/engine.h"

namespace keel::difftest {

struct ExceptionFrame {
  uint64_t error_code = 0;
  uint64_t rip = 0, cs = 0, rflags = 0, rsp = 0, ss = 0;
};

struct Outcome {
  enum class End { kDone, kException, kTimeout, kError };
  End end = End::kError;
  std::string message;  // why, for kTimeout/kError

  x86::CpuState state;
  std::array<std::array<uint8_t, 16>, 16> xmm{};
  uint32_t mxcsr = 0;

  int vector = -1;  // for kException
  ExceptionFrame frame;

  std::vector<uint8_t> data, rodata, stack;
};
const char* to_string(Outcome::End end);
bool has_error_code(int vector);

// Creates the engine under test for a sandbox's memory and buses.
using EngineFactory = std::function<std::unique_ptr<Engine>(const EngineContext&)>;

// Writes page tables, GDT, IDT, TSS and the exception stubs.
void build_system_tables(GuestMemory& memory);
// The CPL3 64-bit entry state of `program`, on top of `base` (what the vCPU reported).
x86::CpuState initial_state(const Program& program, x86::CpuState base);
x86::FpuState initial_fpu(const Program& program, x86::FpuState base);

class Sandbox {
 public:
  explicit Sandbox(const EngineFactory& factory);
  ~Sandbox();
  Sandbox(const Sandbox&) = delete;
  Sandbox& operator=(const Sandbox&) = delete;

  // Loads `program`, runs it until the stop port, and collects the outcome. A run that does not
  // stop within `timeout` is kicked and reported as kTimeout.
  Outcome run(const Program& program,
              std::chrono::milliseconds timeout = std::chrono::milliseconds(5000));

  Vcpu& vcpu() { return *vcpu_; }
  GuestMemory& memory() { return memory_; }

 private:
  class StopPorts;

  GuestMemory memory_;
  IoBus pio_{"pio"};
  IoBus mmio_{"mmio"};
  std::shared_ptr<StopPorts> stop_;
  std::unique_ptr<Engine> engine_;
  std::unique_ptr<Vcpu> vcpu_;
};

}  // namespace keel::difftest
