// What translated code knows about the CPU: offsets into CpuHot (addressed from the base
// register) and the host registers' roles. docs/architecture.md ("emu translator") explains them.
#pragma once

#include <cstddef>
#include <cstdint>

#include "engine/emu/cpu.h"

namespace keel::emu::jit {

// Host register numbers (x86-64 encoding).
enum HostReg : int {
  kRax = 0, kRcx = 1, kRdx = 2, kRbx = 3, kRsp = 4, kRbp = 5, kRsi = 6, kRdi = 7,
  kR8 = 8, kR9 = 9, kR10 = 10, kR11 = 11, kR12 = 12, kR13 = 13, kR14 = 14, kR15 = 15,
};

// rbp: the CpuHot. r15: the linear address of the current block's first instruction (translations
// are position-independent: one serves every virtual mapping of its guest-physical page).
// rax, rcx, rdx: scratch (soft-TLB lookups, host addresses, flag packing). The rest hold guest
// registers within a block.
inline constexpr int kCachePool[] = {kRbx, kR12, kR13, kR14, kRsi, kRdi, kR8, kR9, kR10, kR11};
inline constexpr bool callee_saved(int h) { return h == kRbx || (h >= kR12 && h <= kR15); }

inline constexpr int32_t kOffR = int32_t(offsetof(CpuHot, r));
inline constexpr int32_t reg_offset(int guest) { return kOffR + 8 * guest; }
inline constexpr int32_t kOffRip = reg_offset(kRegRip);
inline constexpr int32_t kOffSegBase = int32_t(offsetof(CpuHot, seg_base));
inline constexpr int32_t kOffRflags = int32_t(offsetof(CpuHot, rflags_));
inline constexpr int32_t kOffLfOp = int32_t(offsetof(CpuHot, lf_op));
inline constexpr int32_t kOffLfRes = int32_t(offsetof(CpuHot, lf_res));
inline constexpr int32_t kOffIcount = int32_t(offsetof(CpuHot, icount_));
inline constexpr int32_t kOffCr0 = int32_t(offsetof(CpuHot, cr0));
inline constexpr int32_t kOffCr4 = int32_t(offsetof(CpuHot, cr4));
inline constexpr int32_t kOffXmm = int32_t(offsetof(CpuHot, xmm));
inline constexpr int32_t kOffRequests = int32_t(offsetof(CpuHot, kicked_));
inline constexpr int32_t kOffSpill = int32_t(offsetof(CpuHot, jit_flags_spill));
inline constexpr int32_t kOffExit = int32_t(offsetof(CpuHot, jit_exit));
inline constexpr int32_t kOffTmp = int32_t(offsetof(CpuHot, jit_tmp));
inline constexpr int32_t kOffSlot = int32_t(offsetof(CpuHot, jit_slot));
inline constexpr int32_t kOffAttention = int32_t(offsetof(CpuHot, apic_attention));
inline constexpr int32_t kOffGenkey = int32_t(offsetof(CpuHot, genkey));
inline constexpr int32_t kOffJumpCache = int32_t(offsetof(CpuHot, jump_cache));
inline constexpr int32_t tlb_offset(bool user) {
  return int32_t(offsetof(CpuHot, tlb_table)) + (user ? int32_t(kDtlbSize * sizeof(TlbEntry)) : 0);
}
inline constexpr int32_t itlb_offset(bool user) {
  return int32_t(offsetof(CpuHot, itlb_table)) + (user ? int32_t(kTlbSize * sizeof(TlbEntry)) : 0);
}
inline constexpr int32_t kTlbRtag = int32_t(offsetof(TlbEntry, rtag));
inline constexpr int32_t kTlbWtag = int32_t(offsetof(TlbEntry, wtag));
inline constexpr int32_t kTlbAddend = int32_t(offsetof(TlbEntry, addend));
inline constexpr int32_t kJcRip = int32_t(offsetof(JumpEntry, rip));
inline constexpr int32_t kJcGenkey = int32_t(offsetof(JumpEntry, genkey));
inline constexpr int32_t kJcCode = int32_t(offsetof(JumpEntry, code));
inline constexpr int32_t kJcPage = int32_t(offsetof(JumpEntry, page));
inline constexpr int32_t kTlbXtag = int32_t(offsetof(TlbEntry, xtag));
inline constexpr int32_t kTlbGpa = int32_t(offsetof(TlbEntry, gpa));

static_assert(std::is_standard_layout_v<CpuHot>, "translated code addresses CpuHot by offset");
static_assert(offsetof(CpuHot, service_requested_) == offsetof(CpuHot, kicked_) + 1,
              "block entries test both requests with one 16-bit compare");
static_assert(sizeof(std::atomic<bool>) == 1 && sizeof(std::atomic<uint32_t>) == 4);
static_assert(sizeof(TlbEntry) == 64 && kDtlbWays == 2,
              "TLB indexes are scaled by a shift: 6 (ITLB entry), 7 (DTLB set)");
static_assert(sizeof(JumpEntry) == 64, "the jump-cache index is scaled by a shift of 6");
static_assert(sizeof(CpuHot) < (1u << 30), "offsets fit a 32-bit displacement");
static_assert(offsetof(CpuHot, xmm) % 16 == 0 && alignof(CpuHot) >= 16,
              "translated code uses aligned SSE moves on the guest's XMM registers");

// The fixed code every translation jumps to (jit.cc emits it once per code cache).
struct Stubs {
  const void* epilogue = nullptr;     // returns from Jit::enter to the run loop
  const void* lookup[2] = {};         // jump-cache lookup of [rbp+rip] for CPL class [user];
                                      // enters the block or exits kJitMiss
  const void* check_exit = nullptr;   // exit kJitCheck (block entry saw a request)
  const void* status_exit = nullptr;  // eax = JitExit, edx = instructions retired: exit
  const void* call = nullptr;         // Cpu::jit_call(CpuHot*, const Insn*)
  const void* pack_flags = nullptr;   // Cpu::jit_pack_flags(CpuHot*)
};

}  // namespace keel::emu::jit
