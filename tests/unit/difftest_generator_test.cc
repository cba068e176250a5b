// The differential-test generator on its own (no engine, no /dev/kvm): deterministic programs that
// decode as generated, cover every instruction class, honour class restrictions, and never let an
// instruction read a flag the generator considers undefined (checked against Zydis's own tables).
#include "difftest/generator.h"

#include <Zydis/Zydis.h>
#include <gtest/gtest.h>

#include <set>
#include <string>

namespace keel::difftest {
namespace {

bool decode(const Instr& in, ZydisDisassembledInstruction& out) {
  return ZYAN_SUCCESS(ZydisDisassembleIntel(ZYDIS_MACHINE_MODE_LONG_64, in.address, in.bytes.data(),
                                            in.bytes.size(), &out));
}

TEST(DiffTestGenerator, SameSeedSameProgram) {
  for (uint64_t seed : {0ull, 1ull, 42ull, 0xdeadbeefull}) {
    Program a = generate(seed), b = generate(seed);
    EXPECT_EQ(a.code(), b.code()) << "seed " << seed;
    EXPECT_EQ(a.gpr, b.gpr);
    EXPECT_EQ(a.xmm, b.xmm);
    EXPECT_EQ(a.data, b.data);
    EXPECT_EQ(a.rflags, b.rflags);
    EXPECT_EQ(a.mxcsr, b.mxcsr);
  }
}

TEST(DiffTestGenerator, DifferentSeedsGiveDifferentPrograms) {
  std::set<std::vector<uint8_t>> codes;
  for (uint64_t seed = 0; seed < 50; seed++) codes.insert(generate(seed).code());
  EXPECT_EQ(codes.size(), 50u);
}

TEST(DiffTestGenerator, InstructionsDecodeContiguouslyAndEndWithTheStopPort) {
  for (uint64_t seed = 0; seed < 300; seed++) {
    Program p = generate(seed);
    ASSERT_FALSE(p.instrs.empty());
    uint64_t pc = layout::kCode;
    for (const auto& in : p.instrs) {
      ZydisDisassembledInstruction d;
      ASSERT_TRUE(decode(in, d) || in.cls == InsnClass::kFault) << "seed " << seed;
      EXPECT_EQ(in.address, pc);
      if (in.cls != InsnClass::kFault) {
        EXPECT_EQ(d.info.length, in.bytes.size()) << d.text;
      }
      pc += in.bytes.size();
    }
    EXPECT_LE(pc, layout::kCode + layout::kCodeSize);
    ASSERT_GE(p.instrs.size(), kStopLength);
    EXPECT_EQ(p.instrs[p.instrs.size() - 2].bytes,
              (std::vector<uint8_t>{0xe6, static_cast<uint8_t>(layout::kPortDone)}));
    EXPECT_EQ(p.instrs.back().bytes, (std::vector<uint8_t>{0xeb, 0xfe}));
    EXPECT_EQ(p.gpr[4], layout::kInitialRsp);
    EXPECT_EQ(p.rflags & 0x3000, 0u) << "IOPL must be 0 (see sandbox.h)";
    EXPECT_EQ(p.data.size(), layout::kDataSize);
    EXPECT_EQ(p.stack.size(), layout::kStackSize);
  }
}

TEST(DiffTestGenerator, CoversEveryClassAndTheRequiredInstructions) {
  std::set<InsnClass> classes;
  std::set<std::string> mnemonics;
  bool rep_prefix = false, repne_prefix = false, down = false, lock = false, addr32 = false;
  for (uint64_t seed = 0; seed < 400; seed++) {
    Program p = generate(seed);
    for (const auto& in : p.instrs) {
      classes.insert(in.cls);
      ZydisDisassembledInstruction d;
      if (!decode(in, d)) continue;
      mnemonics.insert(ZydisMnemonicGetString(d.info.mnemonic));
      if (in.cls == InsnClass::kString) {
        rep_prefix |= (d.info.attributes & (ZYDIS_ATTRIB_HAS_REP | ZYDIS_ATTRIB_HAS_REPE)) != 0;
        repne_prefix |= (d.info.attributes & ZYDIS_ATTRIB_HAS_REPNE) != 0;
        addr32 |= d.info.address_width == 32;
      }
      lock |= (d.info.attributes & ZYDIS_ATTRIB_HAS_LOCK) != 0;
      down |= d.info.mnemonic == ZYDIS_MNEMONIC_STD;
    }
  }
  for (int c = 0; c < static_cast<int>(InsnClass::kCount); c++)
    EXPECT_TRUE(classes.count(static_cast<InsnClass>(c))) << to_string(static_cast<InsnClass>(c));
  for (const char* m :
       {"add",   "adc",     "sub",      "sbb",      "and",      "or",       "xor",     "cmp",
        "test",  "inc",     "dec",      "neg",      "not",      "shl",      "shr",     "sar",
        "rol",   "ror",     "rcl",      "rcr",      "shld",     "shrd",     "mul",     "imul",
        "div",   "idiv",    "bt",       "bts",      "btr",      "btc",      "bsf",     "bsr",
        "movsb", "movsq",   "stosw",    "lodsd",    "cmpsb",    "scasq",    "cmovb",   "setnle",
        "movzx", "movsx",   "movsxd",   "cbw",      "cwde",     "cdqe",     "cwd",     "cdq",
        "cqo",   "xchg",    "xadd",     "cmpxchg",  "bswap",    "lea",      "push",    "pop",
        "pushfq", "popfq",  "lahf",     "sahf",     "movdqa",   "movdqu",   "movq",    "movd",
        "pxor",  "paddb",   "paddq",    "psubd",    "pcmpeqb",  "pmovmskb", "punpcklbw",
        "pshufd", "psllq",  "psrlq",    "pslldq",   "psrldq",   "addsd",    "mulsd",   "divsd",
        "sqrtsd", "ucomisd", "cvtsi2sd", "cvttsd2si", "ud2"})
    EXPECT_TRUE(mnemonics.count(m)) << m;
  EXPECT_TRUE(rep_prefix);
  EXPECT_TRUE(repne_prefix);
  EXPECT_TRUE(down);
  EXPECT_TRUE(lock);
  EXPECT_TRUE(addr32);
}

TEST(DiffTestGenerator, RestrictedToTheRequestedClasses) {
  GenOptions options;
  options.classes = class_bit(InsnClass::kAlu) | class_bit(InsnClass::kSse);
  options.fault_percent = 0;
  for (uint64_t seed = 0; seed < 100; seed++) {
    Program p = generate(seed, options);
    size_t real = 0;
    for (const auto& in : p.instrs) {
      EXPECT_TRUE(in.cls == InsnClass::kSetup || in.cls == InsnClass::kAlu ||
                  in.cls == InsnClass::kSse)
          << to_string(in.cls);
      real += in.cls != InsnClass::kSetup;
    }
    EXPECT_EQ(real, options.items);
  }
}

// The generator's flag bookkeeping against Zydis's tables: no instruction tests a flag that is
// undefined before it, and every flag Zydis calls undefined is undefined afterwards (shifts and
// rotates, whose undefined set depends on the count, are checked for their count-independent part).
TEST(DiffTestGenerator, UndefinedFlagTrackingAgreesWithZydis) {
  constexpr uint32_t kArith = kArithFlags;
  for (uint64_t seed = 0; seed < 400; seed++) {
    Program p = generate(seed);
    for (const auto& in : p.instrs) {
      ZydisDisassembledInstruction d;
      if (!decode(in, d) || !d.info.cpu_flags) continue;
      // REPE/REPNE "test" ZF only as produced by their own compare, and a zero count writes
      // nothing: the static tables cannot judge them.
      bool repeated_compare = (d.info.attributes & (ZYDIS_ATTRIB_HAS_REPE | ZYDIS_ATTRIB_HAS_REPNE)) &&
                              in.cls == InsnClass::kString;
      if (repeated_compare) continue;
      uint32_t tested = d.info.cpu_flags->tested & kArith;
      EXPECT_EQ(tested & in.undef_before, 0u)
          << "seed " << seed << ": " << d.text << " reads undefined " << flag_names(tested & in.undef_before);
      uint32_t undefined = d.info.cpu_flags->undefined & kArith;
      // Zydis lists AF as undefined after SBB; the SDM sets it "according to the result".
      if (d.info.mnemonic == ZYDIS_MNEMONIC_SBB) undefined &= ~kAF;
      bool count_dependent = false;
      switch (d.info.mnemonic) {
        case ZYDIS_MNEMONIC_SHL: case ZYDIS_MNEMONIC_SHR: case ZYDIS_MNEMONIC_SAR:
        case ZYDIS_MNEMONIC_ROL: case ZYDIS_MNEMONIC_ROR: case ZYDIS_MNEMONIC_RCL:
        case ZYDIS_MNEMONIC_RCR: case ZYDIS_MNEMONIC_SHLD: case ZYDIS_MNEMONIC_SHRD:
          count_dependent = true;
          break;
        default: break;
      }
      if (count_dependent) continue;
      EXPECT_EQ(undefined & ~in.undef_after, 0u)
          << "seed " << seed << ": " << d.text << " leaves undefined "
          << flag_names(undefined & ~in.undef_after) << " that the generator considers defined";
      uint32_t written = (d.info.cpu_flags->modified | d.info.cpu_flags->set_0 |
                          d.info.cpu_flags->set_1) & kArith & ~undefined;
      EXPECT_EQ(written & in.undef_after, 0u)
          << "seed " << seed << ": " << d.text << " defines " << flag_names(written & in.undef_after)
          << " that the generator considers undefined";
    }
  }
}

}  // namespace
}  // namespace keel::difftest
