// The pre-decoded instruction form of the emu engine: Zydis decodes once, the result is an
// operation handler plus resolved operands; blocks of them are cached by guest-physical address.
#pragma once

#include <cstdint>
#include <vector>

namespace keel::emu {

class Cpu;
struct Insn;
using Handler = void (*)(Cpu&, const Insn&);

enum OpKind : uint8_t { kOpNone, kOpReg, kOpMem, kOpImm };

// Register-file slots (Cpu::r): 0..15 the GPRs, then an always-zero slot (missing base/index)
// and the next-instruction RIP (RIP-relative addressing), so an effective address needs no
// branches. 8-bit AH/CH/DH/BH are encoded as kHigh8 + 0..3.
inline constexpr uint8_t kRegZero = 16;
inline constexpr uint8_t kRegRip = 17;
inline constexpr uint8_t kHigh8 = 20;

// Segment slots (Cpu::seg_base). kSegFlat is an always-zero base: in 64-bit mode ES/CS/SS/DS
// decode to it.
enum SegIdx : uint8_t { kES = 0, kCS = 1, kSS = 2, kDS = 3, kFS = 4, kGS = 5, kSegFlat = 6 };

// Prefix bits in Insn::prefix.
inline constexpr uint8_t kPfxRep = 1;    // REP / REPE
inline constexpr uint8_t kPfxRepne = 2;  // REPNE
inline constexpr uint8_t kPfxLock = 4;
inline constexpr uint8_t kPfxStack = 8;  // a memory access goes through SS (#SS, not #GP)
// Not a prefix: the instruction orders memory (LOCK, XCHG with memory, MFENCE), so run_block
// follows it with a host full fence. Device threads read and write guest RAM concurrently;
// without the fence the host's store buffer can hold the guest's store past its next load, and
// a virtio driver and device (event index) can each miss the other's update: a lost interrupt.
inline constexpr uint8_t kPfxFence = 16;
// Not prefixes either, for the translator: every visible register operand is a general-purpose
// or an XMM register (Insn::xmm_ops says which are XMM), none is a segment, control, debug, x87
// or MMX register; a far branch.
inline constexpr uint8_t kPfxGpr = 32;
inline constexpr uint8_t kPfxFar = 64;

struct Insn {
  Handler fn = nullptr;
  uint64_t imm = 0;   // immediate (sign-extended to the operand size) or relative branch offset
  int32_t disp = 0;   // memory displacement
  uint16_t imm2 = 0;  // second immediate (ENTER), far-pointer selector
  uint16_t mnem = 0;  // ZydisMnemonic, for diagnostics and shared handlers
  uint8_t len = 0;    // instruction length in bytes
  uint8_t osz = 0;    // operand size in bytes
  uint8_t asz = 8;    // address size in bytes
  uint8_t seg = kSegFlat;
  uint8_t base = kRegZero, index = kRegZero, scale = 0;
  uint8_t kind[3] = {kOpNone, kOpNone, kOpNone};
  uint8_t reg[3] = {0, 0, 0};
  uint8_t prefix = 0;
  uint8_t cc = 0;      // condition code (Jcc/SETcc/CMOVcc) or a handler-specific sub-operation
  uint8_t opsz2 = 0;   // size of the second operand in bytes (MOVZX/MOVSX, shifts by CL)
  // Arithmetic flags the instruction reads and writes (kFl* bits), from Zydis's flag tables; the
  // translator's flag liveness uses them.
  uint8_t fl_read = 0, fl_write = 0;
  uint8_t xmm_ops = 0;  // bit i: operand i (kind kOpReg) is an XMM register
};

// Compact arithmetic-flag masks for Insn::fl_read / fl_write.
inline constexpr uint8_t kFlCF = 1, kFlPF = 2, kFlAF = 4, kFlZF = 8, kFlSF = 16, kFlOF = 32;
inline constexpr uint8_t kFlAll = 63;

// A straight-line run of decoded instructions inside one 4 KiB guest-physical page, ending at a
// control transfer, a state-changing system instruction, or the page end.
struct Block {
  uint64_t key = 0;       // (gpa << 3) | decode mode
  uint64_t page = 0;      // guest-physical page number
  uint64_t start_gpa = 0;
  uint32_t bytes = 0;     // guest bytes covered
  // A block whose first instruction crosses into the next page: that page's guest-physical
  // address, checked at every lookup (the two pages' mappings are independent); ~0 otherwise.
  // Their translations check it at their checked entry.
  uint64_t gpa2 = ~0ull;
  std::vector<Insn> insns;
  // Direct links to the blocks that followed this one (branch taken / not taken), valid while
  // link_gen matches the CPU's code generation (bumped on any TLB flush or invalidation).
  struct Link {
    uint64_t rip = ~0ull;
    uint64_t gen = 0;
    uint32_t key = 0;
    Block* block = nullptr;
  };
  Link links[2];
  uint8_t next_link = 0;
  // Translation (jit/) per CPL class (0 supervisor, 1 user): the checked entry (tests for
  // kicks and interrupts first; chained branches and the jump cache use it) and the body entry
  // (the run loop, which has just made those checks). Null until translated.
  void* jit_entry[2] = {nullptr, nullptr};
  void* jit_body[2] = {nullptr, nullptr};
  uint32_t heat = 0;         // executions by the interpreter, towards the hot threshold
  bool untranslatable = false;
};

}  // namespace keel::emu
