// libFuzzer target: an MSI-X table and PBA as the guest programs them (table writes and reads of
// any size at any offset, PBA reads, the capability's enable and function-mask bits) interleaved
// with the device raising vectors, including out-of-range ones.
#include <fuzzer/FuzzedDataProvider.h>

#include <cstring>

#include "devices/pci/msix.h"

namespace {
class CountingInterrupts : public keel::InterruptController {
 public:
  void set_irq(uint32_t, bool) override {}
  void send_msi(const keel::MsiMessage&) override { ++sent; }
  uint64_t sent = 0;
};
}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  FuzzedDataProvider in(data, size);
  CountingInterrupts irqs;
  keel::MsixTable table(in.ConsumeIntegralInRange<uint16_t>(1, 64), &irqs);
  for (int i = 0; i < 4096 && in.remaining_bytes() > 0; ++i) {
    uint8_t buf[8] = {};
    size_t len = in.ConsumeIntegralInRange<size_t>(1, 8);
    uint64_t offset = in.ConsumeIntegralInRange<uint64_t>(0, table.table_bytes() + 16);
    switch (in.ConsumeIntegralInRange<int>(0, 5)) {
      case 0: {
        uint64_t v = in.ConsumeIntegral<uint64_t>();
        std::memcpy(buf, &v, len);
        table.table_write(offset, std::span<const uint8_t>(buf, len));
        break;
      }
      case 1: table.table_read(offset, std::span<uint8_t>(buf, len)); break;
      case 2: table.pba_read(offset % (table.pba_bytes() + 8), std::span<uint8_t>(buf, len)); break;
      case 3: table.set_control(in.ConsumeIntegral<uint16_t>()); break;
      case 4: table.notify(in.ConsumeIntegral<uint16_t>() % (table.vectors() + 4)); break;
      case 5: table.reset(); break;
    }
  }
  return 0;
}
