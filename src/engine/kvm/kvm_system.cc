#include "engine/kvm/kvm_system.h"

#include <fcntl.h>
#include "engine/kvm/kvm_uapi.h"
#include <sys/ioctl.h>

#include <array>

#include "base/error.h"

namespace keel {

namespace {

constexpr KvmCapability kRequired[] = {
    {KVM_CAP_USER_MEMORY, "KVM_CAP_USER_MEMORY", "guest RAM from host memory"},
    {KVM_CAP_SET_TSS_ADDR, "KVM_CAP_SET_TSS_ADDR", "the TSS pages KVM needs on Intel"},
    {KVM_CAP_SET_IDENTITY_MAP_ADDR, "KVM_CAP_SET_IDENTITY_MAP_ADDR", "the identity page KVM needs on Intel"},
    {KVM_CAP_IRQCHIP, "KVM_CAP_IRQCHIP", "the in-kernel PIC, IOAPIC and local APICs"},
    {KVM_CAP_PIT2, "KVM_CAP_PIT2", "the in-kernel PIT"},
    {KVM_CAP_IRQ_ROUTING, "KVM_CAP_IRQ_ROUTING", "MSI routes for irqfd"},
    {KVM_CAP_IRQFD, "KVM_CAP_IRQFD", "device interrupts from eventfds"},
    {KVM_CAP_IOEVENTFD, "KVM_CAP_IOEVENTFD", "virtio notifications without a vCPU exit"},
    {KVM_CAP_SIGNAL_MSI, "KVM_CAP_SIGNAL_MSI", "MSI delivery from devices"},
    {KVM_CAP_EXT_CPUID, "KVM_CAP_EXT_CPUID", "KVM_GET_SUPPORTED_CPUID / KVM_SET_CPUID2"},
    {KVM_CAP_MP_STATE, "KVM_CAP_MP_STATE", "starting secondary vCPUs"},
    {KVM_CAP_IMMEDIATE_EXIT, "KVM_CAP_IMMEDIATE_EXIT", "stopping a vCPU without races"},
};

}  // namespace

std::span<const KvmCapability> required_kvm_capabilities() { return kRequired; }

std::optional<KvmCapability> first_missing_capability(
    const std::function<int(int cap)>& check_extension) {
  for (const auto& cap : kRequired)
    if (check_extension(cap.id) <= 0) return cap;
  return std::nullopt;
}

KvmSystem KvmSystem::open(const std::string& path) {
  int fd = ::open(path.c_str(), O_RDWR | O_CLOEXEC);
  if (fd < 0) {
    int err = errno;
    std::string hint;
    if (err == EACCES) hint = " (is the user in the kvm group?)";
    if (err == ENOENT) hint = " (no KVM on this host: is the kvm module loaded?)";
    throw Error(errno_message("cannot open " + path, err) + hint);
  }
  return KvmSystem(UniqueFd(fd));
}

int KvmSystem::api_version() const { return ::ioctl(fd(), KVM_GET_API_VERSION, 0); }

int KvmSystem::check_extension(int cap) const {
  int r = ::ioctl(fd(), KVM_CHECK_EXTENSION, cap);
  return r < 0 ? 0 : r;
}

size_t KvmSystem::vcpu_mmap_size() const {
  int r = ::ioctl(fd(), KVM_GET_VCPU_MMAP_SIZE, 0);
  if (r < static_cast<int>(sizeof(kvm_run))) throw_errno("KVM_GET_VCPU_MMAP_SIZE");
  return static_cast<size_t>(r);
}

std::vector<x86::CpuidEntry> KvmSystem::supported_cpuid() const {
  // The kernel says E2BIG until the buffer is large enough.
  for (uint32_t n = 128; n <= 4096; n *= 2) {
    std::vector<uint8_t> buf(sizeof(kvm_cpuid2) + n * sizeof(kvm_cpuid_entry2));
    auto* cpuid = reinterpret_cast<kvm_cpuid2*>(buf.data());
    cpuid->nent = n;
    if (::ioctl(fd(), KVM_GET_SUPPORTED_CPUID, cpuid) < 0) {
      if (errno == E2BIG) continue;
      throw_errno("KVM_GET_SUPPORTED_CPUID");
    }
    std::vector<x86::CpuidEntry> out;
    out.reserve(cpuid->nent);
    for (uint32_t i = 0; i < cpuid->nent; ++i) {
      const auto& e = cpuid->entries[i];
      out.push_back({e.function, e.index, e.flags, e.eax, e.ebx, e.ecx, e.edx});
    }
    return out;
  }
  throw Error("KVM_GET_SUPPORTED_CPUID: more than 4096 entries");
}

void KvmSystem::check_requirements() const {
  int version = api_version();
  if (version != kKvmApiVersion)
    throw Error("KVM API version " + std::to_string(version) + ", keel needs " +
                std::to_string(kKvmApiVersion));
  if (auto missing = first_missing_capability([this](int cap) { return check_extension(cap); }))
    throw Error(std::string("KVM lacks ") + missing->name + ", which keel needs for " +
                missing->why);
}

}  // namespace keel
