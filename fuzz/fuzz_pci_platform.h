// Shared by the PCI fuzz targets: bus 0 with the devices that run inline on the vCPU thread
// (virtio-console, virtio-rng: no worker threads, so runs are deterministic), behind the type-1
// configuration ports and the MMIO bus, as a guest sees them.
#pragma once

#include <fuzzer/FuzzedDataProvider.h>

#include <cstdint>
#include <memory>
#include <vector>

#include "bus/io_bus.h"
#include "devices/pci/pci_bus.h"
#include "devices/virtio/virtio_platform.h"
#include "memory/guest_memory.h"

namespace keel::fuzz {

class NullInterrupts : public InterruptController {
 public:
  void set_irq(uint32_t, bool) override {}
  void send_msi(const MsiMessage&) override {}
};

struct PciMachine {
  GuestMemory memory{1 << 20};
  IoBus pio{"pio"}, mmio{"mmio"};
  NullInterrupts irqs;
  std::unique_ptr<PciPlatform> pci;

  PciMachine() {
    VirtioConfig config;
    config.console = true;
    config.rng = true;
    pci = std::make_unique<PciPlatform>(config, memory, pio, mmio, irqs,
                                        [](std::span<const uint8_t>) {});
  }

  // One port access to 0xCF8-0xCFF.
  void config_access(FuzzedDataProvider& in) {
    uint64_t port = 0xCF8 + in.ConsumeIntegralInRange<uint64_t>(0, 7);
    size_t size = in.PickValueInArray({1, 2, 4});
    uint8_t buf[4] = {};
    if (in.ConsumeBool()) {
      uint32_t v = in.ConsumeIntegral<uint32_t>();
      std::memcpy(buf, &v, size);
      pio.write(port, std::span<const uint8_t>(buf, size));
    } else {
      pio.read(port, std::span<uint8_t>(buf, size));
    }
  }

  // One MMIO access inside (or just around) a BAR of a device on the bus.
  void bar_access(FuzzedDataProvider& in) {
    uint8_t slot = in.ConsumeIntegralInRange<uint8_t>(0, 3);
    int bar = in.ConsumeIntegralInRange<int>(0, 5);
    uint64_t base = pci->bus().mapped_address(slot, bar);
    if (base == 0) base = kPciMmioWindowBase;
    uint64_t addr = base + in.ConsumeIntegralInRange<uint64_t>(0, 0x4100);
    size_t size = in.PickValueInArray({1, 2, 4, 8});
    uint8_t buf[8] = {};
    if (in.ConsumeBool()) {
      uint64_t v = in.ConsumeIntegral<uint64_t>();
      std::memcpy(buf, &v, size);
      mmio.write(addr, std::span<const uint8_t>(buf, size));
    } else {
      mmio.read(addr, std::span<uint8_t>(buf, size));
    }
  }

  // Guest RAM the devices may read (queues, buffers): filled from the input.
  void fill_memory(FuzzedDataProvider& in, size_t bytes) {
    std::vector<uint8_t> ram = in.ConsumeBytes<uint8_t>(bytes);
    memory.write(0, ram.data(), ram.size());
  }
};

}  // namespace keel::fuzz
