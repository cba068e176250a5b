// Row "pio exit round trip": the cost of one port-I/O exit through KvmVcpu::run() and the IoBus,
// against a minimal C-style ioctl(KVM_RUN) loop taking the same exits on a raw VM. Both run the
// same guest (tests/guests/bench_pio_exits.asm: `out 0x501, al` in a loop) from the same entry
// state; the raw loop only looks at the port.
#include <fcntl.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <sys/prctl.h>

#include <ctime>
#include <thread>
#include <cstring>
#include <fstream>
#include <iterator>

#include "arch/x86/boot_state.h"
#include "base/error.h"
#include "bench.h"
#include "engine/kvm/kvm_engine.h"
#include "engine/kvm/kvm_probe.h"
#include "engine/kvm/kvm_uapi.h"
#include "devices/virtio/virtio_platform.h"
#include "engine/engine_factory.h"
#include "sandbox/seccomp.h"

namespace keel::bench {
namespace {

constexpr uint64_t kExits = 20000;
constexpr uint64_t kLoad = 0x100000;
constexpr uint64_t kStack = 0x80000;
constexpr uint64_t kMemory = 16 << 20;

std::vector<uint8_t> guest_code() {
  std::string path = std::string(KEEL_TEST_GUEST_DIR) + "/bench_pio_exits.bin";
  std::ifstream in(path, std::ios::binary);
  if (!in) throw Error("benchmark guest not found: " + path);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

// CPU time of the calling thread: KVM_RUN (the guest, the exit, the in-kernel emulation) runs in
// this thread's context, so this counts everything the round trip costs but not the time the
// thread waits for a core on a shared, loaded host.
double thread_seconds() {
  timespec ts{};
  ::clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return double(ts.tv_sec) + double(ts.tv_nsec) * 1e-9;
}

// What a device does with the benchmark's writes: nothing (the exit is the cost measured).
class NullDevice : public BusDevice {
 public:
  void read(uint64_t, std::span<uint8_t> data) override { std::memset(data.data(), 0, data.size()); }
  void write(uint64_t, std::span<const uint8_t>) override {}
};

// Port 0x504 ends the run.
class ExitDevice : public BusDevice {
 public:
  void read(uint64_t, std::span<uint8_t>) override {}
  void write(uint64_t, std::span<const uint8_t>) override {
    if (vcpu) vcpu->kick();
  }
  Vcpu* vcpu = nullptr;
};

// keel: KvmEngine + KvmVcpu::run() + IoBus dispatch. Returns microseconds per exit. With
// `seccomp`, the loop runs on a thread under the vCPU threads' filter (as in a confined VMM; the
// VM is built before, as a VMM builds it before it confines itself).
double run_keel(const std::vector<uint8_t>& code, bool seccomp = false) {
  GuestMemory memory(kMemory);
  IoBus pio("pio"), mmio("mmio");
  auto exit_device = std::make_shared<ExitDevice>();
  pio.add(0x500, 4, std::make_shared<NullDevice>());
  pio.add(0x504, 1, exit_device);
  KvmEngine engine({memory, pio, mmio}, {.vcpus = 1});
  auto vcpu = engine.create_vcpu(0);
  exit_device->vcpu = vcpu.get();
  memory.write(kLoad, code.data(), code.size());
  auto st = x86::setup_long_mode(memory, {.rip = kLoad, .rsp = kStack});
  st.gpr[x86::RBX] = kExits;
  vcpu->set_state(st);

  auto measure = [&] {
    double start = thread_seconds();
    VcpuExit exit = vcpu->run();
    double elapsed = thread_seconds() - start;
    if (exit != VcpuExit::kStopped) throw Error(std::string("keel run ended: ") + to_string(exit));
    return elapsed * 1e6 / kExits;
  };
  if (!seccomp) return measure();
  double result = 0;
  std::exception_ptr error;
  std::thread([&] {
    try {
      if (::prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0) throw_errno("no_new_privs");
      sandbox::SyscallPolicy policy;
      policy.allow(sandbox::ThreadKind::kVcpu, vcpu_syscalls("kvm"));
      policy.allow(sandbox::ThreadKind::kVcpu, PciPlatform::vcpu_syscalls());
      sandbox::install_filter(policy.list(sandbox::ThreadKind::kVcpu));
      result = measure();
    } catch (...) {
      error = std::current_exception();
    }
  }).join();
  if (error) std::rethrow_exception(error);
  return result;
}

void check(int rc, const char* what) {
  if (rc < 0) throw_errno(what);
}

// Baseline: raw ioctls, the same VM shape (irqchip, PIT, one slot), the same guest and entry
// state, and the smallest loop that takes the exits.
double run_raw(const std::vector<uint8_t>& code) {
  int kvm = ::open("/dev/kvm", O_RDWR | O_CLOEXEC);
  check(kvm, "open /dev/kvm");
  int vm = ::ioctl(kvm, KVM_CREATE_VM, 0);
  check(vm, "KVM_CREATE_VM");
  check(::ioctl(vm, KVM_SET_TSS_ADDR, 0xFFFBD000ul), "KVM_SET_TSS_ADDR");
  check(::ioctl(vm, KVM_CREATE_IRQCHIP, 0), "KVM_CREATE_IRQCHIP");
  kvm_pit_config pit{};
  check(::ioctl(vm, KVM_CREATE_PIT2, &pit), "KVM_CREATE_PIT2");

  GuestMemory memory(kMemory);  // only as the mmap'd backing and to write the tables
  memory.write(kLoad, code.data(), code.size());
  auto st = x86::setup_long_mode(memory, {.rip = kLoad, .rsp = kStack});
  kvm_userspace_memory_region region{};
  region.memory_size = kMemory;
  region.userspace_addr = reinterpret_cast<uint64_t>(memory.regions()[0].host);
  check(::ioctl(vm, KVM_SET_USER_MEMORY_REGION, &region), "KVM_SET_USER_MEMORY_REGION");

  int vcpu = ::ioctl(vm, KVM_CREATE_VCPU, 0);
  check(vcpu, "KVM_CREATE_VCPU");
  int run_size = ::ioctl(kvm, KVM_GET_VCPU_MMAP_SIZE, 0);
  auto* run = static_cast<kvm_run*>(
      ::mmap(nullptr, run_size, PROT_READ | PROT_WRITE, MAP_SHARED, vcpu, 0));
  if (run == MAP_FAILED) throw_errno("mmap kvm_run");

  kvm_sregs sregs{};
  check(::ioctl(vcpu, KVM_GET_SREGS, &sregs), "KVM_GET_SREGS");
  auto seg = [](const x86::Segment& s) {
    kvm_segment k{};
    k.base = s.base; k.limit = s.limit; k.selector = s.selector; k.type = s.type;
    k.present = s.present; k.dpl = s.dpl; k.db = s.db; k.s = s.s; k.l = s.l; k.g = s.g;
    return k;
  };
  sregs.cs = seg(st.cs);
  sregs.ds = sregs.es = sregs.fs = sregs.gs = sregs.ss = seg(st.ds);
  sregs.tr = seg(st.tr);
  sregs.gdt.base = st.gdt.base;
  sregs.gdt.limit = st.gdt.limit;
  sregs.cr0 = st.cr0;
  sregs.cr3 = st.cr3;
  sregs.cr4 = st.cr4;
  sregs.efer = st.efer;
  check(::ioctl(vcpu, KVM_SET_SREGS, &sregs), "KVM_SET_SREGS");
  kvm_regs regs{};
  regs.rip = kLoad;
  regs.rsp = kStack;
  regs.rbx = kExits;
  regs.rflags = 2;
  check(::ioctl(vcpu, KVM_SET_REGS, &regs), "KVM_SET_REGS");

  double start = thread_seconds();
  for (;;) {
    check(::ioctl(vcpu, KVM_RUN, 0), "KVM_RUN");
    if (run->exit_reason != KVM_EXIT_IO) throw Error("raw loop: unexpected exit");
    if (run->io.port == 0x504) break;
  }
  double elapsed = thread_seconds() - start;
  ::munmap(run, run_size);
  ::close(vcpu);
  ::close(vm);
  ::close(kvm);
  return elapsed * 1e6 / kExits;
}

KEEL_BENCH_ROW(Row{
    .name = "pio exit round trip under seccomp",
    .unit = "us CPU/exit",
    .baseline = "the same loop without a filter",
    .sample =
        [] {
          static const auto code = guest_code();
          static bool filtered_first = true;
          filtered_first = !filtered_first;
          Sample s;
          if (filtered_first) {
            s.keel = run_keel(code, true);
            s.baseline = run_keel(code, false);
          } else {
            s.baseline = run_keel(code, false);
            s.keel = run_keel(code, true);
          }
          return s;
        },
    .unavailable = kvm_unavailable,
});

KEEL_BENCH_ROW(Row{
    .name = "pio exit round trip",
    .unit = "us CPU/exit",
    .baseline = "raw ioctl(KVM_RUN) loop",
    .sample =
        [] {
          static const auto code = guest_code();
          // Alternate the order so that neither side always runs on a warmer host.
          static bool keel_first = true;
          keel_first = !keel_first;
          Sample s;
          if (keel_first) {
            s.keel = run_keel(code);
            s.baseline = run_raw(code);
          } else {
            s.baseline = run_raw(code);
            s.keel = run_keel(code);
          }
          return s;
        },
    .unavailable = kvm_unavailable,
});

}  // namespace
}  // namespace keel::bench
