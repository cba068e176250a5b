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
  EXPECT_NE(error.find("converting its state across engines is not supported yet"), std::string::npos)
      << error;
}

}  // namespace
}  // namespace keel
