#include "arch/x86/cpu_features.h"

#include <cstdint>

namespace keel::x86 {

namespace {

enum Reg : uint8_t { kEbx, kEcx, kEdx };

struct Feature {
  uint32_t leaf;
  Reg reg;
  uint8_t bit;
  const char* name;
};

constexpr Feature kFeatures[] = {
    {1, kEdx, 0, "fpu"},        {1, kEdx, 4, "tsc"},          {1, kEdx, 5, "msr"},
    {1, kEdx, 6, "pae"},        {1, kEdx, 8, "cx8"},          {1, kEdx, 11, "sep"},
    {1, kEdx, 13, "pge"},       {1, kEdx, 15, "cmov"},        {1, kEdx, 16, "pat"},
    {1, kEdx, 19, "clflush"},   {1, kEdx, 23, "mmx"},         {1, kEdx, 24, "fxsr"},
    {1, kEdx, 25, "sse"},       {1, kEdx, 26, "sse2"},        {1, kEcx, 0, "pni"},
    {1, kEcx, 1, "pclmulqdq"},  {1, kEcx, 9, "ssse3"},        {1, kEcx, 12, "fma"},
    {1, kEcx, 13, "cx16"},      {1, kEcx, 17, "pcid"},        {1, kEcx, 19, "sse4_1"},
    {1, kEcx, 20, "sse4_2"},    {1, kEcx, 21, "x2apic"},      {1, kEcx, 22, "movbe"},
    {1, kEcx, 23, "popcnt"},    {1, kEcx, 24, "tsc_deadline_timer"}, {1, kEcx, 25, "aes"},
    {1, kEcx, 26, "xsave"},     {1, kEcx, 28, "avx"},         {1, kEcx, 29, "f16c"},
    {1, kEcx, 30, "rdrand"},    {7, kEbx, 0, "fsgsbase"},     {7, kEbx, 3, "bmi1"},
    {7, kEbx, 5, "avx2"},       {7, kEbx, 7, "smep"},         {7, kEbx, 8, "bmi2"},
    {7, kEbx, 9, "erms"},       {7, kEbx, 10, "invpcid"},     {7, kEbx, 16, "avx512f"},
    {7, kEbx, 18, "rdseed"},    {7, kEbx, 19, "adx"},         {7, kEbx, 20, "smap"},
    {7, kEbx, 23, "clflushopt"}, {7, kEbx, 24, "clwb"},       {7, kEbx, 29, "sha_ni"},
    {7, kEcx, 2, "umip"},       {7, kEcx, 22, "rdpid"},       {7, kEdx, 4, "fsrm"},
    {0x8000'0001, kEcx, 0, "lahf_lm"}, {0x8000'0001, kEcx, 5, "abm"},
    {0x8000'0001, kEcx, 8, "3dnowprefetch"}, {0x8000'0001, kEdx, 11, "syscall"},
    {0x8000'0001, kEdx, 20, "nx"}, {0x8000'0001, kEdx, 26, "pdpe1gb"},
    {0x8000'0001, kEdx, 27, "rdtscp"}, {0x8000'0001, kEdx, 29, "lm"},
};

bool has(std::span<const CpuidEntry> entries, const Feature& f) {
  auto e = find_cpuid(entries, f.leaf, 0);
  if (!e) return false;
  uint32_t v = f.reg == kEbx ? e->ebx : f.reg == kEcx ? e->ecx : e->edx;
  return (v >> f.bit) & 1;
}

}  // namespace

std::vector<std::string> missing_features(std::span<const CpuidEntry> saw,
                                          std::span<const CpuidEntry> offered) {
  std::vector<std::string> missing;
  for (const Feature& f : kFeatures)
    if (has(saw, f) && !has(offered, f)) missing.emplace_back(f.name);
  return missing;
}

}  // namespace keel::x86
