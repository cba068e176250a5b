// libFuzzer target: the modern virtio-pci transport (common configuration, notify, ISR and device
// configuration regions in BAR4, MSI-X in BAR1) of virtio-console and virtio-rng, with guest RAM
// (their queues and buffers) from the input: feature negotiation, queue setup, DRIVER_OK, kicks,
// resets in any order. Configuration space accesses are mixed in so that BARs may move.
#include "fuzz_pci_platform.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  FuzzedDataProvider in(data, size);
  keel::fuzz::PciMachine m;
  m.fill_memory(in, in.ConsumeIntegralInRange<size_t>(0, 64 * 1024));
  for (int i = 0; i < 4096 && in.remaining_bytes() > 0; ++i) {
    try {
      if (in.ConsumeIntegralInRange<int>(0, 15) == 0)
        m.config_access(in);
      else
        m.bar_access(in);
    } catch (const keel::Error&) {
    }
  }
  return 0;
}
