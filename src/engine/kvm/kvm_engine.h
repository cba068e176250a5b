// The `kvm` engine: one KVM virtual machine with the in-kernel irqchip (PIC, IOAPIC, local
// APICs) and PIT, guest RAM as memory slots, and KvmVcpus that run on the caller's threads.
//
// Interrupts: GSI n is IOAPIC pin n (0-23) and, for n < 16, PIC input n: KVM's default routing,
// so the MADT needs no IRQ0 override. MSI routes for irqfds get GSIs from 24 upwards.
//
// The VM fd and the ioeventfd/irqfd helpers are for devices that bypass the vCPU exits (virtio);
// they are KVM-only, so their users hold a KvmEngine, never a plain Engine.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <vector>

#include "base/eventfd.h"
#include "engine/engine.h"
#include "engine/kvm/kvm_system.h"

struct kvm_irq_routing_entry;

namespace keel {

// Fixed guest-physical pages KVM needs for itself on Intel hosts (real-mode TSS and the EPT
// identity-map page), at the top of the 32-bit MMIO hole below the 4 GiB boundary, as QEMU and
// Firecracker place them. Nothing else may be mapped there.
inline constexpr uint64_t kKvmIdentityMapAddr = 0xFFFB'C000;
inline constexpr uint64_t kKvmTssAddr = 0xFFFB'D000;  // 3 pages

enum class IoSpace { kPio, kMmio };

class KvmEngine final : public Engine, private InterruptController {
 public:
  // Opens /dev/kvm, checks the API version and capabilities (the error names a missing one),
  // creates the VM, its memory slots, irqchip and PIT.
  KvmEngine(EngineContext context, EngineConfig config);
  ~KvmEngine() override;

  std::string name() const override { return "kvm"; }
  uint32_t max_vcpus() const override { return max_vcpus_; }
  InterruptController& interrupts() override { return *this; }
  std::unique_ptr<Vcpu> create_vcpu(uint32_t index) override;
  // KVM_MEM_LOG_DIRTY_PAGES on every RAM slot; take_dirty_log() merges KVM_GET_DIRTY_LOG (which
  // clears KVM's log and write-protects the pages again) into the guest memory's bitmap, then
  // takes that. start_dirty_log() returns the reason when KVM refuses the flag.
  std::string start_dirty_log() override;
  std::vector<uint64_t> take_dirty_log() override;
  void stop_dirty_log() override;

  // The CPUID entries vCPU `index` gets (apply_cpuid_policy over KVM's supported set).
  std::vector<x86::CpuidEntry> guest_cpuid(uint32_t index) const;

  int vm_fd() const { return vm_.get(); }
  const KvmSystem& system() const { return kvm_; }

  // A guest write of `len` bytes at `addr` (matching `datamatch` if given) signals `eventfd`
  // inside KVM instead of exiting to the vCPU thread. The caller keeps the eventfd open.
  void add_ioeventfd(IoSpace space, uint64_t addr, uint32_t len, std::optional<uint64_t> datamatch,
                     int eventfd);
  void remove_ioeventfd(IoSpace space, uint64_t addr, uint32_t len,
                        std::optional<uint64_t> datamatch, int eventfd);

  // Signalling `eventfd` raises `gsi` (edge). With `resample_eventfd` the line is level-triggered:
  // KVM signals the resample fd on EOI so the device can re-assert it.
  void add_irqfd(uint32_t gsi, int eventfd, int resample_eventfd = -1);
  // Signalling `eventfd` delivers `msg` (MSI/MSI-X). Returns the GSI of the route it allocated.
  uint32_t add_irqfd(const MsiMessage& msg, int eventfd);
  // Reprograms an MSI route allocated by add_irqfd(MsiMessage) (the guest rewrote the vector).
  void update_msi_route(uint32_t gsi, const MsiMessage& msg);
  void remove_irqfd(uint32_t gsi, int eventfd);

 private:
  // InterruptController
  void set_irq(uint32_t gsi, bool level) override;
  void send_msi(const MsiMessage& msg) override;
  // A KvmMsiRoute (irqfd); if KVM refuses one, a SendMsiRoute (KVM_SIGNAL_MSI) with a warning.
  std::unique_ptr<MsiRoute> create_msi_route(const MsiMessage& msg) override;

  void commit_routes();  // routes_mutex_ held
  // KVM_SET_USER_MEMORY_REGION for every RAM region (slot i = region i) with `flags`.
  void set_memory_slots(uint32_t flags);
  void drop_msi_route(uint32_t gsi);

  EngineContext context_;
  EngineConfig config_;
  KvmSystem kvm_;
  UniqueFd vm_;
  size_t run_size_ = 0;
  uint32_t max_vcpus_ = 0;
  std::vector<x86::CpuidEntry> supported_cpuid_;
  bool tsc_deadline_ = false;
  bool xsave_ = false;
  bool dirty_logging_ = false;

  struct GsiRoute {
    uint32_t gsi;
    MsiMessage msg;
  };
  std::mutex routes_mutex_;
  std::vector<GsiRoute> msi_routes_;
  std::atomic<bool> irqfd_refused_{false};  // warned once
};

// An MSI route as an irqfd: an eventfd bound to its own GSI, whose routing entry carries the
// message. fire() is an eventfd write (any thread; KVM injects the interrupt), set_message() is
// KVM_SET_GSI_ROUTING. The destructor unbinds the eventfd and frees the GSI. The engine must
// outlive its routes.
class KvmMsiRoute final : public keel::MsiRoute {
 public:
  KvmMsiRoute(KvmEngine& engine, const MsiMessage& msg);
  ~KvmMsiRoute() override;
  KvmMsiRoute(const KvmMsiRoute&) = delete;
  KvmMsiRoute& operator=(const KvmMsiRoute&) = delete;

  void set_message(const MsiMessage& msg) override { engine_.update_msi_route(gsi_, msg); }
  void fire() override { eventfd_.signal(); }

  int eventfd() const { return eventfd_.fd(); }
  uint32_t gsi() const { return gsi_; }

 private:
  KvmEngine& engine_;
  EventFd eventfd_;
  uint32_t gsi_;
};

}  // namespace keel
