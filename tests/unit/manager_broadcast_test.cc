// ByteHistory and MessageHistory (manager/broadcast.h): positions, trimming to capacity, readers
// that fall behind, waiting readers woken by a write or by close().
#include "manager/broadcast.h"

#include <gtest/gtest.h>

#include <thread>

namespace keel::manager {
namespace {

using namespace std::chrono_literals;

TEST(ByteHistory, ReadersKeepTheirOwnPositionsAndLateOnesGetTheLastCapacityBytes) {
  ByteHistory h(8);
  uint64_t early = h.end();
  h.append("hello ");
  EXPECT_EQ(h.read(early, 0ms), "hello ");
  EXPECT_EQ(early, 6u);
  h.append("world!");
  EXPECT_EQ(h.end(), 12u);
  EXPECT_EQ(h.read(early, 0ms), "world!");
  uint64_t late = 0;  // fell behind: gets what is kept
  EXPECT_EQ(h.read(late, 0ms), "o world!");
  EXPECT_EQ(late, 12u);
  EXPECT_EQ(h.read(late, 0ms), "");  // nothing new: times out empty
}

TEST(MessageHistory, KeepsTheLastCapacityMessagesInOrder) {
  MessageHistory h(2);
  uint64_t position = 0;
  for (const char* m : {"a", "b", "c"}) h.publish(m);
  EXPECT_EQ(h.end(), 3u);
  EXPECT_EQ(h.read(position, 0ms), (std::vector<std::string>{"b", "c"}));
  h.publish("d");
  EXPECT_EQ(h.read(position, 0ms), (std::vector<std::string>{"d"}));
}

TEST(MessageHistory, WaitingReaderIsWokenByPublishAndByClose) {
  MessageHistory h;
  uint64_t position = h.end();
  std::vector<std::string> got;
  std::thread reader([&] { got = h.read(position, 60s); });
  h.publish("event");
  reader.join();
  EXPECT_EQ(got, (std::vector<std::string>{"event"}));

  std::thread closed_reader([&] { got = h.read(position, 60s); });
  h.close();
  closed_reader.join();
  EXPECT_TRUE(got.empty());
  EXPECT_TRUE(h.closed());
}

}  // namespace
}  // namespace keel::manager
