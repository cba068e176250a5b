#include "arch/x86/msrs.h"

namespace keel::x86 {

std::vector<MsrEntry> boot_msrs() {
  return {
      {kMsrIa32SysenterCs, 0},
      {kMsrIa32SysenterEsp, 0},
      {kMsrIa32SysenterEip, 0},
      {kMsrStar, 0},
      {kMsrLstar, 0},
      {kMsrCstar, 0},
      {kMsrSyscallMask, 0},
      {kMsrKernelGsBase, 0},
      {kMsrIa32Tsc, 0},
      {kMsrIa32MiscEnable, kMiscEnableFastString},
      {kMsrMtrrDefType, kMtrrDefTypeEnable | kMtrrTypeWriteBack},
  };
}

}  // namespace keel::x86
