#include "difftest/sandbox.h"

#include <atomic>
#include <condition_variable>
#include <cstring>
#include <mutex>
#include <thread>

#include "base/error.h"

namespace keel::difftest {

using namespace layout;

namespace {

constexpr uint32_t kTssLimit = 0x68 + 33 - 1;  // 104-byte TSS, 32-byte bitmap, 0xff
constexpr uint64_t kPresent = 1, kWritable = 2, kUser = 4, kNx = 1ull << 63;

// Page-table entry flags for the 4 KiB page at `addr` (0: not present).
uint64_t page_flags(uint64_t addr) {
  if (addr >= kPml4 && addr < kKernelStackTop) return kPresent | kWritable;  // supervisor
  if (addr >= kCode && addr < kCode + kCodeSize) return kPresent | kWritable | kUser;
  if (addr >= kData && addr < kData + kDataSize) return kPresent | kWritable | kUser | kNx;
  if (addr == kReadOnly) return kPresent | kUser | kNx;
  if (addr >= kStack && addr < kStack + kStackSize) return kPresent | kWritable | kUser | kNx;
  if (addr == kScratch) return kPresent | kWritable | kUser | kNx;
  if (addr >= kCodeAlias && addr < kCodeAlias + kCodeSize) return kPresent | kWritable | kUser | kNx;
  return 0;
}

// The guest-physical page behind the 4 KiB page at `addr` (identity, but for the code alias).
uint64_t page_target(uint64_t addr) {
  if (addr >= kCodeAlias && addr < kCodeAlias + kCodeSize) return addr - kCodeAlias + kCode;
  return addr;
}

uint64_t code_segment(uint8_t dpl) {  // 64-bit code: P, S, type 0xb, L, G
  return 0x00209b0000000000ull | (static_cast<uint64_t>(dpl) << 45);
}
uint64_t data_segment(uint8_t dpl) {  // writable data: P, S, type 3, DB, G
  return 0x00cf93000000ffffull | (static_cast<uint64_t>(dpl) << 45);
}

x86::Segment user_data(uint64_t base) {
  x86::Segment s;
  s.base = base;
  s.limit = 0xffffffff;
  s.selector = kUserDs;
  s.type = 3;
  s.s = 1;
  s.dpl = 3;
  s.present = 1;
  s.db = 1;
  s.g = 1;
  return s;
}

}  // namespace

const char* to_string(Outcome::End end) {
  switch (end) {
    case Outcome::End::kDone: return "done";
    case Outcome::End::kException: return "exception";
    case Outcome::End::kTimeout: return "timeout";
    case Outcome::End::kError: return "error";
  }
  return "?";
}

bool has_error_code(int vector) {
  return vector == 8 || (vector >= 10 && vector <= 14) || vector == 17 || vector == 21 ||
         vector == 29 || vector == 30;
}

void build_system_tables(GuestMemory& memory) {
  // Page tables: PML4[0] -> PDPT[0] -> PD[0] -> one page table for the first 2 MiB.
  memory.write_obj<uint64_t>(kPml4, kPdpt | kPresent | kWritable | kUser);
  memory.write_obj<uint64_t>(kPdpt, kPd | kPresent | kWritable | kUser);
  memory.write_obj<uint64_t>(kPd, kPt | kPresent | kWritable | kUser);
  for (uint64_t i = 0; i < 512; i++) {
    uint64_t addr = i * kPageSize;
    uint64_t flags = page_flags(addr);
    memory.write_obj<uint64_t>(kPt + 8 * i, flags ? page_target(addr) | flags : 0);
  }

  // GDT: null, kernel code, kernel data, user code, user data, 64-bit TSS (two slots).
  uint64_t gdt[7] = {0, code_segment(0), data_segment(0), code_segment(3), data_segment(3)};
  gdt[5] = kTssLimit | ((kTss & 0xffffff) << 16) | (0x89ull << 40) | (((kTss >> 24) & 0xff) << 56);
  gdt[6] = kTss >> 32;
  memory.write(kGdt, gdt, sizeof gdt);

  // TSS: RSP0 and an I/O permission bitmap for ports 0-255 that allows only the stop ports.
  std::array<uint8_t, kTssLimit + 1> tss{};
  uint64_t rsp0 = kKernelStackTop;
  std::memcpy(tss.data() + 4, &rsp0, 8);
  uint16_t iopb = 0x68;
  std::memcpy(tss.data() + 0x66, &iopb, 2);
  for (int port = 0; port < 256; port++) {
    bool allowed = port >= kPortException && port <= kPortDone;
    if (!allowed) tss[iopb + port / 8] |= static_cast<uint8_t>(1u << (port % 8));
  }
  tss[iopb + 32] = 0xff;  // the byte after the bitmap must be all ones
  memory.write(kTss, tss.data(), tss.size());

  // IDT: 64-bit interrupt gates, DPL 0, to 16-byte stubs `out port, al; jmp $`.
  for (int v = 0; v < kVectors; v++) {
    uint64_t handler = kHandlers + 16 * static_cast<uint64_t>(v);
    uint64_t lo = (handler & 0xffff) | (static_cast<uint64_t>(kKernelCs) << 16) | (0x8eull << 40) |
                  (((handler >> 16) & 0xffff) << 48);
    uint64_t hi = handler >> 32;
    memory.write_obj(kIdt + 16 * v, lo);
    memory.write_obj(kIdt + 16 * v + 8, hi);
    uint8_t stub[16];
    std::memset(stub, 0xf4, sizeof stub);
    stub[0] = 0xe6;  // out port, al
    stub[1] = static_cast<uint8_t>(kPortException + v);
    stub[2] = 0xeb;  // jmp $ (see the program's end)
    stub[3] = 0xfe;
    memory.write(handler, stub, sizeof stub);
  }
}

x86::CpuState initial_state(const Program& program, x86::CpuState s) {
  s.gpr = program.gpr;
  s.rip = kCode;
  s.rflags = program.rflags;
  s.cs = {};
  s.cs.limit = 0xffffffff;
  s.cs.selector = kUserCs;
  s.cs.type = 0xb;
  s.cs.s = 1;
  s.cs.dpl = 3;
  s.cs.present = 1;
  s.cs.l = 1;
  s.cs.g = 1;
  s.ss = s.ds = s.es = user_data(0);
  s.fs = user_data(kFsBase);
  s.gs = user_data(kGsBase);
  s.tr = {};
  s.tr.base = kTss;
  s.tr.limit = kTssLimit;
  s.tr.selector = kTr;
  s.tr.type = 0xb;  // busy 64-bit TSS
  s.tr.present = 1;
  s.ldt = {};
  s.ldt.type = 2;
  s.ldt.unusable = 1;
  s.gdt = {kGdt, 7 * 8 - 1};
  s.idt = {kIdt, kVectors * 16 - 1};
  s.cr0 = 0x80010033;  // PG WP NE ET MP PE
  s.cr2 = 0;
  s.cr3 = kPml4;
  s.cr4 = 0x620;       // OSXMMEXCPT OSFXSR PAE
  s.efer = 0xd00;      // NXE LMA LME
  return s;
}

x86::FpuState initial_fpu(const Program& program, x86::FpuState f) {
  auto& b = f.fxsave;
  std::memset(b.data(), 0, 24);  // x87 control/status/tag and pointers
  uint16_t fcw = 0x37f;
  std::memcpy(b.data(), &fcw, 2);
  std::memcpy(b.data() + 24, &program.mxcsr, 4);
  std::memset(b.data() + 32, 0, 128);  // ST0-7
  for (int i = 0; i < 16; i++) std::memcpy(b.data() + 160 + 16 * i, program.xmm[i].data(), 16);
  return f;
}

// Records the first stop port written and kicks the vCPU.
class Sandbox::StopPorts : public BusDevice {
 public:
  void read(uint64_t, std::span<uint8_t> data) override { std::memset(data.data(), 0xff, data.size()); }
  void write(uint64_t offset, std::span<const uint8_t>) override {
    int expected = -1;
    port_.compare_exchange_strong(expected, static_cast<int>(kPortException + offset));
    if (Vcpu* v = vcpu_.load()) v->kick();
  }
  void arm(Vcpu* vcpu) {
    port_ = -1;
    vcpu_ = vcpu;
  }
  void disarm() { vcpu_ = nullptr; }
  int port() const { return port_; }

 private:
  std::atomic<int> port_{-1};
  std::atomic<Vcpu*> vcpu_{nullptr};
};

Sandbox::Sandbox(const EngineFactory& factory)
    : memory_(kRamSize), stop_(std::make_shared<StopPorts>()) {
  build_system_tables(memory_);
  pio_.add(kPortException, kPortDone - kPortException + 1, stop_);
  engine_ = factory(EngineContext{memory_, pio_, mmio_});
  vcpu_ = engine_->create_vcpu(0);
}

Sandbox::~Sandbox() = default;

Outcome Sandbox::run(const Program& program, std::chrono::milliseconds timeout) {
  // Load the program. Unused code bytes are HLT: runaway execution ends in #GP.
  std::vector<uint8_t> code(kCodeSize, 0xf4);
  auto bytes = program.code();
  if (bytes.size() > code.size()) throw Error("difftest program does not fit the code area");
  std::copy(bytes.begin(), bytes.end(), code.begin());
  memory_.write(kCode, code.data(), code.size());
  memory_.write(kData, program.data.data(), program.data.size());
  memory_.write(kReadOnly, program.rodata.data(), program.rodata.size());
  memory_.write(kStack, program.stack.data(), program.stack.size());
  std::vector<uint8_t> zero(kPageSize, 0);
  memory_.write(kKernelStackTop - kPageSize, zero.data(), zero.size());

  vcpu_->set_state(initial_state(program, vcpu_->get_state()));
  vcpu_->set_fpu(initial_fpu(program, vcpu_->get_fpu()));
  stop_->arm(vcpu_.get());

  Outcome out;
  // Watchdog: kicks the vCPU if the program does not stop in time.
  std::mutex mu;
  std::condition_variable cv;
  bool finished = false;
  std::atomic<bool> timed_out{false};
  std::thread watchdog([&] {
    std::unique_lock lock(mu);
    if (!cv.wait_for(lock, timeout, [&] { return finished; })) {
      timed_out = true;
      vcpu_->kick();
    }
  });
  VcpuExit exit = VcpuExit::kStopped;
  try {
    exit = vcpu_->run();
  } catch (const std::exception& e) {
    out.end = Outcome::End::kError;
    out.message = e.what();
  }
  {
    std::lock_guard lock(mu);
    finished = true;
  }
  cv.notify_one();
  watchdog.join();
  stop_->disarm();

  out.state = vcpu_->get_state();
  auto fpu = vcpu_->get_fpu();
  std::memcpy(&out.mxcsr, fpu.fxsave.data() + 24, 4);
  for (int i = 0; i < 16; i++) std::memcpy(out.xmm[i].data(), fpu.fxsave.data() + 160 + 16 * i, 16);
  auto grab = [&](uint64_t gpa, uint64_t len) {
    auto s = memory_.read_span(gpa, len);
    return std::vector<uint8_t>(s.begin(), s.end());
  };
  out.data = grab(kData, kDataSize);
  out.rodata = grab(kReadOnly, kPageSize);
  out.stack = grab(kStack, kStackSize);

  if (!out.message.empty()) return out;
  int port = stop_->port();
  if (port == kPortDone) {
    out.end = Outcome::End::kDone;
  } else if (port >= kPortException && port < kPortException + kVectors) {
    out.end = Outcome::End::kException;
    out.vector = port - kPortException;
    // The frame the CPU pushed on the kernel stack; the stub has not moved RSP.
    uint64_t sp = out.state.gpr[x86::RSP];
    size_t n = has_error_code(out.vector) ? 6 : 5;
    if (sp >= kKernelStackTop - kPageSize && sp + 8 * n <= kKernelStackTop) {
      uint64_t f[6] = {};
      memory_.read(sp, f, 8 * n);
      const uint64_t* p = f;
      if (n == 6) out.frame.error_code = *p++;
      out.frame.rip = p[0];
      out.frame.cs = p[1];
      out.frame.rflags = p[2];
      out.frame.rsp = p[3];
      out.frame.ss = p[4];
    }
  } else if (timed_out) {
    out.end = Outcome::End::kTimeout;
    out.message = "no stop port written within " + std::to_string(timeout.count()) + " ms";
  } else {
    out.end = Outcome::End::kError;
    out.message = std::string("run() returned ") + keel::to_string(exit) +
                  " without writing a stop port";
  }
  return out;
}

}  // namespace keel::difftest
