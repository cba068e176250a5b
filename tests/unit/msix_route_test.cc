// MsixTable and the per-vector MsiRoutes it owns, against a controller that records what the
// routes are asked to do (on KVM: irqfd GSI routes, tests/unit/msix_guest_test.cc).
#include <gtest/gtest.h>

#include <cstring>
#include <memory>
#include <vector>

#include "devices/pci/msix.h"

namespace keel {
namespace {

constexpr uint64_t kAddr = 0xFEE0'0000;
constexpr uint32_t kMasked = 1;

class RouteRecorder : public InterruptController {
 public:
  struct Event {
    enum Kind { kReprogram, kFire } kind;
    int route;
    MsiMessage msg;
    bool operator==(const Event&) const = default;
  };

  void set_irq(uint32_t, bool) override {}
  void send_msi(const MsiMessage&) override {
    ADD_FAILURE() << "MsixTable must fire its routes, not call send_msi";
  }
  std::unique_ptr<MsiRoute> create_msi_route(const MsiMessage& msg) override {
    return std::make_unique<Route>(*this, created++, msg);
  }

  int created = 0;
  int live = 0;
  std::vector<Event> events;

 private:
  class Route : public MsiRoute {
   public:
    Route(RouteRecorder& owner, int id, const MsiMessage& msg) : owner_(owner), id_(id), msg_(msg) {
      ++owner_.live;
    }
    ~Route() override { --owner_.live; }
    void set_message(const MsiMessage& msg) override {
      msg_ = msg;
      owner_.events.push_back({Event::kReprogram, id_, msg});
    }
    void fire() override { owner_.events.push_back({Event::kFire, id_, msg_}); }

   private:
    RouteRecorder& owner_;
    int id_;
    MsiMessage msg_;
  };
};

using Event = RouteRecorder::Event;
Event reprogram(int route, uint32_t data) { return {Event::kReprogram, route, {kAddr, data}}; }
Event fire(int route, uint32_t data) { return {Event::kFire, route, {kAddr, data}}; }

class MsixRouteTest : public ::testing::Test {
 protected:
  void write32(uint16_t vector, uint32_t reg, uint32_t value) {
    uint8_t bytes[4];
    std::memcpy(bytes, &value, 4);
    table.table_write(vector * MsixTable::kEntrySize + reg, bytes);
  }
  // What a driver does: mask, address low/high, data, then the previous mask state.
  void program(uint16_t vector, uint32_t data, bool unmask = true) {
    write32(vector, 12, kMasked);
    write32(vector, 0, static_cast<uint32_t>(kAddr));
    write32(vector, 4, 0);
    write32(vector, 8, data);
    if (unmask) write32(vector, 12, 0);
  }
  uint64_t pba() {
    uint8_t bytes[8];
    table.pba_read(0, bytes);
    uint64_t v;
    std::memcpy(&v, bytes, 8);
    return v;
  }

  RouteRecorder irq;
  MsixTable table{4, &irq};
};

TEST_F(MsixRouteTest, OneRoutePerVectorFreedWithTheTable) {
  EXPECT_EQ(irq.created, 4);
  {
    MsixTable other(3, &irq);
    EXPECT_EQ(irq.live, 7);
  }
  EXPECT_EQ(irq.live, 4);
  MsixTable without_controller(2, nullptr);
  without_controller.set_control(MsixTable::kControlEnable);
  EXPECT_FALSE(without_controller.notify(0));  // masked: pending, and no route to fire later
}

TEST_F(MsixRouteTest, RouteIsReprogrammedOnceWhenTheRewrittenVectorIsUnmasked) {
  table.set_control(MsixTable::kControlEnable);
  program(1, 0x41);
  EXPECT_EQ(irq.events, std::vector<Event>{reprogram(1, 0x41)});  // not once per dword
  EXPECT_TRUE(table.notify(1));
  EXPECT_TRUE(table.notify(1));
  program(1, 0x52);
  EXPECT_TRUE(table.notify(1));
  EXPECT_EQ(irq.events, (std::vector<Event>{reprogram(1, 0x41), fire(1, 0x41), fire(1, 0x41),
                                            reprogram(1, 0x52), fire(1, 0x52)}));
  // Rewriting the same message does not touch the route; a rewrite while unmasked (against the
  // spec's advice) still takes effect at once.
  irq.events.clear();
  program(1, 0x52);
  write32(1, 8, 0x53);
  EXPECT_EQ(irq.events, std::vector<Event>{reprogram(1, 0x53)});
}

TEST_F(MsixRouteTest, MaskedVectorIsPendingAndUnmaskDeliversItOnce) {
  table.set_control(MsixTable::kControlEnable);
  program(2, 0x61, /*unmask=*/false);
  EXPECT_FALSE(table.notify(2));
  EXPECT_FALSE(table.notify(2));
  EXPECT_TRUE(irq.events.empty());
  EXPECT_EQ(pba(), 0b100u);
  write32(2, 12, 0);
  EXPECT_EQ(irq.events, (std::vector<Event>{reprogram(2, 0x61), fire(2, 0x61)}));
  EXPECT_EQ(pba(), 0u);
  write32(2, 12, 0);  // unmasking again sends nothing more
  EXPECT_EQ(irq.events.size(), 2u);
}

TEST_F(MsixRouteTest, FunctionMaskHoldsEveryVectorUntilCleared) {
  table.set_control(MsixTable::kControlEnable | MsixTable::kControlFunctionMask);
  program(0, 0x30);
  program(3, 0x33);
  EXPECT_TRUE(irq.events.empty());  // cannot fire yet: routes stay as they are
  EXPECT_FALSE(table.notify(3));
  EXPECT_EQ(pba(), 0b1000u);
  EXPECT_TRUE(irq.events.empty());
  table.set_control(MsixTable::kControlEnable);
  EXPECT_EQ(irq.events,
            (std::vector<Event>{reprogram(0, 0x30), reprogram(3, 0x33), fire(3, 0x33)}));
  EXPECT_EQ(pba(), 0u);
}

TEST_F(MsixRouteTest, DisabledMsixDropsNotificationsAndEnablingProgramsTheRoutes) {
  program(1, 0x41);
  EXPECT_FALSE(table.notify(1));
  EXPECT_EQ(pba(), 0u);
  EXPECT_TRUE(irq.events.empty());
  table.set_control(MsixTable::kControlEnable);
  EXPECT_EQ(irq.events, std::vector<Event>{reprogram(1, 0x41)});
  EXPECT_TRUE(table.notify(1));
  table.set_control(0);
  EXPECT_FALSE(table.notify(1));
  EXPECT_EQ(irq.events, (std::vector<Event>{reprogram(1, 0x41), fire(1, 0x41)}));
}

TEST_F(MsixRouteTest, ResetKeepsTheRoutesAndReprogramsThemForTheNextDriver) {
  table.set_control(MsixTable::kControlEnable);
  program(1, 0x41);
  table.reset();
  EXPECT_EQ(irq.live, 4);
  EXPECT_FALSE(table.notify(1));  // disabled again
  table.set_control(MsixTable::kControlEnable);
  program(1, 0x45);
  EXPECT_TRUE(table.notify(1));
  EXPECT_EQ(irq.events,
            (std::vector<Event>{reprogram(1, 0x41), reprogram(1, 0x45), fire(1, 0x45)}));
}

}  // namespace
}  // namespace keel
