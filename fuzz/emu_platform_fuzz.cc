// Everything a guest (or a device) can throw at the emu platform: APIC, IOAPIC, PIT, PIC and port
// 0x61 accesses of any size at any offset, MSR writes (APIC base, TSC deadline, kvm-clock with
// any address), device lines, MSIs, interrupt acceptance and time jumps, in any order, on two
// vCPUs. Nothing may crash, hang or read outside guest RAM.
#include <atomic>
#include <cstdint>
#include <cstring>
#include <memory>

#include "engine/emu/platform/pc_platform.h"

namespace {

using namespace keel;
using namespace keel::emu;

class FuzzClock final : public GuestClock {
 public:
  uint64_t tsc_hz() const override { return kDefaultTscHz; }
  uint64_t read_tsc() const override { return mul_div(ns, kDefaultTscHz, kNsPerSec); }
  uint64_t now_ns() const override { return ns; }
  uint64_t ns = 1'000'000'000;
};

class Input {
 public:
  Input(const uint8_t* data, size_t size) : data_(data), size_(size) {}
  bool empty() const { return pos_ >= size_; }
  uint8_t u8() { return pos_ < size_ ? data_[pos_++] : 0; }
  uint64_t u64(int bytes) {
    uint64_t v = 0;
    for (int i = 0; i < bytes; ++i) v |= uint64_t{u8()} << (8 * i);
    return v;
  }

 private:
  const uint8_t* data_;
  size_t size_;
  size_t pos_ = 0;
};

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  GuestMemory memory(1 << 20);
  IoBus pio("pio"), mmio("mmio");
  EngineContext ctx{memory, pio, mmio};
  auto clock_owner = std::make_unique<FuzzClock>();
  FuzzClock* clock = clock_owner.get();
  PcPlatformConfig config;
  config.vcpus = 2;
  config.start_watcher = false;  // the fuzzer drives time; no thread
  PcPlatform platform(ctx, config, std::move(clock_owner));

  Input in(data, size);
  uint8_t buf[16];
  while (!in.empty()) {
    uint8_t op = in.u8();
    LocalApicModel& apic = platform.apic(op >> 7);
    size_t len = in.u8() % 9;  // 0..8 bytes
    switch (op & 0xF) {
      case 0: {  // LAPIC MMIO write
        uint32_t off = static_cast<uint32_t>(in.u64(2)) & 0x1FFF;
        for (size_t i = 0; i < len; ++i) buf[i] = in.u8();
        apic.mmio_write(off, {buf, len});
        break;
      }
      case 1:
        apic.mmio_read(static_cast<uint32_t>(in.u64(2)) & 0x1FFF, {buf, len});
        break;
      case 2: {  // MMIO bus (IOAPIC)
        uint64_t addr = kIoApicBase + (in.u64(2) & 0x1FFF);
        for (size_t i = 0; i < len; ++i) buf[i] = in.u8();
        if (in.u8() & 1)
          mmio.write(addr, {buf, len});
        else
          mmio.read(addr, {buf, len});
        break;
      }
      case 3: {  // port I/O around the PIT, port 0x61 and the PICs
        static const uint16_t ports[] = {0x20, 0x21, 0x40, 0x41, 0x42, 0x43, 0x61, 0xA0, 0xA1};
        uint16_t port = ports[in.u8() % 9];
        size_t n = len ? (len > 4 ? 4 : len) : 1;
        for (size_t i = 0; i < n; ++i) buf[i] = in.u8();
        if (in.u8() & 1)
          pio.write(port, {buf, n});
        else
          pio.read(port, {buf, n});
        break;
      }
      case 4:
        platform.interrupts().set_irq(in.u8() % 32, in.u8() & 1);
        break;
      case 5: {
        MsiMessage m;
        m.address = (in.u8() & 1) ? 0xFEE0'0000 | (in.u64(3) & 0xFFFFF) : in.u64(8);
        m.data = static_cast<uint32_t>(in.u64(4));
        platform.interrupts().send_msi(m);
        break;
      }
      case 6: {  // the CPU taking an interrupt
        int v = apic.pending_vector();
        if (v >= 0) apic.accept(v);
        break;
      }
      case 7:
        clock->ns += in.u64(in.u8() % 8);
        break;
      case 8:
        apic.set_tsc_deadline(in.u64(8));
        (void)apic.tsc_deadline();
        break;
      case 9:
        apic.set_base_msr(in.u64(8) & (0x000F'FFFF'FFFF'F000ull | 0x900));
        break;
      case 10:
        apic.set_cr8(in.u8());
        (void)apic.cr8();
        break;
      case 11: {
        static const uint32_t msrs[] = {0x11, 0x12, 0x4b564d00, 0x4b564d01, 0x10};
        uint64_t v = 0;
        KvmClock& kc = platform.kvm_clock(op >> 7);
        uint32_t msr = msrs[in.u8() % 5];
        kc.write_msr(msr, in.u64(8));
        kc.read_msr(msr, v);
        break;
      }
      case 12: {  // HLT: returns at once only if something is deliverable; never block here
        if (apic.maybe_pending() && apic.pending_vector() >= 0) {
          std::atomic<bool> kicked{false};
          apic.wait_for_interrupt(kicked);
        }
        break;
      }
      case 13:
        apic.take_nmi();
        apic.take_init();
        apic.take_sipi();
        break;
      default:
        (void)apic.next_deadline_ns();
        platform.pit().poll(clock->ns);
        break;
    }
  }
  return 0;
}
