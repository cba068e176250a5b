// Test harness for the emu CPU: a stub local APIC and clock, a small 64-bit machine (identity
// page tables, a Linux-like GDT, an IDT whose handlers record the vector in R15 and halt, a TSS
// with RSP0 and IST1), and nasm assembly of test snippets.
#pragma once

#include <gtest/gtest.h>
#include <unistd.h>

#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <fstream>
#include <iterator>
#include <mutex>
#include <set>
#include <string>
#include <vector>

#include "engine/emu/emu_engine.h"

namespace keel {
// gtest prints a parameter with PrintTo: the tier, not the struct's bytes (padding included).
inline void PrintTo(const EngineConfig& c, std::ostream* os) {
  *os << (c.emu_tier == EmuTier::kInterp ? "interpreter" : "translation tier, threshold ")
      << (c.emu_tier == EmuTier::kInterp ? "" : std::to_string(c.emu_hot_threshold));
}
}  // namespace keel

namespace keel::emu::test {

class StubApic : public LocalApic {
 public:
  uint64_t base_msr() const override { return base_; }
  void set_base_msr(uint64_t v) override { base_ = v; }
  void mmio_read(uint32_t offset, std::span<uint8_t> data) override {
    for (size_t i = 0; i < data.size(); ++i) data[i] = uint8_t(offset + i);
    reads.push_back(offset);
  }
  void mmio_write(uint32_t offset, std::span<const uint8_t> data) override {
    uint32_t v = 0;
    std::memcpy(&v, data.data(), std::min<size_t>(4, data.size()));
    writes.emplace_back(offset, v);
  }
  uint8_t cr8() const override { return cr8_; }
  void set_cr8(uint8_t v) override { cr8_ = v; }
  uint64_t tsc_deadline() const override { return deadline_; }
  void set_tsc_deadline(uint64_t v) override { deadline_ = v; }
  bool maybe_pending() const override {
    std::lock_guard l(m_);
    return !irr_.empty();
  }
  int pending_vector() override {
    std::lock_guard l(m_);
    return irr_.empty() ? -1 : *irr_.rbegin();
  }
  void accept(int v) override {
    std::lock_guard l(m_);
    irr_.erase(v);
    accepted.push_back(v);
  }
  void wait_for_interrupt(const std::atomic<bool>& kicked) override {
    std::unique_lock l(m_);
    cv_.wait(l, [&] { return !irr_.empty() || kicked.load(); });
  }
  void wake() override { cv_.notify_all(); }
  void deliver_fixed(uint8_t vector, bool) override {
    {
      std::lock_guard l(m_);
      irr_.insert(vector);
    }
    cv_.notify_all();
  }

  std::vector<uint32_t> reads;
  std::vector<std::pair<uint32_t, uint32_t>> writes;
  std::vector<int> accepted;

 private:
  uint64_t base_ = kApicDefaultBase | (1u << 11) | (1u << 8);
  uint8_t cr8_ = 0;
  uint64_t deadline_ = 0;
  mutable std::mutex m_;
  std::condition_variable cv_;
  std::set<int> irr_;
};

class StubClock : public GuestClock {
 public:
  uint64_t tsc_hz() const override { return 2'000'000'000ull; }
  uint64_t read_tsc() const override { return now_ns() * 2; }
  uint64_t now_ns() const override {
    return uint64_t(std::chrono::duration_cast<std::chrono::nanoseconds>(
                        std::chrono::steady_clock::now().time_since_epoch())
                        .count());
  }
};

class StubPlatform : public EmuPlatform {
 public:
  struct NullIrq : InterruptController {
    void set_irq(uint32_t, bool) override {}
    void send_msi(const MsiMessage&) override {}
  };
  GuestClock& clock() override { return clock_; }
  InterruptController& interrupts() override { return irq_; }
  LocalApic& local_apic(uint32_t) override { return apic; }
  bool tsc_deadline_supported() const override { return true; }
  StubApic apic;

 private:
  StubClock clock_;
  NullIrq irq_;
};

// Guest-physical layout of the harness machine.
inline constexpr uint64_t kGdt = 0x800, kPml4 = 0x1000, kPdpt = 0x2000, kPd = 0x3000,
                          kIdt = 0x4000, kStubs = 0x5000, kTss = 0x6000, kPt = 0x7000,
                          kStackTop = 0x80000, kRsp0 = 0x90000, kIst1 = 0xA0000,
                          kCode = 0x100000;
// A 2 MiB window at 16 MiB mapped through 4 KiB pages (kPt) so tests can unmap pages.
inline constexpr uint64_t kSmallPages = 0x1000000;
// Linux's selectors.
inline constexpr uint16_t kKernelCs = 0x10, kKernelDs = 0x18, kUser32Cs = 0x23, kUserDs = 0x2b,
                          kUserCs = 0x33, kTssSel = 0x40;

inline std::vector<uint8_t> assemble(const std::string& body, uint64_t org = kCode) {
  char dir[] = "/tmp/keel-emu-asm-XXXXXX";
  if (!mkdtemp(dir)) throw std::runtime_error("mkdtemp failed");
  std::string src = std::string(dir) + "/t.asm", out = std::string(dir) + "/t.bin";
  {
    std::ofstream f(src);
    f << "bits 64\norg " << org << "\n" << body << "\n";
  }
  std::string cmd = "nasm -f bin -o " + out + " " + src + " 2>&1";
  FILE* p = popen(cmd.c_str(), "r");
  std::string msg;
  char buf[256];
  while (p && fgets(buf, sizeof buf, p)) msg += buf;
  int rc = p ? pclose(p) : -1;
  std::ifstream f(out, std::ios::binary);
  std::vector<uint8_t> bytes((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  std::remove(src.c_str());
  std::remove(out.c_str());
  rmdir(dir);
  if (rc != 0) throw std::runtime_error("nasm failed: " + msg);
  return bytes;
}

// The emu tiers a CPU test runs on: the interpreter alone, and translated code from the first
// execution of every block.
inline const EngineConfig kInterpreterTier{.emu_tier = EmuTier::kInterp};
inline const EngineConfig kTranslatedTier{.emu_tier = EmuTier::kJit, .emu_hot_threshold = 0};
inline std::string tier_name(const testing::TestParamInfo<EngineConfig>& info) {
  return info.param.emu_tier == EmuTier::kInterp ? "interp" : "jit";
}
// CPU tests (emu_cpu_test.cc, emu_x87_test.cc) run once per tier: EmuCpu.Name/interp and /jit.
class EmuCpu : public testing::TestWithParam<EngineConfig> {};

class EmuMachine {
 public:
  explicit EmuMachine(EngineConfig config = EngineConfig{}, uint64_t ram = 64ull << 20)
      : mem(ram),
        pio("pio"),
        mmio("mmio"),
        engine(EngineContext{mem, pio, mmio}, config, std::make_unique<StubPlatform>()) {
    platform = static_cast<StubPlatform*>(&engine.platform());
    build_tables();
    vcpu = engine.create_vcpu(0);
  }

  Cpu& cpu() { return static_cast<EmuVcpu&>(*vcpu).cpu(); }
  StubApic& apic() { return platform->apic; }

  void build_tables() {
    // Identity map the first 1 GiB with 2 MiB user-accessible pages.
    mem.write_obj<uint64_t>(kPml4, kPdpt | 7);
    mem.write_obj<uint64_t>(kPdpt, kPd | 7);
    for (uint64_t i = 0; i < 512; ++i) mem.write_obj<uint64_t>(kPd + i * 8, (i << 21) | 0x87);
    // 16 MiB..18 MiB through 4 KiB pages.
    mem.write_obj<uint64_t>(kPd + 8 * 8, kPt | 7);
    for (uint64_t i = 0; i < 512; ++i) mem.write_obj<uint64_t>(kPt + i * 8, (kSmallPages + (i << 12)) | 7);
    // GDT (Linux layout).
    const uint64_t gdt[] = {0,
                            0x00CF9B000000FFFF,   // 0x08 kernel 32-bit code
                            0x00AF9B000000FFFF,   // 0x10 kernel 64-bit code
                            0x00CF93000000FFFF,   // 0x18 kernel data
                            0x00CFFB000000FFFF,   // 0x20 user 32-bit code
                            0x00CFF3000000FFFF,   // 0x28 user data
                            0x00AFFB000000FFFF,   // 0x30 user 64-bit code
                            0};
    for (size_t i = 0; i < std::size(gdt); ++i) mem.write_obj<uint64_t>(kGdt + i * 8, gdt[i]);
    // TSS descriptor at 0x40 (busy 64-bit TSS).
    uint64_t lo = 0x67 | ((kTss & 0xFFFFFF) << 16) | (0xBull << 40) | (1ull << 47);
    mem.write_obj<uint64_t>(kGdt + 0x40, lo);
    mem.write_obj<uint64_t>(kGdt + 0x48, 0);
    mem.write_obj<uint64_t>(kTss + 4, kRsp0);
    mem.write_obj<uint64_t>(kTss + 36, kIst1);
    mem.write_obj<uint16_t>(kTss + 102, 0x68);
    // IDT: vector v -> stub v (mov r15, v; hlt); DPL 3 for 3 and 0x80; #DF on IST1.
    for (uint64_t v = 0; v < 256; ++v) {
      uint64_t target = kStubs + v * 16;
      uint64_t dpl = (v == 3 || v == 0x80) ? 3 : 0;
      uint64_t ist = v == 8 ? 1 : 0;
      uint64_t g = (target & 0xFFFF) | (uint64_t(kKernelCs) << 16) | (ist << 32) | (0xEull << 40) |
                   (dpl << 45) | (1ull << 47) | ((target & 0xFFFF0000ull) << 32);
      mem.write_obj<uint64_t>(kIdt + v * 16, g);
      mem.write_obj<uint64_t>(kIdt + v * 16 + 8, target >> 32);
      uint8_t stub[16] = {0x49, 0xC7, 0xC7, uint8_t(v), 0, 0, 0, 0xF4, 0xEB, 0xFD};  // mov r15,v; hlt; jmp $-1
      mem.write(target, stub, sizeof stub);
    }
  }

  static x86::Segment seg(uint16_t sel, uint8_t type, uint8_t dpl, bool l, bool db) {
    x86::Segment s{};
    s.selector = sel;
    s.base = 0;
    s.limit = 0xFFFFFFFF;
    s.type = type;
    s.s = 1;
    s.dpl = dpl;
    s.present = 1;
    s.l = l;
    s.db = db;
    s.g = 1;
    return s;
  }

  x86::CpuState initial_state() {
    x86::CpuState s{};
    s.rip = kCode;
    s.rflags = 2;
    s.gpr[x86::RSP] = kStackTop;
    s.cs = seg(kKernelCs, 0xB, 0, true, false);
    s.ds = s.es = s.ss = seg(kKernelDs, 0x3, 0, false, true);
    s.fs = s.gs = seg(0, 0x3, 0, false, true);
    s.tr.base = kTss;
    s.tr.limit = 0x67;
    s.tr.selector = kTssSel;
    s.tr.type = 0xB;
    s.tr.present = 1;
    s.ldt.unusable = 1;
    s.gdt = {kGdt, 0x4F};
    s.idt = {kIdt, 0xFFF};
    s.cr0 = 0x80050033;  // PG WP NE ET MP PE
    s.cr3 = kPml4;
    s.cr4 = 0x6A0;       // PAE PGE OSFXSR OSXMMEXCPT
    s.efer = 0xD01;      // SCE LME LMA NXE
    return s;
  }

  // Loads `code` at kCode, resets the CPU and runs until it stops.
  VcpuExit run(const std::string& code) {
    auto bytes = assemble(code);
    mem.write(kCode, bytes.data(), bytes.size());
    vcpu->set_state(initial_state());
    return vcpu->run();
  }
  VcpuExit run_again() { return vcpu->run(); }

  uint64_t reg(int r) { return vcpu->get_state().gpr[r]; }
  uint64_t rip() { return vcpu->get_state().rip; }
  // The vector the guest took (R15 set by the IDT stubs), or -1 if it halted in the test code.
  int vector() {
    uint64_t r15 = reg(x86::R15);
    return rip() >= kStubs && rip() < kStubs + 0x1000 ? int(r15) : -1;
  }
  // Interrupt frame at RSP (after a vector stub halted): [error], rip, cs, rflags, rsp, ss.
  uint64_t frame(int i) { return mem.read_obj<uint64_t>(reg(x86::RSP) + 8 * i); }

  GuestMemory mem;
  IoBus pio, mmio;
  EmuEngine engine;
  StubPlatform* platform;
  std::unique_ptr<Vcpu> vcpu;
};

}  // namespace keel::emu::test
