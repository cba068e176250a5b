// emu and device threads share guest RAM: the instructions with which a guest orders its memory
// accesses (LOCK, XCHG with memory, MFENCE) must order them on the host too (kPfxFence), or a
// virtio driver and device can each miss the other's index update and an interrupt is lost.
#include <gtest/gtest.h>

#include <vector>

#include "engine/emu/decode.h"
#include "engine/emu/insn.h"

namespace keel::emu {
namespace {

bool fenced(std::vector<uint8_t> bytes) {
  Decoder decoder;
  Insn in;
  bool ends = false, more = false;
  EXPECT_TRUE(decoder.decode(0, bytes.data(), static_cast<unsigned>(bytes.size()), in, &ends, &more));
  EXPECT_EQ(in.len, bytes.size());
  return in.prefix & kPfxFence;
}

TEST(EmuFence, OrderingInstructionsGetAHostFence) {
  EXPECT_TRUE(fenced({0xF0, 0x83, 0x44, 0x24, 0xFC, 0x00}));  // lock addl $0,-4(%rsp): smp_mb()
  EXPECT_TRUE(fenced({0x87, 0x07}));                          // xchg %eax,(%rdi): smp_store_mb()
  EXPECT_TRUE(fenced({0x0F, 0xAE, 0xF0}));                    // mfence: mb()
  EXPECT_TRUE(fenced({0xF0, 0x0F, 0xB1, 0x0F}));              // lock cmpxchg %ecx,(%rdi)
}

TEST(EmuFence, PlainInstructionsDoNot) {
  EXPECT_FALSE(fenced({0x01, 0x07}));  // add %eax,(%rdi)
  EXPECT_FALSE(fenced({0x89, 0x07}));  // mov %eax,(%rdi)
  EXPECT_FALSE(fenced({0x87, 0xC8}));  // xchg %ecx,%eax: registers only
}

}  // namespace
}  // namespace keel::emu
