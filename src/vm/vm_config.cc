#include "vm/vm_config.h"

#include "base/error.h"
#include "base/size.h"
#include "memory/guest_memory.h"

namespace keel {

void VmConfig::validate() const {
  if (boot == Boot::kDisk) {
    if (!kernel.empty() || !test_guest.empty() || !initrd.empty())
      throw UsageError("--boot disk takes the kernel and initrd from the disk: no --kernel, --initrd or --test-guest");
    if (virtio.disks.empty()) throw UsageError("--boot disk needs a --disk to boot from");
    validate_resources();
    return;
  }
  if (!boot_entry.empty()) throw UsageError("--boot-entry needs --boot disk");
  if (kernel.empty() && test_guest.empty()) throw UsageError("no kernel given");
  if (!kernel.empty() && !test_guest.empty())
    throw UsageError("a kernel and a test guest are mutually exclusive");
  if (!test_guest.empty() && (!initrd.empty() || !cmdline.empty()))
    throw UsageError("--initrd and --cmdline apply to a Linux kernel, not to a test guest");
  validate_resources();
}

void VmConfig::validate_resources() const {
  validate_memory_size(memory_bytes);
  validate_vcpu_count(cpus, accel);
}

void validate_memory_size(uint64_t bytes) {
  constexpr uint64_t kMinMemory = 16ull << 20;
  constexpr uint64_t kMaxMemory = 1ull << 40;
  if (bytes < kMinMemory)
    throw UsageError("memory size " + format_size(bytes) + " is below the minimum of " +
                     format_size(kMinMemory));
  if (bytes > kMaxMemory)
    throw UsageError("memory size " + format_size(bytes) + " is above the maximum of " +
                     format_size(kMaxMemory));
  if (bytes % kPageSize != 0)
    throw UsageError("memory size " + std::to_string(bytes) + " bytes is not a multiple of 4 KiB");
}

void validate_vcpu_count(uint32_t cpus, Accel accel) {
  if (cpus == 0) throw UsageError("the number of vCPUs must be at least 1");
  uint32_t max = max_vcpus(accel);
  if (cpus > max)
    throw UsageError(accel == Accel::kAuto
                         ? "at most " + std::to_string(max) + " vCPUs (xAPIC ids), got " +
                               std::to_string(cpus)
                         : "the " + std::string(to_string(accel)) + " engine runs at most " +
                               std::to_string(max) + " vCPU" + (max == 1 ? "" : "s") + ", got " +
                               std::to_string(cpus));
}

}  // namespace keel
