// libFuzzer target: the PCI configuration space through mechanism #1 (ports 0xCF8-0xCFF) with
// virtio devices on the bus: any sequence of address and data accesses of any size, BAR sizing
// and moving, capability walks, command-register toggles. Must never crash or corrupt the bus.
#include "fuzz_pci_platform.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  FuzzedDataProvider in(data, size);
  keel::fuzz::PciMachine m;
  for (int i = 0; i < 4096 && in.remaining_bytes() > 0; ++i) {
    try {
      if (in.ConsumeIntegralInRange<int>(0, 7) == 0)
        m.bar_access(in);  // now and then, see where the BARs went
      else
        m.config_access(in);
    } catch (const keel::Error&) {
    }
  }
  return 0;
}
