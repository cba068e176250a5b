// Compares two outcomes of one Program: the end (stop or exception vector), all GPRs, RIP,
// RFLAGS except the arithmetic flags the SDM leaves undefined at that point (the generator's
// per-instruction tracking), CS/SS, XMM0-15, MXCSR, the exception frame and error code, CR2 for
// #PF, and the data, read-only and stack pages.
#pragma once

#include <string>
#include <vector>

#include "difftest/program.h"
#include "difftest/sandbox.h"

namespace keel::difftest {

struct CompareOptions {
  // Off for self-checks (the same engine twice): then every flag must match.
  bool mask_undefined_flags = true;
};

// The arithmetic flags whose value is undefined in `outcome` (the expected one): at the end of the
// program, or before the instruction that faulted.
uint32_t undefined_flags(const Program& program, const Outcome& outcome);

// Differences, one line each; empty when the outcomes agree.
std::vector<std::string> compare(const Program& program, const Outcome& expected,
                                 const Outcome& actual, const CompareOptions& options = {});

// Runs growing prefixes of `program` on both sandboxes and returns the index of the first
// instruction after which they differ (the culprit of a failed comparison), or -1.
int first_divergence(const Program& program, Sandbox& expected, Sandbox& actual,
                     const CompareOptions& options = {});

// The report for a failed comparison: seed, listing with the faulting instruction marked, diff.
std::string report(const Program& program, const Outcome& expected, const Outcome& actual,
                   const std::vector<std::string>& diffs, const char* expected_name,
                   const char* actual_name);

}  // namespace keel::difftest
