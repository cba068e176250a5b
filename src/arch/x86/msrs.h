// The MSR values a vCPU starts with (the ones KVM does not reset to what the 64-bit Linux entry
// expects). Pure data: the KVM engine writes them with KVM_SET_MSRS, the emu engine may start
// from them too.
#pragma once

#include <cstdint>
#include <vector>

namespace keel::x86 {

inline constexpr uint32_t kMsrIa32Tsc = 0x10;
inline constexpr uint32_t kMsrIa32ApicBase = 0x1B;
inline constexpr uint32_t kMsrIa32SysenterCs = 0x174;
inline constexpr uint32_t kMsrIa32SysenterEsp = 0x175;
inline constexpr uint32_t kMsrIa32SysenterEip = 0x176;
inline constexpr uint32_t kMsrIa32MiscEnable = 0x1A0;
inline constexpr uint32_t kMsrMtrrDefType = 0x2FF;
inline constexpr uint32_t kMsrEfer = 0xC000'0080;
inline constexpr uint32_t kMsrStar = 0xC000'0081;
inline constexpr uint32_t kMsrLstar = 0xC000'0082;
inline constexpr uint32_t kMsrCstar = 0xC000'0083;
inline constexpr uint32_t kMsrSyscallMask = 0xC000'0084;
inline constexpr uint32_t kMsrKernelGsBase = 0xC000'0102;

inline constexpr uint64_t kMiscEnableFastString = 1ull << 0;
inline constexpr uint64_t kMtrrDefTypeEnable = 1ull << 11;
inline constexpr uint64_t kMtrrTypeWriteBack = 6;

struct MsrEntry {
  uint32_t index = 0;
  uint64_t value = 0;
  bool operator==(const MsrEntry&) const = default;
};

// SYSENTER/SYSCALL targets cleared, TSC at 0, fast strings on, MTRRs enabled with write-back as
// the default type (without it Linux would map all RAM uncached).
std::vector<MsrEntry> boot_msrs();

}  // namespace keel::x86
