// Restoring on another engine needs every CPU feature the guest saw (arch/x86/cpu_features.h,
// engine/engine_state.cc): the refusal names the missing ones.
#include "arch/x86/cpu_features.h"

#include <gtest/gtest.h>

#include "emu_harness.h"
#include "engine/engine_state.h"

namespace keel {
namespace {

using x86::CpuidEntry;

TEST(CpuFeatures, MissingFeaturesAreNamedAndOsControlledBitsIgnored) {
  std::vector<CpuidEntry> saw = {
      {.function = 1, .ecx = (1u << 26) | (1u << 27) | (1u << 31), .edx = (1u << 26)},  // xsave osxsave hv, sse2
      {.function = 7, .ebx = 1u << 5},                                                    // avx2
  };
  std::vector<CpuidEntry> offered = {{.function = 1, .edx = 1u << 26}, {.function = 7}};
  EXPECT_EQ(x86::missing_features(saw, offered), (std::vector<std::string>{"xsave", "avx2"}));
  EXPECT_TRUE(x86::missing_features(offered, saw).empty());
  EXPECT_TRUE(x86::missing_features(saw, saw).empty());
}

// A state document as another engine's snapshot would start: the engine and the CPUID leaves its
// guest saw (doctored here).
state::Document foreign_snapshot(const std::string& engine, std::vector<CpuidEntry> leaves) {
  state::Writer w;
  auto& e = w.section("engine");
  e.str("name", engine);
  e.u32("vcpus", 1);
  auto& c = w.section("cpuid");
  for (const auto& l : leaves) {
    uint32_t regs[4] = {l.eax, l.ebx, l.ecx, l.edx};
    c.bytes("leaf" + std::to_string(l.function), {reinterpret_cast<const uint8_t*>(regs), 16});
  }
  auto bytes = w.finish();
  return state::Document::parse(bytes, "test snapshot");
}

std::string restore_error(emu::test::EmuMachine& m, const state::Document& doc) {
  try {
    restore_engine_state(m.engine, std::span(&m.vcpu, 1), doc);
  } catch (const std::exception& e) {
    return e.what();
  }
  return "";
}

TEST(CpuFeatures, ASnapshotWhoseGuestSawFeaturesEmuLacksIsRefusedNamingThem) {
  emu::test::EmuMachine m;
  // emu advertises no XSAVE and no AVX2 (engine/emu/ops_sys.cc).
  std::string error = restore_error(
      m, foreign_snapshot("kvm", {{.function = 1, .ecx = 1u << 26, .edx = 1u << 26},
                                  {.function = 7, .ebx = 1u << 5}}));
  EXPECT_NE(error.find("the snapshot was taken on the kvm engine, whose guest saw xsave, avx2 which emu here lacks"), std::string::npos) << error;
}

TEST(CpuFeatures, ASnapshotWhoseFeaturesExistHereGetsPastTheCheck) {
  emu::test::EmuMachine m;
  std::string error = restore_error(m, foreign_snapshot("kvm", {{.function = 1, .edx = 1u << 26}}));
  EXPECT_EQ(error.find("lacks"), std::string::npos) << error;
  // Then the conversion reads the other engine's sections, which this doctored state lacks.
  EXPECT_NE(error.find("kvm/clock"), std::string::npos) << error;
}

TEST(CpuModel, BaselineKeepsTheFirstX8664FeaturesOnly) {
  uint32_t leaf1[4] = {0x306A9, 0x0801'0800, ~0u, ~0u};
  x86::apply_cpu_model(x86::CpuModel::kBaseline, 1, 0, leaf1);
  EXPECT_EQ(leaf1[0], 0x306A9u);  // signature and APIC id untouched
  EXPECT_EQ(leaf1[1], 0x0801'0800u);
  EXPECT_EQ(leaf1[2], (1u << 0) | (1u << 13) | (1u << 31));  // sse3, cx16, hypervisor
  EXPECT_EQ(leaf1[3], 0x078B'FBFFu | (1u << 28));              // fpu ... sse2, htt
  uint32_t leaf7[4] = {2, ~0u, ~0u, ~0u};
  x86::apply_cpu_model(x86::CpuModel::kBaseline, 7, 0, leaf7);
  EXPECT_EQ(leaf7[0] | leaf7[1] | leaf7[2] | leaf7[3], 0u);
  uint32_t ext[4] = {0, 0, ~0u, ~0u};
  x86::apply_cpu_model(x86::CpuModel::kBaseline, 0x8000'0001, 0, ext);
  EXPECT_EQ(ext[2], 1u);
  EXPECT_EQ(ext[3], (1u << 11) | (1u << 20) | (1u << 29));
  uint32_t host[4] = {1, 2, ~0u, ~0u};
  x86::apply_cpu_model(x86::CpuModel::kHost, 1, 0, host);
  EXPECT_EQ(host[2], ~0u);
  EXPECT_EQ(x86::parse_cpu_model("baseline"), x86::CpuModel::kBaseline);
  EXPECT_FALSE(x86::parse_cpu_model("max"));
  // Whatever two engines offer, under the baseline model neither lacks what the other shows, as
  // long as both have the baseline features themselves.
  std::vector<CpuidEntry> emu_like = {{.function = 1, .ecx = (1u << 13) | (1u << 23), .edx = 0x078B'FBFFu},
                                      {.function = 7, .ecx = 1u << 22}};
  std::vector<CpuidEntry> kvm_like = {{.function = 1, .ecx = (1u << 13) | (1u << 21), .edx = 0x078B'FBFFu},
                                      {.function = 7, .ebx = 1u << 9}};
  EXPECT_FALSE(x86::missing_features(emu_like, kvm_like).empty());
  for (auto* side : {&emu_like, &kvm_like})
    for (CpuidEntry& e : *side) {
      uint32_t r[4] = {e.eax, e.ebx, e.ecx, e.edx};
      x86::apply_cpu_model(x86::CpuModel::kBaseline, e.function, e.index, r);
      e = {.function = e.function, .eax = r[0], .ebx = r[1], .ecx = r[2], .edx = r[3]};
    }
  EXPECT_TRUE(x86::missing_features(emu_like, kvm_like).empty());
  EXPECT_TRUE(x86::missing_features(kvm_like, emu_like).empty());
}

TEST(CpuModel, TheKvmPolicyAppliesTheModel) {
  std::vector<CpuidEntry> supported = {{.function = 0, .eax = 7},
                                       {.function = 1, .ecx = (1u << 23) | (1u << 21), .edx = 0x078B'FBFFu},
                                       {.function = 7, .ebx = 1u << 5}};
  auto host = x86::apply_cpuid_policy(supported, {.model = x86::CpuModel::kHost});
  auto base = x86::apply_cpuid_policy(supported, {.model = x86::CpuModel::kBaseline});
  EXPECT_NE(x86::find_cpuid(host, 1)->ecx & (1u << 23), 0u);  // popcnt
  EXPECT_EQ(x86::find_cpuid(base, 1)->ecx & ((1u << 23) | (1u << 21)), 0u);  // popcnt, x2apic
  EXPECT_EQ(x86::find_cpuid(base, 7)->ebx, 0u);
}

}  // namespace
}  // namespace keel
