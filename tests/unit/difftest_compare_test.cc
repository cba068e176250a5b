// The outcome comparison on its own (no engine): every field it promises to compare is compared,
// undefined flags are ignored exactly where the program left them undefined, and the report
// names the seed, the differences and the listing.
#include "difftest/compare.h"

#include <gtest/gtest.h>

#include <functional>

#include "difftest/generator.h"

namespace keel::difftest {
namespace {

Outcome done_outcome(const Program& p) {
  Outcome o;
  o.end = Outcome::End::kDone;
  o.state.gpr = p.gpr;
  o.state.rip = p.instrs.back().address;
  o.state.rflags = p.rflags;
  o.state.cs.selector = layout::kUserCs;
  o.state.ss.selector = layout::kUserDs;
  o.xmm = p.xmm;
  o.mxcsr = p.mxcsr;
  o.data = p.data;
  o.rodata = p.rodata;
  o.stack = p.stack;
  return o;
}

// A two-instruction program: `imul` (SF ZF AF PF undefined) then the stop.
Program imul_program() {
  Program p;
  p.seed = 7;
  p.data.assign(layout::kDataSize, 0);
  p.rodata.assign(4096, 0);
  p.stack.assign(layout::kStackSize, 0);
  Instr a;
  a.bytes = {0x48, 0x0f, 0xaf, 0xc3};  // imul rax, rbx
  a.address = layout::kCode;
  a.cls = InsnClass::kMulDiv;
  a.undef_after = kSF | kZF | kAF | kPF;
  Instr b;
  b.bytes = {0xe6, static_cast<uint8_t>(layout::kPortDone)};
  b.address = a.address + a.bytes.size();
  b.undef_before = b.undef_after = a.undef_after;
  Instr c = b;
  c.bytes = {0xeb, 0xfe};
  c.address = b.address + b.bytes.size();
  p.instrs = {a, b, c};
  return p;
}

TEST(DiffTestCompare, IdenticalOutcomesAgree) {
  Program p = generate(3);
  Outcome o = done_outcome(p);
  EXPECT_TRUE(compare(p, o, o).empty());
}

TEST(DiffTestCompare, EveryComparedFieldIsDetected) {
  Program p = generate(5);
  Outcome base = done_outcome(p);
  const std::vector<std::pair<const char*, std::function<void(Outcome&)>>> mutations = {
      {"rax", [](Outcome& o) { o.state.gpr[0] ^= 1; }},
      {"r15", [](Outcome& o) { o.state.gpr[15] ^= 1ull << 63; }},
      {"rsp", [](Outcome& o) { o.state.gpr[4] += 8; }},
      {"rip", [](Outcome& o) { o.state.rip += 1; }},
      {"rflags", [](Outcome& o) { o.state.rflags ^= 1u << 10; }},  // DF is never undefined
      {"cs", [](Outcome& o) { o.state.cs.selector = layout::kKernelCs; }},
      {"mxcsr", [](Outcome& o) { o.mxcsr ^= 1; }},
      {"xmm7", [](Outcome& o) { o.xmm[7][15] ^= 0x80; }},
      {"data", [](Outcome& o) { o.data[0x1234] ^= 4; }},
      {"rodata", [](Outcome& o) { o.rodata[0] ^= 4; }},
      {"stack", [](Outcome& o) { o.stack[0xfff] ^= 4; }},
      {"end", [](Outcome& o) {
         o.end = Outcome::End::kException;
         o.vector = 13;
       }},
  };
  for (const auto& [name, mutate] : mutations) {
    Outcome actual = base;
    mutate(actual);
    auto diffs = compare(p, base, actual);
    ASSERT_FALSE(diffs.empty()) << name << " not detected";
    EXPECT_NE(diffs.front().find(name), std::string::npos) << name << ": " << diffs.front();
  }
}

TEST(DiffTestCompare, UndefinedFlagsAreIgnoredOnlyWhereUndefined) {
  Program p = imul_program();
  Outcome expected = done_outcome(p);
  Outcome actual = expected;
  actual.state.rflags ^= kSF | kZF | kAF | kPF;  // all undefined after imul
  EXPECT_TRUE(compare(p, expected, actual).empty());
  // The self-check compares every flag.
  EXPECT_FALSE(compare(p, expected, actual, CompareOptions{false}).empty());
  // CF and OF are defined after imul.
  for (uint32_t f : {kCF, kOF}) {
    actual = expected;
    actual.state.rflags ^= f;
    auto diffs = compare(p, expected, actual);
    ASSERT_EQ(diffs.size(), 1u);
    EXPECT_NE(diffs[0].find(f == kCF ? "differ: CF" : "differ: OF"), std::string::npos) << diffs[0];
  }
}

TEST(DiffTestCompare, ExceptionsCompareVectorFrameAndCr2) {
  Program p = imul_program();
  Outcome expected = done_outcome(p);
  expected.end = Outcome::End::kException;
  expected.vector = 14;
  expected.frame = {6, p.instrs[0].address, layout::kUserCs, 0x10202, layout::kInitialRsp,
                    layout::kUserDs};
  expected.state.cr2 = layout::kUnmapped;
  // Faulting at the imul: its flags are those before it, all defined.
  EXPECT_EQ(undefined_flags(p, expected), 0u);
  EXPECT_TRUE(compare(p, expected, expected).empty());
  const std::vector<std::pair<const char*, std::function<void(Outcome&)>>> mutations = {
      {"end", [](Outcome& o) { o.vector = 13; }},
      {"error code", [](Outcome& o) { o.frame.error_code = 7; }},
      {"frame rip", [](Outcome& o) { o.frame.rip += 4; }},
      {"frame rflags", [](Outcome& o) { o.frame.rflags ^= kCF; }},
      {"frame rsp", [](Outcome& o) { o.frame.rsp -= 8; }},
      {"cr2", [](Outcome& o) { o.state.cr2 += 1; }},
  };
  for (const auto& [name, mutate] : mutations) {
    Outcome actual = expected;
    mutate(actual);
    auto diffs = compare(p, expected, actual);
    ASSERT_FALSE(diffs.empty()) << name << " not detected";
    EXPECT_NE(diffs.front().find(name), std::string::npos) << name << ": " << diffs.front();
  }
  // Faulting at the stop instruction: imul's undefined flags are masked.
  expected.frame.rip = p.instrs[1].address;
  EXPECT_EQ(undefined_flags(p, expected), kSF | kZF | kAF | kPF);
}

TEST(DiffTestCompare, AFailedRunIsNeverEqual) {
  Program p = generate(9);
  Outcome expected = done_outcome(p);
  Outcome actual = expected;
  actual.end = Outcome::End::kTimeout;
  actual.message = "no stop port written";
  auto diffs = compare(p, expected, actual);
  ASSERT_FALSE(diffs.empty());
  EXPECT_NE(diffs[0].find("timeout"), std::string::npos);
  // An oracle that failed is a failure too, even if both sides failed alike.
  expected.end = actual.end = Outcome::End::kError;
  EXPECT_FALSE(compare(p, expected, actual).empty());
}

TEST(DiffTestCompare, ReportNamesSeedDifferencesAndListing) {
  Program p = imul_program();
  Outcome expected = done_outcome(p);
  Outcome actual = expected;
  actual.state.gpr[3] = 0x1234;
  auto diffs = compare(p, expected, actual);
  std::string r = report(p, expected, actual, diffs, "kvm", "emu");
  EXPECT_NE(r.find("seed 7"), std::string::npos) << r;
  EXPECT_NE(r.find("rbx: expected"), std::string::npos) << r;
  EXPECT_NE(r.find("imul rax, rbx"), std::string::npos) << r;
  EXPECT_NE(r.find("kvm expected, emu actual"), std::string::npos) << r;
}

}  // namespace
}  // namespace keel::difftest
