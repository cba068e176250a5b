#include "engine/kvm/kvm_engine.h"

#include "engine/kvm/kvm_uapi.h"
#include <sys/ioctl.h>

#include <algorithm>
#include <cstring>

#include "arch/x86/msrs.h"
#include "base/error.h"
#include "base/log.h"
#include "engine/kvm/kvm_vcpu.h"

namespace keel {

namespace {

// LVT registers of the local APIC page (KVM_GET_LAPIC/KVM_SET_LAPIC).
constexpr size_t kApicLvtLint0 = 0x350;
constexpr size_t kApicLvtLint1 = 0x360;
constexpr uint32_t kApicDeliveryExtInt = 7 << 8;
constexpr uint32_t kApicDeliveryNmi = 4 << 8;

void set_lvt(kvm_lapic_state& lapic, size_t reg, uint32_t mode) {
  uint32_t v;
  std::memcpy(&v, lapic.regs + reg, 4);
  v = (v & ~0x700u) | mode;
  std::memcpy(lapic.regs + reg, &v, 4);
}

void ioctl_or_throw(int fd, unsigned long request, const void* arg, const char* what) {
  if (::ioctl(fd, request, arg) < 0) throw_errno(what);
}

kvm_irq_routing_entry msi_entry(uint32_t gsi, const MsiMessage& msg) {
  kvm_irq_routing_entry e{};
  e.gsi = gsi;
  e.type = KVM_IRQ_ROUTING_MSI;
  e.u.msi.address_lo = static_cast<uint32_t>(msg.address);
  e.u.msi.address_hi = static_cast<uint32_t>(msg.address >> 32);
  e.u.msi.data = msg.data;
  return e;
}

kvm_irq_routing_entry irqchip_entry(uint32_t gsi, uint32_t chip, uint32_t pin) {
  kvm_irq_routing_entry e{};
  e.gsi = gsi;
  e.type = KVM_IRQ_ROUTING_IRQCHIP;
  e.u.irqchip.irqchip = chip;
  e.u.irqchip.pin = pin;
  return e;
}

constexpr uint32_t kFirstMsiGsi = 24;

}  // namespace

KvmEngine::KvmEngine(EngineContext context, EngineConfig config)
    : context_(context), config_(config), kvm_(KvmSystem::open()) {
  kvm_.check_requirements();
  run_size_ = kvm_.vcpu_mmap_size();
  max_vcpus_ = static_cast<uint32_t>(std::max(kvm_.check_extension(KVM_CAP_MAX_VCPUS),
                                              kvm_.check_extension(KVM_CAP_NR_VCPUS)));
  if (config_.vcpus == 0 || config_.vcpus > max_vcpus_)
    throw Error("KVM supports 1 to " + std::to_string(max_vcpus_) + " vCPUs, asked for " +
                std::to_string(config_.vcpus));
  supported_cpuid_ = kvm_.supported_cpuid();
  tsc_deadline_ = kvm_.check_extension(KVM_CAP_TSC_DEADLINE_TIMER) > 0;
  xsave_ = kvm_.check_extension(KVM_CAP_XSAVE) > 0;

  int vm = ::ioctl(kvm_.fd(), KVM_CREATE_VM, 0);
  if (vm < 0) throw_errno("KVM_CREATE_VM");
  vm_.reset(vm);

  if (::ioctl(vm, KVM_SET_TSS_ADDR, kKvmTssAddr) < 0) throw_errno("KVM_SET_TSS_ADDR");
  uint64_t identity = kKvmIdentityMapAddr;
  ioctl_or_throw(vm, KVM_SET_IDENTITY_MAP_ADDR, &identity, "KVM_SET_IDENTITY_MAP_ADDR");

  set_memory_slots(0);

  if (::ioctl(vm, KVM_CREATE_IRQCHIP, 0) < 0) throw_errno("KVM_CREATE_IRQCHIP");
  kvm_pit_config pit{};
  pit.flags = KVM_PIT_SPEAKER_DUMMY;
  ioctl_or_throw(vm, KVM_CREATE_PIT2, &pit, "KVM_CREATE_PIT2");

  install_kvm_kick_handler();
}

KvmEngine::~KvmEngine() = default;

std::vector<x86::CpuidEntry> KvmEngine::guest_cpuid(uint32_t index) const {
  return x86::apply_cpuid_policy(
      supported_cpuid_,
      {.apic_id = index, .vcpu_count = config_.vcpus, .tsc_deadline = tsc_deadline_,
       .model = config_.cpu_model});
}

void KvmEngine::set_memory_slots(uint32_t flags) {
  uint32_t slot = 0;
  for (const auto& region : context_.memory.regions()) {
    kvm_userspace_memory_region r{};
    r.slot = slot++;
    r.flags = flags;
    r.guest_phys_addr = region.gpa;
    r.memory_size = region.size;
    r.userspace_addr = reinterpret_cast<uint64_t>(region.host);
    ioctl_or_throw(vm_.get(), KVM_SET_USER_MEMORY_REGION, &r, "KVM_SET_USER_MEMORY_REGION");
  }
}

std::string KvmEngine::start_dirty_log() {
  try {
    set_memory_slots(KVM_MEM_LOG_DIRTY_PAGES);
  } catch (const Error& e) {
    try {
      set_memory_slots(0);
    } catch (const Error&) {
    }
    return std::string("KVM refuses dirty logging: ") + e.what();
  }
  context_.memory.start_dirty_log();
  dirty_logging_ = true;
  return {};
}

std::vector<uint64_t> KvmEngine::take_dirty_log() {
  GuestMemory& memory = context_.memory;
  if (dirty_logging_) {
    uint32_t slot = 0;
    std::vector<uint64_t> bitmap;
    for (const auto& region : memory.regions()) {
      const uint64_t pages = region.size / kPageSize;
      bitmap.assign((pages + 63) / 64, 0);
      kvm_dirty_log log{};
      log.slot = slot++;
      log.dirty_bitmap = bitmap.data();
      ioctl_or_throw(vm_.get(), KVM_GET_DIRTY_LOG, &log, "KVM_GET_DIRTY_LOG");
      const uint64_t first = static_cast<uint64_t>(region.host - memory.ram_base()) / kPageSize;
      for (uint64_t w = 0; w < bitmap.size(); ++w)
        for (uint64_t bits = bitmap[w]; bits; bits &= bits - 1)
          memory.mark_dirty_pages(first + w * 64 + static_cast<uint64_t>(__builtin_ctzll(bits)), 1);
    }
  }
  return memory.take_dirty();
}

void KvmEngine::stop_dirty_log() {
  if (!dirty_logging_) return;
  dirty_logging_ = false;
  context_.memory.stop_dirty_log();
  try {
    set_memory_slots(0);
  } catch (const Error& e) {
    // Called from cleanup paths: logging left on costs KVM some write faults, nothing more.
    log::warn("dirty logging stays on in KVM: {}", e.what());
  }
}

std::unique_ptr<Vcpu> KvmEngine::create_vcpu(uint32_t index) {
  if (index >= config_.vcpus)
    throw Error("vCPU index " + std::to_string(index) + " out of range (the VM has " +
                std::to_string(config_.vcpus) + ")");
  int fd = ::ioctl(vm_.get(), KVM_CREATE_VCPU, index);
  if (fd < 0) throw_errno("KVM_CREATE_VCPU " + std::to_string(index));
  UniqueFd vcpu_fd(fd);

  auto entries = guest_cpuid(index);
  std::vector<uint8_t> cpuid_buf(sizeof(kvm_cpuid2) + entries.size() * sizeof(kvm_cpuid_entry2));
  auto* cpuid = reinterpret_cast<kvm_cpuid2*>(cpuid_buf.data());
  cpuid->nent = static_cast<uint32_t>(entries.size());
  for (size_t i = 0; i < entries.size(); ++i) {
    const auto& e = entries[i];
    cpuid->entries[i] = {};
    cpuid->entries[i].function = e.function;
    cpuid->entries[i].index = e.index;
    cpuid->entries[i].flags = e.flags;
    cpuid->entries[i].eax = e.eax;
    cpuid->entries[i].ebx = e.ebx;
    cpuid->entries[i].ecx = e.ecx;
    cpuid->entries[i].edx = e.edx;
  }
  ioctl_or_throw(fd, KVM_SET_CPUID2, cpuid, "KVM_SET_CPUID2");

  auto msrs = x86::boot_msrs();
  std::vector<uint8_t> msr_buf(sizeof(kvm_msrs) + msrs.size() * sizeof(kvm_msr_entry));
  auto* kmsrs = reinterpret_cast<kvm_msrs*>(msr_buf.data());
  kmsrs->nmsrs = static_cast<uint32_t>(msrs.size());
  for (size_t i = 0; i < msrs.size(); ++i) {
    kmsrs->entries[i] = {};
    kmsrs->entries[i].index = msrs[i].index;
    kmsrs->entries[i].data = msrs[i].value;
  }
  int set = ::ioctl(fd, KVM_SET_MSRS, kmsrs);
  if (set < 0) throw_errno("KVM_SET_MSRS");
  if (static_cast<size_t>(set) != msrs.size()) {
    char buf[16];
    std::snprintf(buf, sizeof buf, "0x%x", msrs[set].index);
    throw Error(std::string("KVM_SET_MSRS refused MSR ") + buf);
  }

  // LINT0 takes the PIC's ExtINT, LINT1 NMI, as firmware sets them up on a PC.
  kvm_lapic_state lapic{};
  ioctl_or_throw(fd, KVM_GET_LAPIC, &lapic, "KVM_GET_LAPIC");
  set_lvt(lapic, kApicLvtLint0, kApicDeliveryExtInt);
  set_lvt(lapic, kApicLvtLint1, kApicDeliveryNmi);
  ioctl_or_throw(fd, KVM_SET_LAPIC, &lapic, "KVM_SET_LAPIC");

  return std::make_unique<KvmVcpu>(index, std::move(vcpu_fd), run_size_, context_, xsave_);
}

void KvmEngine::set_irq(uint32_t gsi, bool level) {
  kvm_irq_level irq{};
  irq.irq = gsi;
  irq.level = level ? 1 : 0;
  ioctl_or_throw(vm_.get(), KVM_IRQ_LINE, &irq, "KVM_IRQ_LINE");
}

void KvmEngine::send_msi(const MsiMessage& msg) {
  kvm_msi msi{};
  msi.address_lo = static_cast<uint32_t>(msg.address);
  msi.address_hi = static_cast<uint32_t>(msg.address >> 32);
  msi.data = msg.data;
  // 0 means the guest masked or has not enabled the target: not an error.
  if (::ioctl(vm_.get(), KVM_SIGNAL_MSI, &msi) < 0) throw_errno("KVM_SIGNAL_MSI");
}

void KvmEngine::commit_routes() {
  // KVM_SET_GSI_ROUTING replaces the whole table: KVM's default IRQ-chip routes plus ours.
  std::vector<kvm_irq_routing_entry> entries;
  for (uint32_t gsi = 0; gsi < 24; ++gsi) {
    if (gsi < 8) entries.push_back(irqchip_entry(gsi, KVM_IRQCHIP_PIC_MASTER, gsi));
    else if (gsi < 16) entries.push_back(irqchip_entry(gsi, KVM_IRQCHIP_PIC_SLAVE, gsi - 8));
    entries.push_back(irqchip_entry(gsi, KVM_IRQCHIP_IOAPIC, gsi));
  }
  for (const auto& r : msi_routes_) entries.push_back(msi_entry(r.gsi, r.msg));

  std::vector<uint8_t> buf(sizeof(kvm_irq_routing) + entries.size() * sizeof(kvm_irq_routing_entry));
  auto* routing = reinterpret_cast<kvm_irq_routing*>(buf.data());
  routing->nr = static_cast<uint32_t>(entries.size());
  std::copy(entries.begin(), entries.end(), routing->entries);
  ioctl_or_throw(vm_.get(), KVM_SET_GSI_ROUTING, routing, "KVM_SET_GSI_ROUTING");
}

void KvmEngine::add_ioeventfd(IoSpace space, uint64_t addr, uint32_t len,
                              std::optional<uint64_t> datamatch, int eventfd) {
  kvm_ioeventfd io{};
  io.addr = addr;
  io.len = len;
  io.fd = eventfd;
  if (space == IoSpace::kPio) io.flags |= KVM_IOEVENTFD_FLAG_PIO;
  if (datamatch) {
    io.flags |= KVM_IOEVENTFD_FLAG_DATAMATCH;
    io.datamatch = *datamatch;
  }
  ioctl_or_throw(vm_.get(), KVM_IOEVENTFD, &io, "KVM_IOEVENTFD");
}

void KvmEngine::remove_ioeventfd(IoSpace space, uint64_t addr, uint32_t len,
                                 std::optional<uint64_t> datamatch, int eventfd) {
  kvm_ioeventfd io{};
  io.addr = addr;
  io.len = len;
  io.fd = eventfd;
  io.flags = KVM_IOEVENTFD_FLAG_DEASSIGN;
  if (space == IoSpace::kPio) io.flags |= KVM_IOEVENTFD_FLAG_PIO;
  if (datamatch) {
    io.flags |= KVM_IOEVENTFD_FLAG_DATAMATCH;
    io.datamatch = *datamatch;
  }
  ioctl_or_throw(vm_.get(), KVM_IOEVENTFD, &io, "KVM_IOEVENTFD (deassign)");
}

void KvmEngine::add_irqfd(uint32_t gsi, int eventfd, int resample_eventfd) {
  kvm_irqfd irqfd{};
  irqfd.fd = static_cast<uint32_t>(eventfd);
  irqfd.gsi = gsi;
  if (resample_eventfd >= 0) {
    irqfd.flags = KVM_IRQFD_FLAG_RESAMPLE;
    irqfd.resamplefd = static_cast<uint32_t>(resample_eventfd);
  }
  ioctl_or_throw(vm_.get(), KVM_IRQFD, &irqfd, "KVM_IRQFD");
}

uint32_t KvmEngine::add_irqfd(const MsiMessage& msg, int eventfd) {
  uint32_t gsi;
  {
    std::lock_guard lock(routes_mutex_);
    // The lowest free GSI above the IOAPIC's, so that routes freed by remove_irqfd are reused.
    gsi = kFirstMsiGsi;
    while (std::any_of(msi_routes_.begin(), msi_routes_.end(),
                       [gsi](const GsiRoute& r) { return r.gsi == gsi; }))
      ++gsi;
    msi_routes_.push_back({gsi, msg});
    try {
      commit_routes();
    } catch (...) {
      msi_routes_.pop_back();
      throw;
    }
  }
  try {
    add_irqfd(gsi, eventfd);
  } catch (...) {
    drop_msi_route(gsi);
    throw;
  }
  return gsi;
}

void KvmEngine::update_msi_route(uint32_t gsi, const MsiMessage& msg) {
  std::lock_guard lock(routes_mutex_);
  auto it = std::find_if(msi_routes_.begin(), msi_routes_.end(),
                         [gsi](const GsiRoute& r) { return r.gsi == gsi; });
  if (it == msi_routes_.end()) throw Error("no MSI route for GSI " + std::to_string(gsi));
  it->msg = msg;
  commit_routes();
}

void KvmEngine::remove_irqfd(uint32_t gsi, int eventfd) {
  kvm_irqfd irqfd{};
  irqfd.fd = static_cast<uint32_t>(eventfd);
  irqfd.gsi = gsi;
  irqfd.flags = KVM_IRQFD_FLAG_DEASSIGN;
  ioctl_or_throw(vm_.get(), KVM_IRQFD, &irqfd, "KVM_IRQFD (deassign)");
  drop_msi_route(gsi);
}

void KvmEngine::drop_msi_route(uint32_t gsi) {
  std::lock_guard lock(routes_mutex_);
  auto it = std::find_if(msi_routes_.begin(), msi_routes_.end(),
                         [gsi](const GsiRoute& r) { return r.gsi == gsi; });
  if (it != msi_routes_.end()) {
    msi_routes_.erase(it);
    commit_routes();
  }
}

std::unique_ptr<MsiRoute> KvmEngine::create_msi_route(const MsiMessage& msg) {
  try {
    return std::make_unique<KvmMsiRoute>(*this, msg);
  } catch (const Error& e) {
    if (!irqfd_refused_.exchange(true))
      log::warn("kvm: MSI irqfd refused ({}); MSI-X vectors fall back to KVM_SIGNAL_MSI", e.what());
    return InterruptController::create_msi_route(msg);
  }
}

KvmMsiRoute::KvmMsiRoute(KvmEngine& engine, const MsiMessage& msg)
    : engine_(engine), gsi_(engine.add_irqfd(msg, eventfd_.fd())) {}

KvmMsiRoute::~KvmMsiRoute() {
  try {
    engine_.remove_irqfd(gsi_, eventfd_.fd());
  } catch (const Error& e) {
    log::warn("kvm: freeing the MSI route on GSI {}: {}", gsi_, e.what());
  }
}

}  // namespace keel
