#include <gtest/gtest.h>

#include <atomic>
#include <future>

#include "engine/emu/platform/deadline_watcher.h"
#include "engine/emu/platform/guest_clock.h"

namespace keel::emu {
namespace {

class Client : public DeadlineClient {
 public:
  uint64_t next_deadline_ns() const override { return deadline.load(); }
  void deadline_reached() override {
    if (++reached == 1) first.set_value(clock_now());
  }
  uint64_t clock_now() const { return host_monotonic_ns(); }

  std::atomic<uint64_t> deadline{kNever};
  std::atomic<int> reached{0};
  std::promise<uint64_t> first;
};

TEST(EmuPlatformWatcher, AnEarlierDeadlineCutsTheWaitShort) {
  HostGuestClock clock;
  Client client;
  auto fired = client.first.get_future();
  DeadlineWatcher watcher(clock);
  watcher.add(&client);
  client.deadline = clock.now_ns() + 3'600'000'000'000;  // an hour away
  watcher.start();
  uint64_t due = clock.now_ns() + 2'000'000;
  client.deadline = due;
  watcher.rearm(due);
  ASSERT_EQ(fired.wait_for(std::chrono::seconds(10)), std::future_status::ready);
  EXPECT_GE(fired.get(), due);
  EXPECT_EQ(client.reached.load(), 1);
}

TEST(EmuPlatformWatcher, StopsCleanlyWithNothingArmed) {
  HostGuestClock clock;
  Client client;
  DeadlineWatcher watcher(clock);
  watcher.add(&client);
  watcher.start();
  watcher.rearm(kNever);
}  // the destructor joins the thread

}  // namespace
}  // namespace keel::emu
