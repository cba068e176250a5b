// Guest port I/O into the legacy devices: arbitrary sequences of reads and writes of any size
// at any offset must never crash, hang or grow memory without bound.
#include <cstdint>
#include <vector>

#include "devices/legacy/boot_progress.h"
#include "devices/legacy/cmos_rtc.h"
#include "devices/legacy/i8042.h"
#include "devices/legacy/serial16550.h"

namespace {

class NullIrq : public keel::InterruptController {
 public:
  void set_irq(uint32_t, bool) override {}
  void send_msi(const keel::MsiMessage&) override {}
};

class NullPower : public keel::PowerControl {
 public:
  void request_stop(keel::StopReason, std::string) override {}
};

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  NullIrq irq;
  NullPower power;
  keel::Serial16550 serial(keel::IrqLine(&irq, 4), [](std::span<const uint8_t>) {});
  keel::I8042 kbc(power, keel::IrqLine(&irq, 1), keel::IrqLine(&irq, 12));
  keel::CmosRtc rtc(512 << 20, 0);
  keel::BootProgress progress;
  keel::BusDevice* devices[] = {&serial, &kbc, &rtc, &progress};
  const uint64_t windows[] = {8, 5, 2, 1};
  // Each operation: device, offset, size (1..8), direction, then `size` bytes of data.
  size_t i = 0;
  while (i + 3 <= size) {
    unsigned dev = data[i] % 4;
    uint64_t off = data[i + 1] % windows[dev];
    size_t len = (data[i + 2] & 7) + 1;
    bool write = data[i + 2] & 0x80;
    i += 3;
    if (len > windows[dev] - off) len = windows[dev] - off;  // the bus never splits ranges
    std::vector<uint8_t> buf(len, 0);
    for (size_t j = 0; j < len && i < size; ++j) buf[j] = data[i++];
    if (write) devices[dev]->write(off, buf);
    else devices[dev]->read(off, buf);
    if (dev == 0 && (data[i - 1] & 1)) serial.push_input(buf);
  }
  return 0;
}
