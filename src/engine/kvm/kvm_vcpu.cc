#include "engine/kvm/kvm_vcpu.h"

#include "engine/kvm/kvm_uapi.h"
#include <signal.h>
#include <sys/ioctl.h>

#include <array>
#include <cstdio>
#include <cstring>
#include <mutex>

#include "arch/x86/page_walk.h"
#include "base/error.h"

namespace keel {

namespace {

void kick_handler(int) {}  // only there to make KVM_RUN return EINTR

std::string hex(uint64_t v) {
  char buf[24];
  std::snprintf(buf, sizeof buf, "0x%llx", static_cast<unsigned long long>(v));
  return buf;
}

kvm_segment to_kvm(const x86::Segment& s) {
  kvm_segment k{};
  k.base = s.base;
  k.limit = s.limit;
  k.selector = s.selector;
  k.type = s.type;
  k.present = s.present;
  k.dpl = s.dpl;
  k.db = s.db;
  k.s = s.s;
  k.l = s.l;
  k.g = s.g;
  k.avl = s.avl;
  k.unusable = s.unusable;
  return k;
}

x86::Segment from_kvm(const kvm_segment& k) {
  x86::Segment s;
  s.base = k.base;
  s.limit = k.limit;
  s.selector = k.selector;
  s.type = k.type;
  s.present = k.present;
  s.dpl = k.dpl;
  s.db = k.db;
  s.s = k.s;
  s.l = k.l;
  s.g = k.g;
  s.avl = k.avl;
  s.unusable = k.unusable;
  return s;
}

const char* internal_error_name(uint32_t suberror) {
  switch (suberror) {
    case KVM_INTERNAL_ERROR_EMULATION: return "instruction emulation failed";
    case KVM_INTERNAL_ERROR_SIMUL_EX: return "exception while delivering an exception";
    case KVM_INTERNAL_ERROR_DELIVERY_EV: return "exit during event delivery";
    case KVM_INTERNAL_ERROR_UNEXPECTED_EXIT_REASON: return "unexpected exit reason";
    default: return "unknown suberror";
  }
}

}  // namespace

void install_kvm_kick_handler() {
  static std::once_flag once;
  std::call_once(once, [] {
    struct sigaction sa {};
    sa.sa_handler = kick_handler;
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = 0;  // no SA_RESTART: KVM_RUN must come back with EINTR
    if (::sigaction(kKvmKickSignal, &sa, nullptr) != 0) throw_errno("sigaction(SIGUSR1)");
  });
}

KvmVcpu::KvmVcpu(uint32_t index, UniqueFd fd, size_t run_size, EngineContext context, bool xsave)
    : index_(index),
      fd_(std::move(fd)),
      run_mapping_(Mapping::file(fd_.get(), run_size, PROT_READ | PROT_WRITE, MAP_SHARED)),
      run_(reinterpret_cast<kvm_run*>(run_mapping_.data())),
      context_(context),
      xsave_(xsave) {}

x86::CpuState KvmVcpu::get_state() {
  kvm_regs regs{};
  kvm_sregs sregs{};
  if (::ioctl(fd_.get(), KVM_GET_REGS, &regs) < 0) throw_errno("KVM_GET_REGS");
  if (::ioctl(fd_.get(), KVM_GET_SREGS, &sregs) < 0) throw_errno("KVM_GET_SREGS");
  x86::CpuState st;
  const uint64_t gpr[16] = {regs.rax, regs.rcx, regs.rdx, regs.rbx, regs.rsp, regs.rbp,
                            regs.rsi, regs.rdi, regs.r8,  regs.r9,  regs.r10, regs.r11,
                            regs.r12, regs.r13, regs.r14, regs.r15};
  std::copy(std::begin(gpr), std::end(gpr), st.gpr.begin());
  st.rip = regs.rip;
  st.rflags = regs.rflags;
  st.cs = from_kvm(sregs.cs);
  st.ds = from_kvm(sregs.ds);
  st.es = from_kvm(sregs.es);
  st.fs = from_kvm(sregs.fs);
  st.gs = from_kvm(sregs.gs);
  st.ss = from_kvm(sregs.ss);
  st.tr = from_kvm(sregs.tr);
  st.ldt = from_kvm(sregs.ldt);
  st.gdt = {sregs.gdt.base, sregs.gdt.limit};
  st.idt = {sregs.idt.base, sregs.idt.limit};
  st.cr0 = sregs.cr0;
  st.cr2 = sregs.cr2;
  st.cr3 = sregs.cr3;
  st.cr4 = sregs.cr4;
  st.cr8 = sregs.cr8;
  st.efer = sregs.efer;
  st.apic_base = sregs.apic_base;
  return st;
}

void KvmVcpu::set_state(const x86::CpuState& st) {
  // Start from KVM's sregs so that fields CpuState does not carry (the pending-interrupt
  // bitmap) keep their values.
  kvm_sregs sregs{};
  if (::ioctl(fd_.get(), KVM_GET_SREGS, &sregs) < 0) throw_errno("KVM_GET_SREGS");
  sregs.cs = to_kvm(st.cs);
  sregs.ds = to_kvm(st.ds);
  sregs.es = to_kvm(st.es);
  sregs.fs = to_kvm(st.fs);
  sregs.gs = to_kvm(st.gs);
  sregs.ss = to_kvm(st.ss);
  sregs.tr = to_kvm(st.tr);
  sregs.ldt = to_kvm(st.ldt);
  sregs.gdt.base = st.gdt.base;
  sregs.gdt.limit = st.gdt.limit;
  sregs.idt.base = st.idt.base;
  sregs.idt.limit = st.idt.limit;
  sregs.cr0 = st.cr0;
  sregs.cr2 = st.cr2;
  sregs.cr3 = st.cr3;
  sregs.cr4 = st.cr4;
  sregs.cr8 = st.cr8;
  sregs.efer = st.efer;
  sregs.apic_base = st.apic_base;
  if (::ioctl(fd_.get(), KVM_SET_SREGS, &sregs) < 0) throw_errno("KVM_SET_SREGS");

  kvm_regs regs{};
  regs.rax = st.gpr[x86::RAX];
  regs.rcx = st.gpr[x86::RCX];
  regs.rdx = st.gpr[x86::RDX];
  regs.rbx = st.gpr[x86::RBX];
  regs.rsp = st.gpr[x86::RSP];
  regs.rbp = st.gpr[x86::RBP];
  regs.rsi = st.gpr[x86::RSI];
  regs.rdi = st.gpr[x86::RDI];
  regs.r8 = st.gpr[x86::R8];
  regs.r9 = st.gpr[x86::R9];
  regs.r10 = st.gpr[x86::R10];
  regs.r11 = st.gpr[x86::R11];
  regs.r12 = st.gpr[x86::R12];
  regs.r13 = st.gpr[x86::R13];
  regs.r14 = st.gpr[x86::R14];
  regs.r15 = st.gpr[x86::R15];
  regs.rip = st.rip;
  regs.rflags = st.rflags;
  if (::ioctl(fd_.get(), KVM_SET_REGS, &regs) < 0) throw_errno("KVM_SET_REGS");
}

// kvm_fpu <-> the FXSAVE image (Intel SDM vol. 1, table 10-2).
x86::FpuState KvmVcpu::get_fpu() {
  if (xsave_) {
    kvm_xsave xs{};
    if (::ioctl(fd_.get(), KVM_GET_XSAVE, &xs) < 0) throw_errno("KVM_GET_XSAVE");
    x86::FpuState out;
    std::memcpy(out.fxsave.data(), xs.region, out.fxsave.size());
    return out;
  }
  kvm_fpu f{};
  if (::ioctl(fd_.get(), KVM_GET_FPU, &f) < 0) throw_errno("KVM_GET_FPU");
  x86::FpuState out;
  uint8_t* p = out.fxsave.data();
  std::memcpy(p + 0, &f.fcw, 2);
  std::memcpy(p + 2, &f.fsw, 2);
  p[4] = f.ftwx;
  std::memcpy(p + 6, &f.last_opcode, 2);
  std::memcpy(p + 8, &f.last_ip, 8);
  std::memcpy(p + 16, &f.last_dp, 8);
  std::memcpy(p + 24, &f.mxcsr, 4);
  uint32_t mxcsr_mask = 0xFFFF;
  std::memcpy(p + 28, &mxcsr_mask, 4);
  for (int i = 0; i < 8; ++i) std::memcpy(p + 32 + 16 * i, f.fpr[i], 16);
  for (int i = 0; i < 16; ++i) std::memcpy(p + 160 + 16 * i, f.xmm[i], 16);
  return out;
}

void KvmVcpu::set_fpu(const x86::FpuState& fpu) {
  if (xsave_) {
    kvm_xsave xs{};
    if (::ioctl(fd_.get(), KVM_GET_XSAVE, &xs) < 0) throw_errno("KVM_GET_XSAVE");
    std::memcpy(xs.region, fpu.fxsave.data(), fpu.fxsave.size());
    // XSTATE_BV (header, byte 512): x87 and SSE now hold explicit values, not the init state.
    uint64_t xstate_bv;
    std::memcpy(&xstate_bv, reinterpret_cast<uint8_t*>(xs.region) + 512, 8);
    xstate_bv |= 0x3;
    std::memcpy(reinterpret_cast<uint8_t*>(xs.region) + 512, &xstate_bv, 8);
    if (::ioctl(fd_.get(), KVM_SET_XSAVE, &xs) < 0) throw_errno("KVM_SET_XSAVE");
    return;
  }
  kvm_fpu f{};
  const uint8_t* p = fpu.fxsave.data();
  std::memcpy(&f.fcw, p + 0, 2);
  std::memcpy(&f.fsw, p + 2, 2);
  f.ftwx = p[4];
  std::memcpy(&f.last_opcode, p + 6, 2);
  std::memcpy(&f.last_ip, p + 8, 8);
  std::memcpy(&f.last_dp, p + 16, 8);
  std::memcpy(&f.mxcsr, p + 24, 4);
  for (int i = 0; i < 8; ++i) std::memcpy(f.fpr[i], p + 32 + 16 * i, 16);
  for (int i = 0; i < 16; ++i) std::memcpy(f.xmm[i], p + 160 + 16 * i, 16);
  if (::ioctl(fd_.get(), KVM_SET_FPU, &f) < 0) throw_errno("KVM_SET_FPU");
}

void KvmVcpu::make_runnable() {
  kvm_mp_state mp{KVM_MP_STATE_RUNNABLE};
  if (::ioctl(fd_.get(), KVM_SET_MP_STATE, &mp) < 0) throw_errno("KVM_SET_MP_STATE");
}

void KvmVcpu::kick() {
  std::lock_guard lock(kick_mutex_);
  kicked_.store(true, std::memory_order_release);
  // Set before signalling: a KVM_RUN that starts after this returns at once; one already in the
  // kernel is interrupted by the signal.
  std::atomic_ref<uint8_t>(run_->immediate_exit).store(1, std::memory_order_release);
  if (in_run_) ::pthread_kill(thread_, kKvmKickSignal);
}

bool KvmVcpu::take_kick() {
  std::lock_guard lock(kick_mutex_);
  if (!kicked_.load(std::memory_order_acquire)) return false;
  kicked_.store(false, std::memory_order_relaxed);
  std::atomic_ref<uint8_t>(run_->immediate_exit).store(0, std::memory_order_relaxed);
  return true;
}

std::string KvmVcpu::describe_position() {
  try {
    x86::CpuState st = get_state();
    uint64_t linear = st.rip + ((st.cs.l && (st.efer & (1ull << 10))) ? 0 : st.cs.base);
    std::string out = "RIP " + hex(st.rip);
    std::array<uint8_t, 15> bytes{};
    size_t n = x86::read_virtual(context_.memory, st, linear, bytes);
    if (n == 0) return out + " (instruction bytes not readable)";
    out += ", instruction bytes";
    for (size_t i = 0; i < n; ++i) {
      char b[4];
      std::snprintf(b, sizeof b, " %02x", bytes[i]);
      out += b;
    }
    return out;
  } catch (const Error& e) {
    return std::string("(registers unavailable: ") + e.what() + ")";
  }
}

void KvmVcpu::handle_io() {
  auto& io = run_->io;
  size_t total = size_t(io.size) * io.count;
  if (io.size == 0 || io.data_offset + total > run_mapping_.size())
    throw Error("KVM_EXIT_IO with an out-of-range buffer on vCPU " + std::to_string(index_));
  uint8_t* data = reinterpret_cast<uint8_t*>(run_) + io.data_offset;
  // String I/O (rep ins/outs) arrives as `count` consecutive elements of `size` bytes.
  for (uint32_t i = 0; i < io.count; ++i) {
    std::span<uint8_t> elem(data + size_t(i) * io.size, io.size);
    if (io.direction == KVM_EXIT_IO_OUT)
      context_.pio.write(io.port, elem);
    else
      context_.pio.read(io.port, elem);
  }
}

void KvmVcpu::handle_mmio() {
  auto& mmio = run_->mmio;
  uint32_t len = std::min<uint32_t>(mmio.len, sizeof mmio.data);
  if (mmio.is_write)
    context_.mmio.write(mmio.phys_addr, std::span<const uint8_t>(mmio.data, len));
  else
    context_.mmio.read(mmio.phys_addr, std::span<uint8_t>(mmio.data, len));
}

std::vector<std::pair<const char*, uint64_t>> KvmVcpu::exit_counts() const {
  static constexpr const char* kNames[kExitKinds] = {"io", "mmio", "signal", "hlt", "shutdown",
                                                     "system_event", "other"};
  std::vector<std::pair<const char*, uint64_t>> out;
  for (int i = 0; i < kExitKinds; ++i) out.emplace_back(kNames[i], exits_[i].get());
  return out;
}

VcpuExit KvmVcpu::run() {
  {
    std::lock_guard lock(kick_mutex_);
    thread_ = ::pthread_self();
    in_run_ = true;
  }
  struct Leave {
    KvmVcpu* self;
    ~Leave() {
      std::lock_guard lock(self->kick_mutex_);
      self->in_run_ = false;
    }
  } leave{this};

  // The kick signal must reach this thread.
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, kKvmKickSignal);
  ::pthread_sigmask(SIG_UNBLOCK, &set, nullptr);

  const std::string who = "vCPU " + std::to_string(index_);
  for (;;) {
    if (::ioctl(fd_.get(), KVM_RUN, 0) < 0) {
      int err = errno;
      if (err == EINTR || err == EAGAIN) {
        exits_[kExitSignal].add();
        if (take_kick()) return VcpuExit::kStopped;
        continue;  // another signal: go back in
      }
      throw_errno("KVM_RUN on " + who, err);
    }
    switch (run_->exit_reason) {
      case KVM_EXIT_IO: exits_[kExitIo].add(); break;
      case KVM_EXIT_MMIO: exits_[kExitMmio].add(); break;
      case KVM_EXIT_INTR: exits_[kExitSignal].add(); break;
      case KVM_EXIT_HLT: exits_[kExitHlt].add(); break;
      case KVM_EXIT_SHUTDOWN: exits_[kExitShutdown].add(); break;
      case KVM_EXIT_SYSTEM_EVENT: exits_[kExitSystemEvent].add(); break;
      default: exits_[kExitOther].add(); break;
    }
    switch (run_->exit_reason) {
      case KVM_EXIT_IO:
        handle_io();
        break;
      case KVM_EXIT_MMIO:
        handle_mmio();
        break;
      case KVM_EXIT_INTR:
        if (take_kick()) return VcpuExit::kStopped;
        break;
      case KVM_EXIT_HLT:  // only without an in-kernel LAPIC, which keel always has
        return VcpuExit::kHalted;
      case KVM_EXIT_SHUTDOWN:
        return VcpuExit::kShutdown;
      case KVM_EXIT_SYSTEM_EVENT:
        switch (run_->system_event.type) {
          case KVM_SYSTEM_EVENT_SHUTDOWN: return VcpuExit::kPowerOff;
          case KVM_SYSTEM_EVENT_RESET: return VcpuExit::kReset;
          case KVM_SYSTEM_EVENT_CRASH:
            throw Error("guest crash reported by KVM on " + who + " at " + describe_position());
          default:
            throw Error("KVM system event " + std::to_string(run_->system_event.type) + " on " +
                        who);
        }
      case KVM_EXIT_FAIL_ENTRY:
        throw Error("KVM could not enter the guest on " + who + ": hardware entry failure reason " +
                    hex(run_->fail_entry.hardware_entry_failure_reason) + " at " +
                    describe_position());
      case KVM_EXIT_INTERNAL_ERROR: {
        auto& ie = run_->internal;
        std::string msg = "KVM internal error on " + who + ": " +
                          internal_error_name(ie.suberror) + " (suberror " +
                          std::to_string(ie.suberror) + ") at " + describe_position();
        uint32_t n = std::min<uint32_t>(ie.ndata, 16);
        if (n) {
          msg += ", data";
          for (uint32_t i = 0; i < n; ++i) msg += " " + hex(ie.data[i]);
        }
        throw Error(msg);
      }
      default:
        throw Error("unexpected KVM exit reason " + std::to_string(run_->exit_reason) + " on " +
                    who + " at " + describe_position());
    }
  }
}

}  // namespace keel
