#include "difftest/compare.h"

#include <fmt/format.h>

namespace keel::difftest {

namespace {

const char* const kGprNames[16] = {"rax", "rcx", "rdx", "rbx", "rsp", "rbp", "rsi", "rdi",
                                   "r8",  "r9",  "r10", "r11", "r12", "r13", "r14", "r15"};

std::string hex_bytes(const uint8_t* p, size_t n) {
  std::string s;
  for (size_t i = 0; i < n; i++) s += fmt::format("{:02x}", p[i]);
  return s;
}

void compare_bytes(const char* name, uint64_t base, const std::vector<uint8_t>& e,
                   const std::vector<uint8_t>& a, std::vector<std::string>& diffs) {
  if (e.size() != a.size()) {
    diffs.push_back(fmt::format("{}: size {} vs {}", name, e.size(), a.size()));
    return;
  }
  int reported = 0;
  for (size_t i = 0; i < e.size();) {
    if (e[i] == a[i]) {
      i++;
      continue;
    }
    size_t j = i;
    while (j < e.size() && (e[j] != a[j] || (j + 1 < e.size() && e[j + 1] != a[j + 1]))) j++;
    size_t n = std::min<size_t>(j - i, 32);
    if (reported++ < 8)
      diffs.push_back(fmt::format("{} [{:#x}, +{}): expected {} actual {}{}", name, base + i,
                                  j - i, hex_bytes(&e[i], n), hex_bytes(&a[i], n),
                                  j - i > n ? "..." : ""));
    i = j;
  }
  if (reported > 8) diffs.push_back(fmt::format("{}: {} more differing ranges", name, reported - 8));
}

void compare_value(const std::string& name, uint64_t e, uint64_t a,
                   std::vector<std::string>& diffs) {
  if (e != a) diffs.push_back(fmt::format("{}: expected {:#x} actual {:#x}", name, e, a));
}

void compare_flags(const std::string& name, uint64_t e, uint64_t a, uint32_t ignored,
                   std::vector<std::string>& diffs) {
  uint64_t differ = (e ^ a) & ~static_cast<uint64_t>(ignored);
  if (differ)
    diffs.push_back(fmt::format("{}: expected {:#x} actual {:#x} (differ: {}; undefined, ignored: {})",
                                name, e, a, flag_names(differ), ignored ? flag_names(ignored) : "-"));
}

}  // namespace

uint32_t undefined_flags(const Program& program, const Outcome& outcome) {
  if (outcome.end == Outcome::End::kException) {
    if (const Instr* in = program.find(outcome.frame.rip)) return in->undef_before;
    // A fault at an address that is not an instruction start (a jump target): anything the
    // program may have left undefined.
    uint32_t all = 0;
    for (const auto& in : program.instrs) all |= in.undef_after;
    return all;
  }
  return program.final_undefined_flags();
}

std::vector<std::string> compare(const Program& program, const Outcome& expected,
                                 const Outcome& actual, const CompareOptions& options) {
  std::vector<std::string> diffs;
  if (expected.end != actual.end || expected.vector != actual.vector) {
    diffs.push_back(fmt::format("end: expected {}{} actual {}{}{}", to_string(expected.end),
                                expected.vector >= 0 ? fmt::format(" vector {}", expected.vector) : "",
                                to_string(actual.end),
                                actual.vector >= 0 ? fmt::format(" vector {}", actual.vector) : "",
                                actual.message.empty() ? "" : " (" + actual.message + ")"));
  }
  if (expected.end == Outcome::End::kError || expected.end == Outcome::End::kTimeout)
    diffs.push_back("expected side did not complete: " + expected.message);
  if (!diffs.empty() && (actual.end == Outcome::End::kError || actual.end == Outcome::End::kTimeout))
    return diffs;

  uint32_t ignored = options.mask_undefined_flags ? undefined_flags(program, expected) : 0;
  for (int i = 0; i < 16; i++) compare_value(kGprNames[i], expected.state.gpr[i], actual.state.gpr[i], diffs);
  compare_value("rip", expected.state.rip, actual.state.rip, diffs);
  compare_flags("rflags", expected.state.rflags, actual.state.rflags, ignored, diffs);
  compare_value("cs", expected.state.cs.selector, actual.state.cs.selector, diffs);
  compare_value("ss", expected.state.ss.selector, actual.state.ss.selector, diffs);
  if (expected.end == Outcome::End::kException) {
    const auto &e = expected.frame, &a = actual.frame;
    compare_value("error code", e.error_code, a.error_code, diffs);
    compare_value("frame rip", e.rip, a.rip, diffs);
    compare_value("frame cs", e.cs, a.cs, diffs);
    compare_flags("frame rflags", e.rflags, a.rflags, ignored, diffs);
    compare_value("frame rsp", e.rsp, a.rsp, diffs);
    compare_value("frame ss", e.ss, a.ss, diffs);
    if (expected.vector == 14) compare_value("cr2", expected.state.cr2, actual.state.cr2, diffs);
  }
  compare_value("mxcsr", expected.mxcsr, actual.mxcsr, diffs);
  for (int i = 0; i < 16; i++) {
    if (expected.xmm[i] != actual.xmm[i])
      diffs.push_back(fmt::format("xmm{}: expected {} actual {}", i,
                                  hex_bytes(expected.xmm[i].data(), 16),
                                  hex_bytes(actual.xmm[i].data(), 16)));
  }
  compare_bytes("data", layout::kData, expected.data, actual.data, diffs);
  compare_bytes("rodata", layout::kReadOnly, expected.rodata, actual.rodata, diffs);
  compare_bytes("stack", layout::kStack, expected.stack, actual.stack, diffs);
  return diffs;
}

int first_divergence(const Program& program, Sandbox& expected, Sandbox& actual,
                     const CompareOptions& options) {
  for (size_t n = 1; n + kStopLength <= program.instrs.size(); n++) {
    Program p = prefix(program, n);
    if (!compare(p, expected.run(p), actual.run(p), options).empty()) return static_cast<int>(n) - 1;
  }
  return -1;
}

std::string report(const Program& program, const Outcome& expected, const Outcome& actual,
                   const std::vector<std::string>& diffs, const char* expected_name,
                   const char* actual_name) {
  uint64_t mark = expected.end == Outcome::End::kException ? expected.frame.rip : 0;
  std::string s = fmt::format("seed {} ({} expected, {} actual): {} difference(s)\n", program.seed,
                              expected_name, actual_name, diffs.size());
  for (const auto& d : diffs) s += "  " + d + "\n";
  if (expected.end == Outcome::End::kException)
    s += fmt::format("expected exception: vector {} error code {:#x} at rip {:#x}\n",
                     expected.vector, expected.frame.error_code, expected.frame.rip);
  if (actual.end == Outcome::End::kException && actual.frame.rip != mark)
    s += fmt::format("actual exception: vector {} error code {:#x} at rip {:#x}\n", actual.vector,
                     actual.frame.error_code, actual.frame.rip);
  s += "program (>> marks the faulting instruction):\n" + listing(program, mark);
  return s;
}

}  // namespace keel::difftest
