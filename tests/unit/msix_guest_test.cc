// MSI-X vectors reaching a real guest through the engine's routes: on kvm an irqfd per vector
// (eventfd + GSI route, reprogrammed with KVM_SET_GSI_ROUTING), on emu send_msi.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstring>
#include <functional>
#include <thread>

#include "base/eventfd.h"
#include "devices/pci/msix.h"
#include "engine/engine_factory.h"
#include "engine/kvm/kvm_engine.h"
#include "guest_harness.h"

namespace keel::guest_test {
namespace {

// tests/guests/irqfd_msi.asm writes this port when it is ready, then waits for vector 0x41.
constexpr uint16_t kPortReady = 0x50C;
constexpr uint64_t kLapicMsi = 0xFEE0'0000;  // fixed delivery to APIC id 0

void write32(MsixTable& table, uint16_t vector, uint32_t reg, uint32_t value) {
  uint8_t bytes[4];
  std::memcpy(bytes, &value, 4);
  table.table_write(vector * MsixTable::kEntrySize + reg, bytes);
}

// Enables MSI-X and programs vector 0 with `vector` to the BSP, unmasked: it can fire.
void enable_vector0(MsixTable& table, uint8_t vector) {
  table.set_control(MsixTable::kControlEnable);
  write32(table, 0, 0, static_cast<uint32_t>(kLapicMsi));
  write32(table, 0, 8, vector);
  write32(table, 0, 12, 0);
}

class MsixGuest : public ::testing::TestWithParam<Accel> {
 protected:
  void SetUp() override {
    if (auto why = engine_unavailable(GetParam())) GTEST_SKIP() << *why;
    if (auto why = behaviour_unavailable(GetParam(), "timer_interrupt_cpl0")) GTEST_SKIP() << *why;
  }
};

// The guest's driver programmed vector 0 with 0x42, then masked it and rewrote it to 0x41. The
// device raises it while masked (pending, nothing delivered: the guest has no 0x42 handler and
// would fault), and the unmask delivers it with the new message.
TEST_P(MsixGuest, PendingVectorIsDeliveredWithItsRewrittenMessageOnUnmask) {
  GuestHarness h(GetParam(), "irqfd_msi");
  MsixTable table(1, &h.engine().interrupts());
  enable_vector0(table, 0x42);  // on kvm the route is programmed now
  write32(table, 0, 12, 1);
  write32(table, 0, 8, 0x41);
  if (auto* kvm = dynamic_cast<KvmEngine*>(&h.engine())) {
    // The table holds the first MSI GSI (24): its vector is an irqfd, not KVM_SIGNAL_MSI.
    EventFd probe;
    uint32_t gsi = kvm->add_irqfd(MsiMessage{kLapicMsi, 0x41}, probe.fd());
    EXPECT_EQ(gsi, 25u);
    kvm->remove_irqfd(gsi, probe.fd());
  }

  bool held = false;
  h.pio().add(kPortReady, 1, std::make_shared<OnWrite>([&] {
    held = !table.notify(0);
    write32(table, 0, 12, 0);
  }));
  auto result = h.run();
  ASSERT_EQ(result.status, 0) << result.summary();
  EXPECT_TRUE(held);
  EXPECT_EQ(result.reports, std::vector<uint32_t>{1});
}

// A device worker thread raises the vector while the vCPU sleeps in hlt (kvm: inside KVM_RUN).
TEST_P(MsixGuest, VectorRaisedOnAnotherThreadWakesTheGuest) {
  GuestHarness h(GetParam(), "irqfd_msi");
  MsixTable table(1, &h.engine().interrupts());
  enable_vector0(table, 0x41);

  std::jthread device;
  bool fired = false;
  h.pio().add(kPortReady, 1, std::make_shared<OnWrite>([&] {
    device = std::jthread([&] { fired = table.notify(0); });
  }));
  auto result = h.run();
  if (device.joinable()) device.join();
  ASSERT_EQ(result.status, 0) << result.summary();
  EXPECT_TRUE(fired);
  EXPECT_EQ(result.reports, std::vector<uint32_t>{1});
}

INSTANTIATE_TEST_SUITE_P(Engines, MsixGuest, ::testing::Values(Accel::kKvm, Accel::kEmu),
                         [](const ::testing::TestParamInfo<Accel>& info) {
                           return std::string(to_string(info.param));
                         });

// On kvm a vector's route is an irqfd: a bare write to its eventfd, from any thread, is the whole
// interrupt path (no ioctl, no keel code on the vCPU side).
TEST(KvmMsiRoute, WritingTheEventfdAloneDeliversTheMessage) {
  if (auto why = engine_unavailable(Accel::kKvm)) GTEST_SKIP() << *why;
  GuestHarness h(Accel::kKvm, "irqfd_msi");
  auto route = h.engine().interrupts().create_msi_route({kLapicMsi, 0x42});
  auto* irqfd = dynamic_cast<KvmMsiRoute*>(route.get());
  ASSERT_NE(irqfd, nullptr) << "KVM refused the irqfd route (see the warning above)";
  EXPECT_GE(irqfd->gsi(), 24u);
  route->set_message({kLapicMsi, 0x41});

  std::jthread writer;
  h.pio().add(kPortReady, 1, std::make_shared<OnWrite>([&] {
    writer = std::jthread([fd = irqfd->eventfd()] {
      uint64_t one = 1;
      EXPECT_EQ(::write(fd, &one, sizeof one), 8);
    });
  }));
  auto result = h.run();
  if (writer.joinable()) writer.join();
  ASSERT_EQ(result.status, 0) << result.summary();
  EXPECT_EQ(result.reports, std::vector<uint32_t>{1});
}

}  // namespace
}  // namespace keel::guest_test
