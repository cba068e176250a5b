// Differential CPU tests: what a generated test program is, and where it lives in guest memory.
//
// A Program is a random instruction sequence (from a seed) plus the initial register, XMM and
// memory contents it starts from. It runs at CPL3 in 64-bit mode inside a small sandbox (see
// sandbox.h) on two engines, and the outcomes are compared (compare.h).
#pragma once

#include <array>
#include <cstdint>
#include <string>
#include <vector>

namespace keel::difftest {

// Guest-physical (= virtual: identity-mapped) layout of the sandbox. Everything lives in the first
// 2 MiB, mapped with 4 KiB pages so single pages can be read-only, supervisor-only or absent.
namespace layout {
inline constexpr uint64_t kRamSize = 2ull << 20;
inline constexpr uint64_t kPml4 = 0x1000, kPdpt = 0x2000, kPd = 0x3000, kPt = 0x4000;
inline constexpr uint64_t kGdt = 0x5000, kIdt = 0x6000, kTss = 0x7000;
inline constexpr uint64_t kHandlers = 0x8000;           // one 16-byte CPL0 stub per vector
inline constexpr uint64_t kKernelStackTop = 0xA000;     // TSS.RSP0 (page 0x9000)
inline constexpr uint64_t kCode = 0x10000, kCodeSize = 0x4000;  // user, writable, executable
inline constexpr uint64_t kData = 0x20000, kDataSize = 0x2000;  // user, writable, NX
inline constexpr uint64_t kReadOnly = 0x22000;          // user, read-only, NX (write -> #PF)
inline constexpr uint64_t kUnmapped = 0x23000;          // not present (any access -> #PF)
inline constexpr uint64_t kStack = 0x30000, kStackSize = 0x1000;  // user, writable, NX
inline constexpr uint64_t kInitialRsp = kStack + 0x800;
inline constexpr uint64_t kFsBase = kData + 0x800, kGsBase = kData + 0x1400;
// The translation-tier shapes (GenOptions::loop_iterations, self_modifying): a loop counter the
// random instructions never touch, and a second, writable mapping of the code pages.
inline constexpr uint64_t kScratch = 0x31000;    // user, writable, NX
inline constexpr uint64_t kCodeAlias = 0x40000;  // user, writable, NX -> the code pages

// Selectors (GDT index << 3 | RPL).
inline constexpr uint16_t kKernelCs = 0x08, kKernelDs = 0x10, kUserCs = 0x1b, kUserDs = 0x23;
inline constexpr uint16_t kTr = 0x28;

// The program ends with `out kPortDone, al; jmp $` (the TSS I/O bitmap allows the port at CPL3).
// The exception handler for vector v is a CPL0 stub `out kPortException+v, al; jmp $`.
inline constexpr uint16_t kPortDone = 0xE0;
inline constexpr uint16_t kPortException = 0xC0;  // 0xC0..0xDF
inline constexpr int kVectors = 32;
}  // namespace layout

// RFLAGS arithmetic flags, the ones whose "undefined" status the generator tracks.
inline constexpr uint32_t kCF = 1u << 0, kPF = 1u << 2, kAF = 1u << 4, kZF = 1u << 6,
                          kSF = 1u << 7, kOF = 1u << 11;
inline constexpr uint32_t kArithFlags = kCF | kPF | kAF | kZF | kSF | kOF;

// Instruction classes. Every generated instruction belongs to one; a test can restrict the
// generator to a set of classes (known gaps of an engine are left out that way).
enum class InsnClass : uint8_t {
  kSetup,     // plain MOV/LEA/XOR the generator emits to set up operands (always enabled)
  kAlu,       // add adc sub sbb and or xor cmp test inc dec neg not
  kShift,     // shl shr sar rol ror rcl rcr
  kDoubleShift,  // shld shrd
  kMulDiv,    // mul imul div idiv (without #DE)
  kBitTest,   // bt bts btr btc
  kBitScan,   // bsf bsr
  kString,    // movs cmps scas lods stos with rep/repe/repne, both directions
  kCondMove,  // cmovcc setcc
  kExtend,    // movzx movsx movsxd cbw cwde cdqe cwd cdq cqo
  kExchange,  // xchg xadd cmpxchg
  kMisc,      // bswap lea lahf sahf clc stc cmc mov
  kStack,     // push pop pushf popf
  kSse,       // SSE2 moves, integer arithmetic, logic, shuffles, shifts
  kSseFp,     // SSE2 floating-point arithmetic, compares and conversions
  kFault,     // an instruction meant to raise #DE #UD #GP #SS #PF (always last)
  kCount
};
const char* to_string(InsnClass c);

using ClassSet = uint32_t;  // bit (1 << InsnClass)
inline constexpr ClassSet class_bit(InsnClass c) { return 1u << static_cast<int>(c); }
inline constexpr ClassSet kAllClasses = (1u << static_cast<int>(InsnClass::kCount)) - 1;

struct Instr {
  std::vector<uint8_t> bytes;
  uint64_t address = 0;      // guest address of the first byte
  InsnClass cls = InsnClass::kSetup;
  uint32_t undef_before = 0;  // arithmetic flags undefined when this instruction starts
  uint32_t undef_after = 0;   // ... and after it completes
};

inline constexpr size_t kStopLength = 2;

struct Program {
  uint64_t seed = 0;
  std::vector<Instr> instrs;  // ends with `out kPortDone, al; jmp $` (kStopLength instructions)

  std::array<uint64_t, 16> gpr{};  // RSP is layout::kInitialRsp
  uint64_t rflags = 0x2;
  std::array<std::array<uint8_t, 16>, 16> xmm{};
  uint32_t mxcsr = 0x1f80;
  std::vector<uint8_t> data;   // layout::kDataSize bytes at layout::kData
  std::vector<uint8_t> rodata; // 4 KiB at layout::kReadOnly
  std::vector<uint8_t> stack;  // layout::kStackSize bytes at layout::kStack

  std::vector<uint8_t> code() const;
  // The instruction whose first byte is at `rip`, or nullptr.
  const Instr* find(uint64_t rip) const;
  // Flags left undefined at the end of the program.
  uint32_t final_undefined_flags() const { return instrs.empty() ? 0 : instrs.back().undef_after; }
};

// The first `n` instructions of `program`, then the stop instructions.
Program prefix(const Program& program, size_t n);

// Zydis listing of the program, one instruction a line, with `>>` marking `mark_rip`.
std::string listing(const Program& program, uint64_t mark_rip = 0);
std::string flag_names(uint64_t flags);

}  // namespace keel::difftest
