#include <gtest/gtest.h>

#include <cstring>
#include <vector>

#include "bus/io_bus.h"
#include "devices/pci/pci_bus.h"
#include "devices/pci/pci_device.h"

namespace keel {
namespace {

class RecordingInterrupts : public InterruptController {
 public:
  void set_irq(uint32_t, bool) override {}
  void send_msi(const MsiMessage& msg) override { sent.push_back(msg); }
  std::vector<MsiMessage> sent;
};

// BAR0: 4 KiB, 32-bit, MSI-X table at 0 and PBA at 0x800; BAR2: 16 KiB, 64-bit, plain storage.
class TestDevice : public PciDevice {
 public:
  explicit TestDevice(InterruptController* irq)
      : PciDevice({.vendor_id = 0x1234, .device_id = 0x5678, .class_code = 0xff0000}) {
    add_bar(0, 0x1000, BarKind::kMem32);
    add_bar(2, 0x4000, BarKind::kMem64);
    add_msix(4, 0, 0, 0x800, irq);
  }
  std::string name() const override { return "test device"; }
  uint8_t storage[0x4000] = {};

 protected:
  void bar_read(int bar, uint64_t offset, std::span<uint8_t> data) override {
    if (bar == 2) std::memcpy(data.data(), storage + offset, data.size());
  }
  void bar_write(int bar, uint64_t offset, std::span<const uint8_t> data) override {
    if (bar == 2) std::memcpy(storage + offset, data.data(), data.size());
  }
};

class PciTest : public ::testing::Test {
 protected:
  PciTest() : mmio("mmio"), pio("pio"), bus(mmio) {
    pio.add(PciHostBridge::kPortBase, PciHostBridge::kPortCount,
            std::make_shared<PciHostBridge>(bus));
    device = std::make_shared<TestDevice>(&irq);
    slot = bus.add(device);
  }

  void outl(uint16_t port, uint32_t v) { pio.write(port, {reinterpret_cast<uint8_t*>(&v), 4}); }
  uint32_t in(uint16_t port, unsigned size) {
    uint32_t v = 0;
    pio.read(port, {reinterpret_cast<uint8_t*>(&v), size});
    return v;
  }
  void out(uint16_t port, unsigned size, uint32_t v) {
    pio.write(port, {reinterpret_cast<uint8_t*>(&v), size});
  }
  static uint32_t address(uint8_t slot, uint8_t reg) {
    return 0x8000'0000u | (uint32_t{slot} << 11) | reg;
  }
  uint32_t cfg_read(uint8_t reg, unsigned size = 4) {
    outl(0xcf8, address(slot, reg & 0xfc));
    return in(0xcfc + (reg & 3), size);
  }
  void cfg_write(uint8_t reg, uint32_t v, unsigned size = 4) {
    outl(0xcf8, address(slot, reg & 0xfc));
    out(0xcfc + (reg & 3), size, v);
  }
  uint32_t mmio_read32(uint64_t addr) {
    uint32_t v = 0;
    mmio.read(addr, {reinterpret_cast<uint8_t*>(&v), 4});
    return v;
  }
  void mmio_write32(uint64_t addr, uint32_t v) {
    mmio.write(addr, {reinterpret_cast<uint8_t*>(&v), 4});
  }

  IoBus mmio, pio;
  PciBus bus;
  RecordingInterrupts irq;
  std::shared_ptr<TestDevice> device;
  uint8_t slot = 0;
};

TEST_F(PciTest, HostBridgeIsFunctionZeroWithBridgeClass) {
  outl(0xcf8, address(0, 0));
  EXPECT_EQ(in(0xcfc, 4), 0x0008'1b36u);
  outl(0xcf8, address(0, 0x08));
  EXPECT_EQ(in(0xcfe, 2), 0x0600u);  // class 06, subclass 00
  EXPECT_EQ(slot, 1);
}

TEST_F(PciTest, ConfigDataPortsTakeEveryAccessSize) {
  outl(0xcf8, address(slot, 0));
  EXPECT_EQ(in(0xcfc, 1), 0x34u);
  EXPECT_EQ(in(0xcfd, 1), 0x12u);
  EXPECT_EQ(in(0xcfe, 1), 0x78u);
  EXPECT_EQ(in(0xcff, 1), 0x56u);
  EXPECT_EQ(in(0xcfe, 2), 0x5678u);
  EXPECT_EQ(in(0xcfc, 4), 0x5678'1234u);
  // A byte write through 0xCFD lands in the command register's high byte (INTx disable).
  outl(0xcf8, address(slot, 0x04));
  out(0xcfd, 1, 0x04);
  EXPECT_EQ(in(0xcfc, 2) & pci::kCommandIntxDisable, pci::kCommandIntxDisable);
}

TEST_F(PciTest, AddressRegisterNeedsDwordWritesAndEnableBit) {
  outl(0xcf8, address(slot, 0));
  EXPECT_EQ(in(0xcf8, 4), address(slot, 0));
  out(0xcfb, 1, 0x01);  // the type-2 probe Linux does must not disturb CONFIG_ADDRESS
  EXPECT_EQ(in(0xcf8, 4), address(slot, 0));
  outl(0xcf8, address(slot, 0) & ~0x8000'0000u);
  EXPECT_EQ(in(0xcfc, 4), 0xffff'ffffu);
}

TEST_F(PciTest, EmptySlotsAndOtherFunctionsReadAllOnes) {
  outl(0xcf8, address(7, 0));
  EXPECT_EQ(in(0xcfc, 4), 0xffff'ffffu);
  outl(0xcf8, address(slot, 0) | (1u << 8));  // function 1
  EXPECT_EQ(in(0xcfc, 2), 0xffffu);
  outl(0xcf8, address(slot, 0) | (1u << 16));  // bus 1
  EXPECT_EQ(in(0xcfc, 4), 0xffff'ffffu);
}

TEST_F(PciTest, BarsAreSizedByWritingAllOnes) {
  uint32_t bar0 = cfg_read(0x10);
  cfg_write(0x10, 0xffff'ffff);
  EXPECT_EQ(cfg_read(0x10), 0xffff'f000u);
  cfg_write(0x10, bar0);
  EXPECT_EQ(cfg_read(0x10), bar0);

  EXPECT_EQ(cfg_read(0x18) & 0x7, 0x4u);  // 64-bit memory BAR
  cfg_write(0x18, 0xffff'ffff);
  cfg_write(0x1c, 0xffff'ffff);
  EXPECT_EQ(cfg_read(0x18), 0xffff'c004u);
  EXPECT_EQ(cfg_read(0x1c), 0xffff'ffffu);
  // Unimplemented BARs read as zero whatever is written.
  cfg_write(0x14, 0xffff'ffff);
  EXPECT_EQ(cfg_read(0x14), 0u);
}

TEST_F(PciTest, BarsArePlacedInTheMmioWindowAndMapped) {
  uint64_t bar0 = cfg_read(0x10) & ~0xfu;
  uint64_t bar2 = (cfg_read(0x18) & ~0xfu) | (uint64_t{cfg_read(0x1c)} << 32);
  EXPECT_GE(bar0, kPciMmioWindowBase);
  EXPECT_LT(bar2 + 0x4000, kPciMmioWindowEnd);
  EXPECT_EQ(bar0 % 0x1000, 0u);
  EXPECT_EQ(bar2 % 0x4000, 0u);
  EXPECT_TRUE(cfg_read(0x04) & pci::kCommandMemory);
  EXPECT_TRUE(cfg_read(0x04) & pci::kCommandBusMaster);
  mmio_write32(bar2 + 0x10, 0xdeadbeef);
  EXPECT_EQ(device->storage[0x10], 0xef);
  EXPECT_EQ(mmio_read32(bar2 + 0x10), 0xdeadbeefu);
}

TEST_F(PciTest, ReprogrammedBarMovesOnTheMmioBus) {
  uint64_t old_base = bus.mapped_address(slot, 2);
  ASSERT_NE(old_base, 0u);
  uint64_t new_base = 0xd000'0000;
  cfg_write(0x18, static_cast<uint32_t>(new_base));
  cfg_write(0x1c, 0);
  EXPECT_EQ(bus.mapped_address(slot, 2), new_base);
  device->storage[0] = 0x42;
  EXPECT_EQ(mmio_read32(new_base) & 0xff, 0x42u);
  EXPECT_FALSE(mmio.read(old_base, std::span<uint8_t>(device->storage + 100, 4)));
}

TEST_F(PciTest, MemoryEnableBitMapsAndUnmapsBars) {
  uint64_t base = bus.mapped_address(slot, 2);
  uint32_t command = cfg_read(0x04, 2);
  cfg_write(0x04, command & ~pci::kCommandMemory, 2);
  EXPECT_EQ(bus.mapped_address(slot, 2), 0u);
  EXPECT_EQ(mmio_read32(base), 0xffff'ffffu);
  cfg_write(0x04, command, 2);
  EXPECT_EQ(bus.mapped_address(slot, 2), base);
}

TEST_F(PciTest, CapabilityListReachesMsix) {
  EXPECT_TRUE(cfg_read(0x06, 2) & pci::kStatusCapabilities);
  uint8_t cap = cfg_read(0x34, 1);
  ASSERT_GE(cap, 0x40);
  EXPECT_EQ(cfg_read(cap, 1), pci::kCapIdMsix);
  EXPECT_EQ(cfg_read(cap + 1, 1), 0u);         // last in the list
  EXPECT_EQ(cfg_read(cap + 2, 2) & 0x7ff, 3u);  // table size - 1
  EXPECT_EQ(cfg_read(cap + 4), 0u);             // table: BAR0 offset 0
  EXPECT_EQ(cfg_read(cap + 8), 0x800u);         // PBA: BAR0 offset 0x800
}

class MsixTest : public PciTest {
 protected:
  void SetUp() override {
    cap = cfg_read(0x34, 1);
    table = bus.mapped_address(slot, 0);
    mmio_write32(table + 16 * 1 + 0, 0xfee0'0000);
    mmio_write32(table + 16 * 1 + 4, 0);
    mmio_write32(table + 16 * 1 + 8, 0x41);
  }
  void set_control(uint16_t bits) { cfg_write(cap + 2, bits, 2); }
  uint8_t cap = 0;
  uint64_t table = 0;
};

TEST_F(MsixTest, MaskedVectorIsPendingUntilUnmasked) {
  set_control(MsixTable::kControlEnable);
  EXPECT_EQ(mmio_read32(table + 16 + 12), 1u);  // vectors start masked
  EXPECT_FALSE(device->msix()->notify(1));
  EXPECT_TRUE(irq.sent.empty());
  EXPECT_EQ(mmio_read32(table + 0x800), 0x2u);  // pending bit 1
  mmio_write32(table + 16 + 12, 0);             // unmask
  ASSERT_EQ(irq.sent.size(), 1u);
  EXPECT_EQ(irq.sent[0].address, 0xfee0'0000u);
  EXPECT_EQ(irq.sent[0].data, 0x41u);
  EXPECT_EQ(mmio_read32(table + 0x800), 0u);
  EXPECT_TRUE(device->msix()->notify(1));
  EXPECT_EQ(irq.sent.size(), 2u);
}

TEST_F(MsixTest, FunctionMaskHoldsEveryVector) {
  mmio_write32(table + 16 + 12, 0);
  set_control(MsixTable::kControlEnable | MsixTable::kControlFunctionMask);
  EXPECT_EQ(cfg_read(cap + 2, 2) & 0xc000, 0xc000u);
  device->msix()->notify(1);
  EXPECT_TRUE(irq.sent.empty());
  set_control(MsixTable::kControlEnable);
  EXPECT_EQ(irq.sent.size(), 1u);
}

TEST_F(MsixTest, DisabledMsixDropsNotificationsAndOutOfRangeVectorsAreIgnored) {
  mmio_write32(table + 16 + 12, 0);
  EXPECT_FALSE(device->msix()->notify(1));
  set_control(MsixTable::kControlEnable);
  EXPECT_FALSE(device->msix()->notify(9));
  EXPECT_TRUE(irq.sent.empty());
  // Table accesses past the last entry read zero and are ignored.
  mmio_write32(table + 16 * 4, 0x1234);
  EXPECT_EQ(mmio_read32(table + 16 * 4), 0u);
}

}  // namespace
}  // namespace keel
