#include <gtest/gtest.h>

#include <string>

#include "devices/virtio/virtio_console.h"
#include "virtio_harness.h"

namespace keel {
namespace {

using testing::VirtioHarness;

class VirtioConsoleTest : public ::testing::Test {
 protected:
  VirtioConsoleTest() {
    auto dev = std::make_unique<VirtioConsole>(
        [this](std::span<const uint8_t> b) { output.append(b.begin(), b.end()); });
    console = dev.get();
    console->set_input_space_callback([this] { ++space_calls; });
    h = std::make_unique<VirtioHarness>(std::move(dev));
  }
  void SetUp() override { ASSERT_TRUE(h->init() & virtio::kStatusDriverOk); }
  uint16_t add_rx(uint64_t gpa, uint32_t len) { return h->add_chain(0, {{gpa, len, true}}); }

  std::string output;
  int space_calls = 0;
  VirtioConsole* console;
  std::unique_ptr<VirtioHarness> h;
};

TEST_F(VirtioConsoleTest, GuestOutputReachesTheHost) {
  const char text[] = "hello from hvc0\n";
  uint64_t a = h->put(text, 6), b = h->put(text + 6, sizeof text - 7);
  h->add_chain(1, {{a, 6, false}, {b, sizeof text - 7, false}});
  h->kick(1);
  EXPECT_EQ(output, "hello from hvc0\n");
  auto used = h->get_used(1);
  ASSERT_TRUE(used);
  EXPECT_EQ(h->interrupts(1), 1);
}

TEST_F(VirtioConsoleTest, HostInputFillsReceiveBuffers) {
  uint64_t buf = h->alloc(64);
  uint16_t head = add_rx(buf, 64);
  h->kick(0);
  std::string in = "ls -l\n";
  EXPECT_EQ(console->push_input({reinterpret_cast<const uint8_t*>(in.data()), in.size()}), in.size());
  auto used = h->get_used(0);
  ASSERT_TRUE(used);
  EXPECT_EQ(used->id, head);
  EXPECT_EQ(used->len, in.size());
  std::string got(in.size(), '\0');
  h->memory.read(buf, got.data(), got.size());
  EXPECT_EQ(got, in);
  EXPECT_EQ(h->interrupts(0), 1);
}

TEST_F(VirtioConsoleTest, InputWaitsForBuffersAndAsksForMoreWhenDrained) {
  std::string big(VirtioConsole::kInputBuffer + 100, 'x');
  size_t taken = console->push_input({reinterpret_cast<const uint8_t*>(big.data()), big.size()});
  EXPECT_EQ(taken, VirtioConsole::kInputBuffer);  // no guest buffers yet: buffered, rest refused
  EXPECT_EQ(space_calls, 0);
  uint64_t buf = h->alloc(8192);
  add_rx(buf, 8192);
  h->kick(0);
  auto used = h->get_used(0);
  ASSERT_TRUE(used);
  EXPECT_EQ(used->len, VirtioConsole::kInputBuffer);
  EXPECT_EQ(space_calls, 1);
}

TEST_F(VirtioConsoleTest, BrokenTransmitQueueLeavesReceiveWorking) {
  h->memory.write_obj<uint16_t>(h->queues[1].avail + 2, 999);  // corrupt the transmit ring
  h->kick(1);
  EXPECT_TRUE(h->status() & virtio::kStatusNeedsReset);
  uint64_t buf = h->alloc(16);
  add_rx(buf, 16);
  h->kick(0);
  const uint8_t c = 'k';
  EXPECT_EQ(console->push_input({&c, 1}), 1u);
  auto used = h->get_used(0);
  ASSERT_TRUE(used);
  EXPECT_EQ(used->len, 1u);
}

TEST_F(VirtioConsoleTest, LoopedReceiveChainIsReturnedEmptyAndInputGoesOn) {
  uint64_t buf = h->alloc(16);
  uint16_t loop_desc = h->queues[0].next_desc;
  h->write_desc(0, loop_desc, buf, 8, kDescFlagWrite | kDescFlagNext, loop_desc);  // self loop
  h->make_available(0, loop_desc);
  h->queues[0].next_desc++;
  uint16_t good = add_rx(buf + 8, 8);
  const uint8_t c = 'z';
  EXPECT_EQ(console->push_input({&c, 1}), 1u);
  auto first = h->get_used(0);
  ASSERT_TRUE(first);
  EXPECT_EQ(first->id, loop_desc);
  EXPECT_EQ(first->len, 0u);
  auto second = h->get_used(0);
  ASSERT_TRUE(second);
  EXPECT_EQ(second->id, good);
  EXPECT_EQ(second->len, 1u);
  EXPECT_FALSE(h->status() & virtio::kStatusNeedsReset);
}

}  // namespace
}  // namespace keel
