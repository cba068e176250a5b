#include "engine/kvm/kvm_state.h"

#include "engine/kvm/kvm_uapi.h"
#include <sys/ioctl.h>

#include <cstdio>
#include <cstring>
#include <string>

#include "base/error.h"

namespace keel {

namespace {

template <typename T>
void get(int fd, unsigned long request, T* value, const char* name) {
  if (::ioctl(fd, request, value) < 0) throw_errno(name);
}

template <typename T>
void put(int fd, unsigned long request, const T* value, const char* name) {
  if (::ioctl(fd, request, value) < 0) throw_errno(name);
}

// The MSRs saved besides what SREGS carries (EFER, APIC base): those Linux and the test guests
// use. The TSC first, so KVM adjusts its offset before the deadline is set.
constexpr uint32_t kMsrs[] = {
    0x10,                                     // TSC
    0x174,       0x175,       0x176,          // SYSENTER_CS/ESP/EIP
    0x277,                                    // PAT
    0x1A0,                                    // MISC_ENABLE
    0xC000'0081, 0xC000'0082, 0xC000'0083, 0xC000'0084,  // STAR, LSTAR, CSTAR, FMASK
    0xC000'0102, 0xC000'0103,                // KERNEL_GS_BASE, TSC_AUX
    0x4b56'4d00, 0x4b56'4d01,                // kvm-clock: wall clock, system time
    0x4b56'4d02, 0x4b56'4d03, 0x4b56'4d04,   // async PF, steal time, PV EOI
    0x6E0,                                    // TSC_DEADLINE
};

struct OneMsr {
  kvm_msrs head;
  kvm_msr_entry entry;
};

std::string hex(uint32_t v) {
  char buf[16];
  std::snprintf(buf, sizeof buf, "0x%x", v);
  return buf;
}

std::span<const uint8_t> raw(const void* p, size_t n) { return {static_cast<const uint8_t*>(p), n}; }

}  // namespace

void save_kvm_vcpu(KvmVcpu& vcpu, x86::VcpuSnapshot& out) {
  int fd = vcpu.fd();
  out.regs = vcpu.get_state();
  out.fpu = vcpu.get_fpu();
  kvm_xsave xs{};
  if (::ioctl(fd, KVM_GET_XSAVE, &xs) == 0) out.xsave.assign(reinterpret_cast<uint8_t*>(xs.region),
                                                             reinterpret_cast<uint8_t*>(xs.region) + sizeof xs.region);
  kvm_xcrs xcrs{};
  if (::ioctl(fd, KVM_GET_XCRS, &xcrs) == 0)
    for (uint32_t i = 0; i < xcrs.nr_xcrs; ++i)
      if (xcrs.xcrs[i].xcr == 0) out.xcr0 = xcrs.xcrs[i].value;
  kvm_debugregs dr{};
  get(fd, KVM_GET_DEBUGREGS, &dr, "KVM_GET_DEBUGREGS");
  for (int i = 0; i < 4; ++i) out.dr[i] = dr.db[i];
  out.dr6 = dr.dr6;
  out.dr7 = dr.dr7;
  out.msrs.clear();
  for (uint32_t index : kMsrs) {
    OneMsr m{};
    m.head.nmsrs = 1;
    m.entry.index = index;
    if (::ioctl(fd, KVM_GET_MSRS, &m) == 1) out.msrs.push_back({index, m.entry.data});
  }
  kvm_lapic_state lapic{};
  get(fd, KVM_GET_LAPIC, &lapic, "KVM_GET_LAPIC");
  std::memcpy(out.lapic.data(), lapic.regs, out.lapic.size());
  kvm_mp_state mp{};
  get(fd, KVM_GET_MP_STATE, &mp, "KVM_GET_MP_STATE");
  if (mp.mp_state > static_cast<uint32_t>(x86::MpState::kSipiReceived))
    throw Error("vCPU " + std::to_string(vcpu.index()) + ": KVM MP state " + std::to_string(mp.mp_state) +
                " cannot be saved");
  out.mp_state = static_cast<x86::MpState>(mp.mp_state);
  kvm_vcpu_events ev{};
  get(fd, KVM_GET_VCPU_EVENTS, &ev, "KVM_GET_VCPU_EVENTS");
  auto& e = out.events;
  e.exception_injected = ev.exception.injected;
  e.exception_nr = ev.exception.nr;
  e.exception_has_error = ev.exception.has_error_code;
  e.exception_error = ev.exception.error_code;
  e.interrupt_injected = ev.interrupt.injected;
  e.interrupt_nr = ev.interrupt.nr;
  e.interrupt_soft = ev.interrupt.soft;
  e.interrupt_shadow = ev.interrupt.shadow;
  e.nmi_injected = ev.nmi.injected;
  e.nmi_pending = ev.nmi.pending;
  e.nmi_masked = ev.nmi.masked;
  e.sipi_vector = ev.sipi_vector;
}

void restore_kvm_vcpu(KvmVcpu& vcpu, const x86::VcpuSnapshot& in) {
  int fd = vcpu.fd();
  vcpu.set_state(in.regs);
  kvm_xsave xs{};
  if (!in.xsave.empty()) {
    if (in.xsave.size() != sizeof xs.region)
      throw Error("vCPU " + std::to_string(vcpu.index()) + ": the saved XSAVE area has " +
                  std::to_string(in.xsave.size()) + " bytes, KVM's " + std::to_string(sizeof xs.region));
    std::memcpy(xs.region, in.xsave.data(), in.xsave.size());
    put(fd, KVM_SET_XSAVE, &xs, "KVM_SET_XSAVE");
  } else {
    vcpu.set_fpu(in.fpu);
  }
  kvm_xcrs xcrs{};
  xcrs.nr_xcrs = 1;
  xcrs.xcrs[0].xcr = 0;
  xcrs.xcrs[0].value = in.xcr0;
  if (!in.xsave.empty()) put(fd, KVM_SET_XCRS, &xcrs, "KVM_SET_XCRS");
  for (const auto& msr : in.msrs) {
    OneMsr m{};
    m.head.nmsrs = 1;
    m.entry.index = msr.index;
    m.entry.data = msr.value;
    if (::ioctl(fd, KVM_SET_MSRS, &m) != 1)
      throw Error("vCPU " + std::to_string(vcpu.index()) + ": KVM_SET_MSRS refused MSR " + hex(msr.index));
  }
  kvm_mp_state mp{static_cast<uint32_t>(in.mp_state)};
  put(fd, KVM_SET_MP_STATE, &mp, "KVM_SET_MP_STATE");
  kvm_lapic_state lapic{};
  std::memcpy(lapic.regs, in.lapic.data(), in.lapic.size());
  put(fd, KVM_SET_LAPIC, &lapic, "KVM_SET_LAPIC");
  kvm_vcpu_events ev{};
  const auto& e = in.events;
  ev.exception.injected = e.exception_injected;
  ev.exception.nr = e.exception_nr;
  ev.exception.has_error_code = e.exception_has_error;
  ev.exception.error_code = e.exception_error;
  ev.interrupt.injected = e.interrupt_injected;
  ev.interrupt.nr = e.interrupt_nr;
  ev.interrupt.soft = e.interrupt_soft;
  ev.interrupt.shadow = e.interrupt_shadow;
  ev.nmi.injected = e.nmi_injected;
  ev.nmi.pending = e.nmi_pending;
  ev.nmi.masked = e.nmi_masked;
  ev.sipi_vector = e.sipi_vector;
  ev.flags = KVM_VCPUEVENT_VALID_NMI_PENDING | KVM_VCPUEVENT_VALID_SIPI_VECTOR | KVM_VCPUEVENT_VALID_SHADOW;
  put(fd, KVM_SET_VCPU_EVENTS, &ev, "KVM_SET_VCPU_EVENTS");
  kvm_debugregs dr{};
  for (int i = 0; i < 4; ++i) dr.db[i] = in.dr[i];
  dr.dr6 = in.dr6;
  dr.dr7 = in.dr7;
  put(fd, KVM_SET_DEBUGREGS, &dr, "KVM_SET_DEBUGREGS");
}

void save_kvm_vm(KvmEngine& engine, state::Writer& out) {
  int vm = engine.vm_fd();
  for (uint32_t chip = 0; chip < 3; ++chip) {
    kvm_irqchip c{};
    c.chip_id = chip;
    get(vm, KVM_GET_IRQCHIP, &c, "KVM_GET_IRQCHIP");
    out.section("kvm/irqchip" + std::to_string(chip)).bytes("chip", raw(&c.chip, sizeof c.chip));
  }
  kvm_pit_state2 pit{};
  get(vm, KVM_GET_PIT2, &pit, "KVM_GET_PIT2");
  out.section("kvm/pit").bytes("pit", raw(&pit, sizeof pit));
  kvm_clock_data clock{};
  get(vm, KVM_GET_CLOCK, &clock, "KVM_GET_CLOCK");
  out.section("kvm/clock").u64("clock_ns", clock.clock);
}

void restore_kvm_vm(KvmEngine& engine, const state::Document& in) {
  int vm = engine.vm_fd();
  for (uint32_t chip = 0; chip < 3; ++chip) {
    kvm_irqchip c{};
    c.chip_id = chip;
    in.section("kvm/irqchip" + std::to_string(chip))
        .bytes_exact("chip", std::span<uint8_t>(reinterpret_cast<uint8_t*>(&c.chip), sizeof c.chip));
    put(vm, KVM_SET_IRQCHIP, &c, "KVM_SET_IRQCHIP");
  }
  kvm_pit_state2 pit{};
  in.section("kvm/pit").bytes_exact("pit", std::span<uint8_t>(reinterpret_cast<uint8_t*>(&pit), sizeof pit));
  put(vm, KVM_SET_PIT2, &pit, "KVM_SET_PIT2");
  kvm_clock_data clock{};
  clock.clock = in.section("kvm/clock").u64("clock_ns");
  put(vm, KVM_SET_CLOCK, &clock, "KVM_SET_CLOCK");
}

}  // namespace keel
