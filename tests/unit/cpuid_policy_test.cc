#include "arch/x86/cpuid_policy.h"

#include <gtest/gtest.h>

#include <cstring>

#include "arch/x86/msrs.h"

namespace keel::x86 {
namespace {

// A host-like KVM_GET_SUPPORTED_CPUID answer, with the host's own APIC id (0x2A) leaking into
// leaves 1 and 0xB as it does when the ioctl runs on host CPU 42.
std::vector<CpuidEntry> supported_sample(bool with_kvm_leaves = true) {
  std::vector<CpuidEntry> v = {
      {0x0, 0, 0, 0x10, 0x68747541, 0x444D4163, 0x69746E65},
      {0x1, 0, 0, 0x00A20F12, 0x2A020800, 0x76F83203, 0x178BFBFF},
      {0x7, 0, kCpuidFlagSignificantIndex, 0, 0x219C97A9, 0, 0},
      {0xB, 0, kCpuidFlagSignificantIndex, 1, 2, 0x100, 0x2A},
      {0xB, 1, kCpuidFlagSignificantIndex, 7, 64, 0x201, 0x2A},
      {0x8000'0000, 0, 0, 0x8000'0021, 0, 0, 0},
      {0x8000'0008, 0, 0, 0x3030, 0x1000, 0x700F, 0},
  };
  if (with_kvm_leaves) {
    v.push_back({0x4000'0000, 0, 0, 0x4000'0001, 0x4B4D564B, 0x564B4D56, 0x4D});
    v.push_back({0x4000'0001, 0, 0, 0x01007AFB, 0, 0, 0});
  }
  return v;
}

TEST(CpuidPolicy, Leaf1CarriesThisVcpusApicIdAndTheHypervisorBit) {
  auto supported = supported_sample();
  auto out = apply_cpuid_policy(supported, {.apic_id = 3, .vcpu_count = 4});
  auto leaf1 = find_cpuid(out, 1);
  ASSERT_TRUE(leaf1);
  EXPECT_EQ(leaf1->ebx >> 24, 3u);
  EXPECT_EQ((leaf1->ebx >> 16) & 0xFF, 4u);
  EXPECT_EQ(leaf1->ebx & 0xFFFF, 0x0800u);  // CLFLUSH size and brand index kept
  EXPECT_TRUE(leaf1->ecx & kCpuid1EcxHypervisor);
  EXPECT_TRUE(leaf1->edx & kCpuid1EdxHtt);
  EXPECT_FALSE(leaf1->ecx & kCpuid1EcxTscDeadline);
  EXPECT_EQ(leaf1->eax, 0x00A20F12u);  // family/model untouched
}

TEST(CpuidPolicy, SingleVcpuHasNoHtt) {
  auto supported = supported_sample();
  auto leaf1 = find_cpuid(apply_cpuid_policy(supported, {}), 1);
  EXPECT_FALSE(leaf1->edx & kCpuid1EdxHtt);
  EXPECT_EQ(leaf1->ebx >> 16, 0x0001u);
}

TEST(CpuidPolicy, TscDeadlineOnlyWhenTheEngineEmulatesIt) {
  auto supported = supported_sample();
  auto leaf1 = find_cpuid(apply_cpuid_policy(supported, {.tsc_deadline = true}), 1);
  EXPECT_TRUE(leaf1->ecx & kCpuid1EcxTscDeadline);
}

TEST(CpuidPolicy, TopologyLeafReplacesTheHostsOne) {
  auto supported = supported_sample();
  auto out = apply_cpuid_policy(supported, {.apic_id = 5, .vcpu_count = 6});
  auto smt = find_cpuid(out, 0xB, 0);
  auto core = find_cpuid(out, 0xB, 1);
  auto end = find_cpuid(out, 0xB, 2);
  ASSERT_TRUE(smt && core && end);
  EXPECT_EQ(smt->edx, 5u);
  EXPECT_EQ(core->edx, 5u);
  EXPECT_EQ(end->edx, 5u);
  EXPECT_EQ(smt->eax, 0u);  // no SMT bits in the APIC id
  EXPECT_EQ(smt->ebx, 1u);
  EXPECT_EQ(smt->ecx, 0x100u);
  EXPECT_EQ(core->eax, 3u);  // 6 cores need 3 bits
  EXPECT_EQ(core->ebx, 6u);
  EXPECT_EQ(core->ecx, 0x201u);
  EXPECT_EQ(end->ecx >> 8, 0u);  // invalid level ends the enumeration
  int count = 0;
  for (auto& e : out) count += e.function == 0xB;
  EXPECT_EQ(count, 3);  // the host's entries are gone
}

TEST(CpuidPolicy, AmdCoreCountFollowsTheVcpus) {
  auto supported = supported_sample();
  auto ext = find_cpuid(apply_cpuid_policy(supported, {.vcpu_count = 4}), 0x8000'0008);
  EXPECT_EQ(ext->ecx & 0xFF, 3u);
  EXPECT_EQ((ext->ecx >> 12) & 0xF, 2u);
  EXPECT_EQ(ext->eax, 0x3030u);
}

TEST(CpuidPolicy, KvmSignatureIsPresentWithItsFeatures) {
  auto supported = supported_sample();
  auto out = apply_cpuid_policy(supported, {});
  auto sig = find_cpuid(out, kCpuidKvmSignature);
  ASSERT_TRUE(sig);
  char name[13] = {};
  std::memcpy(name, &sig->ebx, 4);
  std::memcpy(name + 4, &sig->ecx, 4);
  std::memcpy(name + 8, &sig->edx, 4);
  EXPECT_STREQ(name, "KVMKVMKVM");
  EXPECT_GE(sig->eax, kCpuidKvmFeatures);
  EXPECT_EQ(find_cpuid(out, kCpuidKvmFeatures)->eax, 0x01007AFBu);  // KVM's features kept
}

TEST(CpuidPolicy, AddsTheKvmSignatureWhenTheInputLacksIt) {
  auto supported = supported_sample(false);
  auto out = apply_cpuid_policy(supported, {});
  auto sig = find_cpuid(out, kCpuidKvmSignature);
  ASSERT_TRUE(sig);
  EXPECT_EQ(sig->ebx, 0x4B4D564Bu);
  EXPECT_EQ(sig->eax, kCpuidKvmFeatures);
  ASSERT_TRUE(find_cpuid(out, kCpuidKvmFeatures));
  EXPECT_EQ(find_cpuid(out, kCpuidKvmFeatures)->eax, 0u);  // nothing paravirtual promised
}

TEST(CpuidPolicy, KeepsEverythingElseUnchanged) {
  auto supported = supported_sample();
  auto out = apply_cpuid_policy(supported, {.apic_id = 1, .vcpu_count = 2});
  EXPECT_EQ(*find_cpuid(out, 0), supported[0]);
  EXPECT_EQ(*find_cpuid(out, 7, 0), supported[2]);
  EXPECT_EQ(*find_cpuid(out, 0x8000'0000), supported[5]);
}

TEST(CpuidPolicy, NoTopologyLeafWhenTheBasicRangeEndsBelowIt) {
  std::vector<CpuidEntry> small = {{0x0, 0, 0, 0x7, 0, 0, 0}, {0x1, 0, 0, 0, 0, 0, 0}};
  auto out = apply_cpuid_policy(small, {.vcpu_count = 2});
  EXPECT_FALSE(find_cpuid(out, 0xB));
}

TEST(BootMsrs, EnableMtrrsWithWriteBackAndFastStrings) {
  auto msrs = boot_msrs();
  auto find = [&](uint32_t index) -> std::optional<uint64_t> {
    for (auto& m : msrs)
      if (m.index == index) return m.value;
    return std::nullopt;
  };
  EXPECT_EQ(find(kMsrMtrrDefType), 0x806u);
  EXPECT_EQ(find(kMsrIa32MiscEnable), 1u);
  EXPECT_EQ(find(kMsrLstar), 0u);
  EXPECT_EQ(find(kMsrIa32ApicBase), std::nullopt);  // set through the sregs, with the BSP bit
}

}  // namespace
}  // namespace keel::x86
