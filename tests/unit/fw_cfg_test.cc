// fw_cfg (selector/data ports, DMA, file directory, the Linux items) and isa-debug-exit: the
// device on its own, and a purpose-built guest reading it through both interfaces under keel run.
#include <gtest/gtest.h>

#include <cstring>

#include "devices/legacy/fw_cfg.h"
#include "devices/legacy/isa_debug_exit.h"
#include "keel_process.h"
#include "memory/guest_memory.h"
#include "state/state_format.h"

namespace keel {
namespace {

class FwCfgTest : public ::testing::Test {
 protected:
  GuestMemory memory{16 << 20};
  FwCfg fw{memory, 16 << 20, 3};

  void select(uint16_t key) {
    uint8_t b[2] = {static_cast<uint8_t>(key), static_cast<uint8_t>(key >> 8)};
    fw.write(0, b);
  }
  std::vector<uint8_t> read_data(size_t n) {
    std::vector<uint8_t> out(n);
    for (auto& b : out) fw.read(1, {&b, 1});
    return out;
  }
  static void be32(uint8_t* p, uint32_t v) {
    for (int i = 3; i >= 0; --i, v >>= 8) p[i] = static_cast<uint8_t>(v);
  }
  // One DMA transfer through the two 32-bit address writes; returns the control word after.
  uint32_t dma(uint32_t control, uint32_t length, uint64_t target, uint64_t access = 0x1000) {
    uint8_t a[16];
    be32(a, control);
    be32(a + 4, length);
    be32(a + 8, static_cast<uint32_t>(target >> 32));
    be32(a + 12, static_cast<uint32_t>(target));
    memory.write(access, a, sizeof a);
    uint8_t hi[4], lo[4];
    be32(hi, static_cast<uint32_t>(access >> 32));
    be32(lo, static_cast<uint32_t>(access));
    fw.write(4, hi);
    fw.write(8, lo);
    memory.read(access, a, 4);
    return uint32_t{a[0]} << 24 | uint32_t{a[1]} << 16 | uint32_t{a[2]} << 8 | a[3];
  }
};

TEST_F(FwCfgTest, SelectorAndDataPorts) {
  select(FwCfg::kSignature);
  EXPECT_EQ(read_data(5), (std::vector<uint8_t>{'Q', 'E', 'M', 'U', 0}));  // past the end: 0
  select(FwCfg::kId);
  EXPECT_EQ(read_data(4), (std::vector<uint8_t>{3, 0, 0, 0}));
  select(FwCfg::kNbCpus);
  EXPECT_EQ(read_data(2), (std::vector<uint8_t>{3, 0}));
  select(FwCfg::kRamSize);
  EXPECT_EQ(read_data(8), (std::vector<uint8_t>{0, 0, 0, 1, 0, 0, 0, 0}));
  select(0x1234);  // no such item
  EXPECT_EQ(read_data(2), (std::vector<uint8_t>{0, 0}));
  uint8_t sig[8];
  for (int i = 0; i < 8; ++i) fw.read(4 + i, {&sig[i], 1});
  EXPECT_EQ(std::memcmp(sig, "QEMU CFG", 8), 0);
}

// A snapshot keeps the cursor: a guest halfway through an item reads on where it was after a
// restore; a wild offset from a damaged snapshot reads zeros.
TEST_F(FwCfgTest, ASnapshotKeepsTheCursorInTheSelectedItem) {
  select(FwCfg::kSignature);
  EXPECT_EQ(read_data(2), (std::vector<uint8_t>{'Q', 'E'}));
  state::SectionWriter saved("dev/fw_cfg", 1);
  fw.save_state(saved);

  FwCfg restored{memory, 16 << 20, 3};
  restored.restore_state(state::SectionReader("dev/fw_cfg", 1, saved.payload()));
  uint8_t b[2];
  restored.read(1, {&b[0], 1});
  restored.read(1, {&b[1], 1});
  EXPECT_EQ(b[0], 'M');
  EXPECT_EQ(b[1], 'U');

  state::SectionWriter wild("dev/fw_cfg", 1);
  wild.u16("selected", FwCfg::kSignature);
  wild.u64("offset", ~0ull);
  wild.u32("dma_high", 0);
  restored.restore_state(state::SectionReader("dev/fw_cfg", 1, wild.payload()));
  restored.read(1, {&b[0], 1});
  EXPECT_EQ(b[0], 0);
}

TEST_F(FwCfgTest, FileDirectorySortedByName) {
  fw.add_file("opt/b", {1, 2, 3});
  fw.add_file("etc/a", {9});
  select(FwCfg::kFileDir);
  auto dir = read_data(4 + 2 * 64);
  EXPECT_EQ(dir[3], 2);  // be32 count
  EXPECT_STREQ(reinterpret_cast<const char*>(&dir[4 + 8]), "etc/a");
  EXPECT_EQ(dir[4 + 3], 1);                      // size
  EXPECT_EQ(dir[4 + 4] << 8 | dir[4 + 5], 0x20);  // select
  EXPECT_STREQ(reinterpret_cast<const char*>(&dir[68 + 8]), "opt/b");
  select(0x21);
  EXPECT_EQ(read_data(3), (std::vector<uint8_t>{1, 2, 3}));
  EXPECT_THROW(fw.add_file(std::string(56, 'x'), {}), Error);
}

TEST_F(FwCfgTest, DmaReadSkipSelectAndErrors) {
  fw.set_linux(std::vector<uint8_t>(100, 7), std::vector<uint8_t>{1, 2, 3, 4}, "console=ttyS0", 0x1000000,
               0x2000000, 0x20000, 0x1000200);
  // Select the command line and read it, past its end (zero-filled).
  memory.write(0x2000, std::vector<uint8_t>(32, 0xee).data(), 32);
  EXPECT_EQ(dma(FwCfg::kCmdlineData << 16 | FwCfg::kDmaSelect | FwCfg::kDmaRead, 20, 0x2000), 0u);
  char got[20];
  memory.read(0x2000, got, 20);
  EXPECT_EQ(std::string(got, 13), "console=ttyS0");
  EXPECT_EQ(got[13], 0);
  EXPECT_EQ(got[19], 0);
  // Skip then read continues where the item left off.
  EXPECT_EQ(dma(FwCfg::kInitrdData << 16 | FwCfg::kDmaSelect | FwCfg::kDmaSkip, 2, 0), 0u);
  EXPECT_EQ(dma(FwCfg::kDmaRead, 2, 0x3000), 0u);
  EXPECT_EQ(memory.read_obj<uint16_t>(0x3000), 0x0403);
  select(FwCfg::kCmdlineSize);
  EXPECT_EQ(read_data(4), (std::vector<uint8_t>{14, 0, 0, 0}));
  // Errors: a write, an unknown bit, a buffer outside RAM.
  EXPECT_EQ(dma(FwCfg::kDmaWrite, 4, 0x3000), FwCfg::kDmaError);
  EXPECT_EQ(dma(0x80, 4, 0x3000), FwCfg::kDmaError);
  EXPECT_EQ(dma(FwCfg::kDmaRead, 4096, (16 << 20) - 16), FwCfg::kDmaError);
  // A control structure outside RAM is ignored (nowhere to write the result).
  uint8_t hi[4] = {0, 0, 0, 1}, lo[4] = {};
  fw.write(4, hi);
  fw.write(8, lo);
}

TEST(IsaDebugExit, StatusIsValueShiftedOrOne) {
  int status = -1;
  IsaDebugExit dev([&](int s) { status = s; });
  uint8_t v = 0x21;
  dev.write(0, {&v, 1});
  EXPECT_EQ(status, 0x43);
  EXPECT_EQ(IsaDebugExit::status_for(0), 1);
}

TEST(FwCfgGuest, ReadsThroughSelectorAndDmaAndExitsThroughIsaDebugExit) {
  auto r = testing::run_keel({"run", "--accel", "emu", "--test-guest", testing::test_guest("fw_cfg"),
                              "--isa-debug-exit", "--cpus", "1"});
  EXPECT_EQ(r.status, 0x43) << r.describe();
  EXPECT_TRUE(testing::contains(r.err, "isa-debug-exit: status 67")) << r.err;
}

}  // namespace
}  // namespace keel
