#include "base/event_loop.h"

#include <sys/epoll.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <atomic>
#include <thread>

#include "base/error.h"
#include "base/eventfd.h"

namespace keel {
namespace {

using namespace std::chrono_literals;

TEST(EventFd, SignalAndConsume) {
  EventFd e;
  EXPECT_EQ(e.consume(), 0u);
  e.signal();
  e.signal(2);
  EXPECT_EQ(e.consume(), 3u);
  EXPECT_EQ(e.consume(), 0u);
}

TEST(EventLoop, FdCallbackSeesReadableData) {
  EventLoop loop;
  int p[2];
  ASSERT_EQ(pipe(p), 0);
  UniqueFd r(p[0]), w(p[1]);
  std::string got;
  loop.add_fd(r.get(), EPOLLIN, [&](uint32_t ev) {
    EXPECT_TRUE(ev & EPOLLIN);
    char buf[16];
    ssize_t n = read(r.get(), buf, sizeof buf);
    got.append(buf, n);
    loop.stop();
  });
  ASSERT_EQ(write(w.get(), "hi", 2), 2);
  loop.run();
  EXPECT_EQ(got, "hi");
}

TEST(EventLoop, AddingAnFdTwiceIsRefused) {
  EventLoop loop;
  EventFd e;
  loop.add_fd(e.fd(), EPOLLIN, [](uint32_t) {});
  EXPECT_THROW(loop.add_fd(e.fd(), EPOLLIN, [](uint32_t) {}), Error);
  EXPECT_THROW(loop.modify_fd(12345, EPOLLIN), Error);
}

TEST(EventLoop, RemovedFdGetsNoCallbackFromTheSameBatch) {
  EventLoop loop;
  EventFd a, b;
  int calls = 0;
  // Whichever runs first removes the other; both are ready in the same epoll_wait batch.
  loop.add_fd(a.fd(), EPOLLIN, [&](uint32_t) {
    ++calls;
    loop.remove_fd(b.fd());
    loop.remove_fd(a.fd());
  });
  loop.add_fd(b.fd(), EPOLLIN, [&](uint32_t) {
    ++calls;
    loop.remove_fd(a.fd());
    loop.remove_fd(b.fd());
  });
  a.signal();
  b.signal();
  loop.run_once(0ms);
  EXPECT_EQ(calls, 1);
  EXPECT_EQ(loop.run_once(0ms), 0);
}

TEST(EventLoop, PostFromAnotherThreadRunsOnLoopThread) {
  EventLoop loop;
  std::thread::id ran_on;
  std::thread poster([&] {
    loop.post([&] {
      ran_on = std::this_thread::get_id();
      loop.stop();
    });
  });
  loop.run();
  poster.join();
  EXPECT_EQ(ran_on, std::this_thread::get_id());
}

TEST(EventLoop, PostedWorkRunsInOrderEvenWhenStopped) {
  EventLoop loop;
  std::vector<int> order;
  loop.post([&] { order.push_back(1); });
  loop.stop();
  loop.post([&] { order.push_back(2); });
  loop.run();
  EXPECT_EQ(order, (std::vector<int>{1, 2}));
}

TEST(EventLoop, StopBeforeRunMakesRunReturn) {
  EventLoop loop;
  loop.stop();
  loop.run();  // must not block
  EXPECT_FALSE(loop.stopping());
}

TEST(EventLoop, OneShotTimerFiresOnceAfterItsDelay) {
  EventLoop loop;
  int fired = 0;
  auto start = std::chrono::steady_clock::now();
  std::chrono::steady_clock::time_point at;
  loop.add_timer(20ms, 0ns, [&] {
    ++fired;
    at = std::chrono::steady_clock::now();
    // Second timer proves the first does not fire again before it.
    loop.add_timer(30ms, 0ns, [&] { loop.stop(); });
  });
  loop.run();
  EXPECT_EQ(fired, 1);
  EXPECT_GE(at - start, 20ms);
}

TEST(EventLoop, PeriodicTimerRepeatsUntilCancelled) {
  EventLoop loop;
  int fired = 0;
  EventLoop::TimerId id = 0;
  id = loop.add_timer(1ms, 1ms, [&] {
    if (++fired == 3) {
      loop.cancel_timer(id);
      loop.add_timer(20ms, 0ns, [&] { loop.stop(); });
    }
  });
  loop.run();
  EXPECT_EQ(fired, 3);
}

TEST(EventLoop, ZeroDelayTimerFires) {
  EventLoop loop;
  bool fired = false;
  loop.add_timer(0ns, 0ns, [&] {
    fired = true;
    loop.stop();
  });
  loop.run();
  EXPECT_TRUE(fired);
}

TEST(EventLoop, CallbackExceptionPropagatesOutOfRun) {
  EventLoop loop;
  loop.post([] { throw Error("boom"); });
  EXPECT_THROW(loop.run(), Error);
}

}  // namespace
}  // namespace keel
