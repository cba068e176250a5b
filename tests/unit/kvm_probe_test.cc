#include "engine/kvm/kvm_probe.h"

#include <gtest/gtest.h>

#include "base/error.h"
#include "engine/engine_factory.h"
#include "engine/kvm/kvm_system.h"

namespace keel {
namespace {

KvmProbeResult passing_result() {
  KvmProbeResult r;
  r.device_ok = true;
  r.api_version = 12;
  for (const auto& cap : required_kvm_capabilities()) r.capabilities.push_back({cap.name, true});
  r.checks.push_back({"exception_cpl0", "exception delivery (#UD, #GP) at CPL0", true, "ok"});
  r.checks.push_back({"int3_cpl0", "INT3 at CPL0", true, "ok"});
  return r;
}

TEST(KvmProbe, PassingResultCanRunAStockKernel) {
  auto r = passing_result();
  EXPECT_TRUE(r.can_run_guests());
  EXPECT_TRUE(r.can_run_stock_kernel());
  EXPECT_NE(r.reason().find("ran every probe guest"), std::string::npos);
}

TEST(KvmProbe, AFailingCheckIsNamedInTheReason) {
  auto r = passing_result();
  r.checks[1].ok = false;
  r.checks[1].detail = "KVM internal error on vCPU 0: instruction emulation failed";
  EXPECT_TRUE(r.can_run_guests());
  EXPECT_FALSE(r.can_run_stock_kernel());
  EXPECT_NE(r.reason().find("INT3 at CPL0"), std::string::npos) << r.reason();
  EXPECT_NE(r.reason().find("int3_cpl0: KVM internal error"), std::string::npos) << r.reason();
  EXPECT_EQ(r.check("int3_cpl0"), &r.checks[1]);
  EXPECT_EQ(r.check("nope"), nullptr);
}

TEST(KvmProbe, AMissingCapabilityIsNamed) {
  auto r = passing_result();
  for (auto& c : r.capabilities)
    if (c.name == "KVM_CAP_PIT2") c.present = false;
  EXPECT_FALSE(r.can_run_guests());
  EXPECT_FALSE(r.can_run_stock_kernel());
  EXPECT_EQ(r.reason(), "KVM lacks KVM_CAP_PIT2");
  EXPECT_NE(to_text(r).find("MISSING  KVM_CAP_PIT2"), std::string::npos);
}

TEST(KvmProbe, NoDeviceIsReportedWithItsError) {
  KvmProbeResult r;
  r.device_error = "cannot open /dev/kvm: No such file or directory";
  EXPECT_FALSE(r.can_run_guests());
  EXPECT_EQ(r.reason(), r.device_error);
  auto j = to_json(r);
  EXPECT_EQ(j["accessible"], false);
  EXPECT_EQ(j["error"], r.device_error);
  EXPECT_EQ(j["can_run_stock_kernel"], false);
}

TEST(KvmProbe, JsonCarriesEveryCheckAndCapability) {
  auto r = passing_result();
  r.checks[0].ok = false;
  r.checks[0].detail = "no answer within 5 s";
  auto j = to_json(r);
  EXPECT_EQ(j["api_version"], 12);
  EXPECT_EQ(j["capabilities"]["KVM_CAP_IRQCHIP"], true);
  ASSERT_EQ(j["checks"].size(), 2u);
  EXPECT_EQ(j["checks"][0]["name"], "exception_cpl0");
  EXPECT_EQ(j["checks"][0]["ok"], false);
  EXPECT_EQ(j["checks"][0]["detail"], "no answer within 5 s");
  EXPECT_EQ(j["can_run_guests"], true);
  EXPECT_EQ(j["can_run_stock_kernel"], false);
  EXPECT_EQ(j["reason"], r.reason());
}

TEST(KvmSystem, FirstMissingCapabilityIsTheOneAbsent) {
  EXPECT_FALSE(first_missing_capability([](int) { return 1; }));
  auto missing = first_missing_capability([](int cap) { return cap == 33 /* PIT2 */ ? 0 : 1; });
  ASSERT_TRUE(missing);
  EXPECT_STREQ(missing->name, "KVM_CAP_PIT2");
}

TEST(EngineChoice, AutoPicksKvmOnlyWhenItCanRunAStockKernel) {
  auto good = passing_result();
  auto choice = choose_engine(Accel::kAuto, good);
  EXPECT_EQ(choice.accel, Accel::kKvm);
  EXPECT_NE(choice.reason.find("auto chose kvm"), std::string::npos);

  auto bad = passing_result();
  bad.checks[1].ok = false;
  bad.checks[1].detail = "internal error";
  choice = choose_engine(Accel::kAuto, bad);
  EXPECT_EQ(choice.accel, Accel::kEmu);
  EXPECT_NE(choice.reason.find("auto chose emu"), std::string::npos);
  EXPECT_NE(choice.reason.find("INT3 at CPL0"), std::string::npos);
  EXPECT_EQ(choice.reason.find('\n'), std::string::npos);  // one line
}

TEST(EngineChoice, ExplicitChoicesAreKept) {
  auto bad = passing_result();
  bad.checks[0].ok = false;
  EXPECT_EQ(choose_engine(Accel::kKvm, bad).accel, Accel::kKvm);
  EXPECT_EQ(choose_engine(Accel::kEmu, passing_result()).accel, Accel::kEmu);
}

TEST(EngineChoice, ParsesAcceleratorNames) {
  EXPECT_EQ(parse_accel("auto"), Accel::kAuto);
  EXPECT_EQ(parse_accel("kvm"), Accel::kKvm);
  EXPECT_EQ(parse_accel("emu"), Accel::kEmu);
  EXPECT_THROW(parse_accel("tcg"), UsageError);
  EXPECT_STREQ(to_string(Accel::kEmu), "emu");
}

TEST(EngineFactory, EmuRunsUpTo254Vcpus) {
  GuestMemory memory(1 << 20);
  IoBus pio("pio"), mmio("mmio");
  {
    auto engine = create_engine(Accel::kEmu, {memory, pio, mmio}, {.vcpus = 64});
    EXPECT_EQ(engine->name(), "emu");
    EXPECT_EQ(engine->max_vcpus(), 254u);
  }
  try {
    create_engine(Accel::kEmu, {memory, pio, mmio}, {.vcpus = 255});
    FAIL() << "expected an error";
  } catch (const UsageError& e) {
    EXPECT_STREQ(e.what(), "the emu engine runs at most 254 vCPUs");
  }
}

// The real probe on this host: every check runs and reports by name.
TEST(KvmProbe, ProbesThisHost) {
  auto r = probe_kvm();
  if (!r.device_ok) GTEST_SKIP() << r.device_error;
  std::cout << to_text(r);
  ASSERT_TRUE(r.can_run_guests()) << r.reason();
  ASSERT_EQ(r.checks.size(), 8u);
  for (const char* name : {"exception_cpl0", "timer_interrupt_cpl0", "int3_cpl0", "xgetbv_cpl0",
                           "xsave_cpl0", "xrstor_cpl0", "cmpxchg16b_cpl0", "protected_mode_cpl0"}) {
    auto* c = r.check(name);
    ASSERT_NE(c, nullptr) << name;
    EXPECT_FALSE(c->detail.empty());
    if (!c->ok) {
      // A failure says what happened; on kvm_pvm that is an internal error naming the bytes.
      EXPECT_NE(c->detail, "ok");
    }
  }
  EXPECT_EQ(r.can_run_stock_kernel(), r.reason().find("cannot") == std::string::npos);
}

}  // namespace
}  // namespace keel
