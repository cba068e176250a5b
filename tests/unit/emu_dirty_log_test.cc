// Dirty page logging on emu (live migration): every store the CPU makes, on both tiers, marks its
// page in the guest memory's bitmap, and a store after the log was taken marks it again.
#include <gtest/gtest.h>

#include <thread>

#include "emu_harness.h"

namespace keel::emu::test {
namespace {

class EmuDirtyLog : public testing::TestWithParam<EngineConfig> {};
INSTANTIATE_TEST_SUITE_P(Tiers, EmuDirtyLog, testing::Values(kInterpreterTier, kTranslatedTier),
                         tier_name);

bool dirty(const std::vector<uint64_t>& bits, uint64_t gpa) {
  uint64_t p = gpa >> 12;  // below the MMIO hole, RAM offset = guest-physical address
  return p / 64 < bits.size() && ((bits[p / 64] >> (p % 64)) & 1);
}

// Loads `code` and the machine's state, then starts the log: only what the guest does counts.
void load_and_log(EmuMachine& m, const std::string& code) {
  auto bytes = assemble(code);
  m.mem.write(kCode, bytes.data(), bytes.size());
  m.vcpu->set_state(m.initial_state());
  ASSERT_EQ(m.engine.start_dirty_log(), "");
  (void)m.engine.take_dirty_log();
}

TEST_P(EmuDirtyLog, StoresOfEveryKindMarkTheirPages) {
  EmuMachine m(GetParam());
  // A page that is only read, with its PTE already dirty (writable in the TLB): not marked.
  m.mem.write_obj<uint64_t>(kPt + 0x50 * 8, m.mem.read_obj<uint64_t>(kPt + 0x50 * 8) | 0x40);
  load_and_log(m, R"(
    mov rax, 0x1122334455667788
    mov rbx, 0x1010000
    mov [rbx], rax              ; a plain store
    mov rdi, 0x1020FFC
    mov [rdi], rax              ; page-crossing: 0x1020000 and 0x1021000
    mov rdi, 0x1030800
    mov ecx, 8000
    rep stosb                   ; 0x1030000, 0x1031000, 0x1032000
    mov rsi, 0x1010000
    mov rdi, 0x1040000
    mov ecx, 8
    rep movsb                   ; 0x1040000
    mov rbx, 0x1060000
    xor eax, eax
    mov rcx, 5
    lock cmpxchg [rbx], rcx     ; 0x1060000
    mov rax, [0x1050000]        ; read only
    hlt)");
  ASSERT_EQ(m.vcpu->run(), VcpuExit::kHalted);
  auto bits = m.engine.take_dirty_log();
  for (uint64_t gpa : {0x1010000ull, 0x1020000ull, 0x1021000ull, 0x1030000ull, 0x1031000ull,
                       0x1032000ull, 0x1040000ull, 0x1060000ull})
    EXPECT_TRUE(dirty(bits, gpa)) << std::hex << gpa;
  EXPECT_FALSE(dirty(bits, 0x1050000)) << "a page only read is not dirty";
  EXPECT_FALSE(dirty(bits, 0x1070000)) << "a page never touched is not dirty";
  EXPECT_EQ(m.mem.read_obj<uint64_t>(0x1060000), 5u);
  // Taken means cleared.
  EXPECT_FALSE(dirty(m.engine.take_dirty_log(), 0x1010000));
}

TEST_P(EmuDirtyLog, StoresToCodePagesAndPageTableUpdatesAreMarked) {
  EmuMachine m(GetParam());
  load_and_log(m, R"(
    mov byte [target + 1], 7    ; self-modifying: a code page has no fast write path
    call target
    mov rbx, 0x1080000
    mov [rbx], rax              ; the walk sets the PTE's dirty bit: the page table is written
    hlt
  target:
    mov eax, 1
    ret)");
  ASSERT_EQ(m.vcpu->run(), VcpuExit::kHalted);
  EXPECT_EQ(m.reg(x86::RAX), 7u);
  auto bits = m.engine.take_dirty_log();
  EXPECT_TRUE(dirty(bits, kCode));
  EXPECT_TRUE(dirty(bits, kPt)) << "accessed/dirty bits written into the page table";
  EXPECT_TRUE(dirty(bits, 0x1080000));
}

TEST_P(EmuDirtyLog, AStoreAfterTheLogWasTakenMarksAgain) {
  EmuMachine m(GetParam());
  struct Stop : BusDevice {
    Vcpu* vcpu = nullptr;
    void read(uint64_t, std::span<uint8_t>) override {}
    void write(uint64_t, std::span<const uint8_t>) override { vcpu->kick(); }
  };
  auto dev = std::make_shared<Stop>();
  dev->vcpu = m.vcpu.get();
  m.pio.add(0x80, 1, dev);
  load_and_log(m, R"(
    mov rbx, 0x1010000
    mov [rbx], rax
    out 0x80, al                ; the vCPU stops here, its write permission for the page cached
    mov [rbx], rcx
    hlt)");
  ASSERT_EQ(m.vcpu->run(), VcpuExit::kStopped);
  EXPECT_TRUE(dirty(m.engine.take_dirty_log(), 0x1010000));
  ASSERT_EQ(m.vcpu->run(), VcpuExit::kHalted);
  EXPECT_TRUE(dirty(m.engine.take_dirty_log(), 0x1010000))
      << "the second store went through a write permission granted before the take";
}

// The log is taken while the vCPU runs a loop chained to itself: it stops at a block boundary
// for the revocation, and its next store marks the page again.
TEST_P(EmuDirtyLog, TakingTheLogWhileTheGuestRunsLosesNoStore) {
  EmuMachine m(GetParam());
  load_and_log(m, R"(
    mov rbx, 0x1010000
  l:
    inc qword [rbx]
    jmp l)");
  VcpuExit exit{};
  std::thread vcpu([&] { exit = m.vcpu->run(); });
  auto* cell = reinterpret_cast<uint64_t*>(m.mem.host_ptr(0x1010000, 8));
  auto counter = [&] { return __atomic_load_n(cell, __ATOMIC_RELAXED); };
  auto wait_past = [&](uint64_t v) {
    auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
    while (counter() <= v) {
      if (std::chrono::steady_clock::now() > deadline) return false;
      std::this_thread::yield();
    }
    return true;
  };
  for (int round = 0; round < 20; ++round) {
    ASSERT_TRUE(wait_past(0));
    (void)m.engine.take_dirty_log();
    uint64_t after = counter();  // every store before the take's revocation has landed
    ASSERT_TRUE(wait_past(after));
    EXPECT_TRUE(dirty(m.engine.take_dirty_log(), 0x1010000)) << "round " << round;
  }
  m.vcpu->kick();
  vcpu.join();
  EXPECT_EQ(exit, VcpuExit::kStopped);
}

}  // namespace
}  // namespace keel::emu::test
