// /dev/kvm: the system file descriptor, the API version, capabilities and supported CPUID.
// Shared by the KVM engine and the KVM probe.
#pragma once

#include <functional>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "arch/x86/cpuid_policy.h"
#include "base/fd.h"

namespace keel {

inline constexpr int kKvmApiVersion = 12;
inline constexpr const char* kKvmDevice = "/dev/kvm";

struct KvmCapability {
  int id;            // KVM_CAP_*
  const char* name;  // "KVM_CAP_PIT2"
  const char* why;   // what keel uses it for
};

// Every capability keel needs; the engine refuses to start without one of them.
std::span<const KvmCapability> required_kvm_capabilities();

// The first required capability `check_extension` (KVM_CHECK_EXTENSION) reports absent, or none.
std::optional<KvmCapability> first_missing_capability(
    const std::function<int(int cap)>& check_extension);

class KvmSystem {
 public:
  // Opens `path` read-write. Throws Error naming the path and errno (e.g. no such device, or
  // permission denied with a hint about the kvm group).
  static KvmSystem open(const std::string& path = kKvmDevice);

  int fd() const { return fd_.get(); }
  int api_version() const;
  int check_extension(int cap) const;
  size_t vcpu_mmap_size() const;
  // KVM_GET_SUPPORTED_CPUID.
  std::vector<x86::CpuidEntry> supported_cpuid() const;
  // Throws Error unless the API version is 12 and every required capability is present.
  void check_requirements() const;

 private:
  explicit KvmSystem(UniqueFd fd) : fd_(std::move(fd)) {}
  UniqueFd fd_;
};

}  // namespace keel
