#include "devices/virtio/virtio_pci.h"

#include "sandbox/thread_launcher.h"

#include <cstring>

#include "base/log.h"

namespace keel {

namespace {

constexpr uint16_t kVirtioVendor = 0x1af4;
constexpr uint8_t kCapCommon = 1, kCapNotify = 2, kCapIsr = 3, kCapDevice = 4, kCapPciCfg = 5;

// Common configuration registers (4.1.4.3).
enum : uint32_t {
  kDeviceFeatureSelect = 0x00,
  kDeviceFeature = 0x04,
  kDriverFeatureSelect = 0x08,
  kDriverFeature = 0x0c,
  kConfigMsixVector = 0x10,
  kNumQueues = 0x12,
  kDeviceStatus = 0x14,
  kConfigGeneration = 0x15,
  kQueueSelect = 0x16,
  kQueueSize = 0x18,
  kQueueMsixVector = 0x1a,
  kQueueEnable = 0x1c,
  kQueueNotifyOff = 0x1e,
  kQueueDescLo = 0x20,
  kQueueDescHi = 0x24,
  kQueueDriverLo = 0x28,
  kQueueDriverHi = 0x2c,
  kQueueDeviceLo = 0x30,
  kQueueDeviceHi = 0x34,
};

struct Field {
  uint32_t offset;
  unsigned size;
};
constexpr Field kFields[] = {
    {kDeviceFeatureSelect, 4}, {kDeviceFeature, 4},   {kDriverFeatureSelect, 4},
    {kDriverFeature, 4},       {kConfigMsixVector, 2}, {kNumQueues, 2},
    {kDeviceStatus, 1},        {kConfigGeneration, 1}, {kQueueSelect, 2},
    {kQueueSize, 2},           {kQueueMsixVector, 2},  {kQueueEnable, 2},
    {kQueueNotifyOff, 2},      {kQueueDescLo, 4},      {kQueueDescHi, 4},
    {kQueueDriverLo, 4},       {kQueueDriverHi, 4},    {kQueueDeviceLo, 4},
    {kQueueDeviceHi, 4},
};

const Field* field_at(uint32_t offset) {
  for (const Field& f : kFields)
    if (offset >= f.offset && offset < f.offset + f.size) return &f;
  return nullptr;
}

uint32_t class_code(uint16_t device_id) {
  switch (device_id) {
    case virtio::kIdNet: return 0x020000;      // network controller
    case virtio::kIdBlock: return 0x010000;    // SCSI storage controller, as QEMU
    case virtio::kIdConsole: return 0x078000;  // communication controller
    default: return 0xff0000;                  // unassigned class
  }
}

// virtio_pci_cap (4.1.4): vendor cap header is added by add_capability; body starts at cap_len.
std::vector<uint8_t> virtio_cap(uint8_t type, uint8_t bar, uint32_t offset, uint32_t length,
                                size_t extra = 0) {
  std::vector<uint8_t> body(14 + extra, 0);
  body[0] = static_cast<uint8_t>(16 + extra);  // cap_len
  body[1] = type;
  body[2] = bar;
  std::memcpy(&body[6], &offset, 4);
  std::memcpy(&body[10], &length, 4);
  return body;
}

}  // namespace

std::thread start_device_thread(const VirtioContext& ctx, const std::string& name,
                                std::function<void()> fn) {
  if (ctx.launcher) return ctx.launcher->start(sandbox::ThreadKind::kDeviceWorker, name, std::move(fn));
  return std::thread(std::move(fn));
}

void read_config_image(std::span<const uint8_t> image, uint64_t offset, std::span<uint8_t> data) {
  for (size_t i = 0; i < data.size(); ++i)
    data[i] = offset + i < image.size() ? image[offset + i] : 0;
}

VirtioPciDevice::VirtioPciDevice(std::unique_ptr<VirtioDevice> device, GuestMemory& memory,
                                 InterruptController* interrupts)
    : PciDevice({.vendor_id = kVirtioVendor,
                 .device_id = static_cast<uint16_t>(0x1040 + device->device_id()),
                 .class_code = class_code(device->device_id()),
                 .revision = 1,
                 .subsystem_vendor_id = kVirtioVendor,
                 .subsystem_id = 0x1100}),
      device_(std::move(device)),
      memory_(memory),
      offered_(device_->features() | virtio::bit(virtio::kFeatureVersion1)),
      num_queues_(device_->num_queues()) {
  if (num_queues_ == 0 || num_queues_ > 64) throw Error(name() + ": unsupported queue count");
  if (device_->config_size() > 0x1000) throw Error(name() + ": device config too large");
  for (uint16_t q = 0; q < num_queues_; ++q)
    queues_.push_back(std::make_unique<SplitQueue>(device_->queue_max_size(q)));
  queue_vectors_ = std::make_unique<std::atomic<uint16_t>[]>(num_queues_);
  for (uint16_t q = 0; q < num_queues_; ++q) queue_vectors_[q] = virtio::kNoVector;

  add_bar(kMsixBar, 0x1000, BarKind::kMem32);
  add_bar(kRegionsBar, 0x4000, BarKind::kMem64);
  add_capability(pci::kCapIdVendor, virtio_cap(kCapCommon, kRegionsBar, kCommonOffset, kCommonSize));
  auto notify = virtio_cap(kCapNotify, kRegionsBar, kNotifyOffset, kNotifyMultiplier * num_queues_, 4);
  std::memcpy(&notify[14], &kNotifyMultiplier, 4);
  add_capability(pci::kCapIdVendor, notify);
  add_capability(pci::kCapIdVendor, virtio_cap(kCapIsr, kRegionsBar, kIsrOffset, 1));
  if (device_->config_size())
    add_capability(pci::kCapIdVendor,
                   virtio_cap(kCapDevice, kRegionsBar, kDeviceConfigOffset, device_->config_size()));
  // PCI configuration access (4.1.4.8): bar, offset, length and the data window are writable.
  auto pci_cfg = virtio_cap(kCapPciCfg, 0, 0, 0, 4);
  std::vector<uint8_t> writable(pci_cfg.size(), 0);
  writable[2] = 0xff;
  std::fill(writable.begin() + 6, writable.end(), 0xff);
  pci_cfg_cap_ = add_capability(pci::kCapIdVendor, pci_cfg, writable);
  add_msix(num_queues_ + 1, kMsixBar, 0, 0x800, interrupts);
}

VirtioPciDevice::~VirtioPciDevice() { shutdown(); }

void VirtioPciDevice::shutdown() {
  std::lock_guard lock(mutex_);
  if (active_ && !quiesced_) device_->reset();
  active_ = false;
  quiesced_ = false;
}

void VirtioPciDevice::quiesce() {
  std::lock_guard lock(mutex_);
  if (!active_ || quiesced_) return;
  device_->reset();  // joins the workers; in-flight I/O completes and is published first
  quiesced_ = true;
}

void VirtioPciDevice::unquiesce() {
  std::lock_guard lock(mutex_);
  if (!quiesced_) return;
  quiesced_ = false;
  if (active_) activate_locked();
}

void VirtioPciDevice::save_state(state::SectionWriter& out) {
  save_config(out);
  std::lock_guard lock(mutex_);
  out.u16("device_id", device_->device_id());
  out.u16("num_queues", num_queues_);
  out.u32("device_feature_select", device_feature_select_);
  out.u32("driver_feature_select", driver_feature_select_);
  out.u64("driver_features", driver_features_);
  out.u16("queue_select", queue_select_);
  out.boolean("active", active_);
  out.u8("status", status_.load());
  out.u8("isr", isr_.load());
  out.u8("config_generation", config_generation_.load());
  out.u16("config_vector", config_vector_.load());
  for (uint16_t q = 0; q < num_queues_; ++q) {
    std::string prefix = "q" + std::to_string(q) + "_";
    out.u16(prefix + "vector", queue_vectors_[q].load());
    queues_[q]->save_state(out, prefix);
  }
  device_->save_device_state(out);
}

void VirtioPciDevice::restore_state(const state::SectionReader& in) {
  if (in.u16("device_id") != device_->device_id() || in.u16("num_queues") != num_queues_)
    in.fail("virtio device type " + std::to_string(in.u16("device_id")) + " with " +
            std::to_string(in.u16("num_queues")) + " queues, this machine has " + name());
  uint64_t features = in.u64("driver_features");
  if (features & ~offered_)
    in.fail("driver features include bits this device does not offer");
  restore_config(in);
  std::lock_guard lock(mutex_);
  if (active_) device_->reset();
  device_feature_select_ = in.u32("device_feature_select");
  driver_feature_select_ = in.u32("driver_feature_select");
  driver_features_ = features;
  queue_select_ = in.u16("queue_select");
  status_ = in.u8("status");
  isr_ = in.u8("isr");
  config_generation_ = in.u8("config_generation");
  config_vector_ = checked_vector(in.u16("config_vector"));
  for (uint16_t q = 0; q < num_queues_; ++q) {
    std::string prefix = "q" + std::to_string(q) + "_";
    queue_vectors_[q] = checked_vector(in.u16(prefix + "vector"));
    queues_[q]->restore_state(in, prefix, memory_);
  }
  device_->restore_device_state(in);
  active_ = in.boolean("active");
  quiesced_ = active_;  // unquiesce() starts the device once the whole machine is restored
}

uint64_t VirtioPciDevice::driver_features() const {
  std::lock_guard lock(mutex_);
  return driver_features_;
}

SplitQueue* VirtioPciDevice::selected_queue() {
  return queue_select_ < num_queues_ ? queues_[queue_select_].get() : nullptr;
}
const SplitQueue* VirtioPciDevice::selected_queue() const {
  return queue_select_ < num_queues_ ? queues_[queue_select_].get() : nullptr;
}

uint16_t VirtioPciDevice::checked_vector(uint16_t vector) const {
  // A vector the table does not have reads back as NO_VECTOR: that is how the driver learns the
  // assignment failed (4.1.5.1.2).
  return vector < num_queues_ + 1 ? vector : virtio::kNoVector;
}

uint32_t VirtioPciDevice::common_read(uint32_t field) const {
  const SplitQueue* q = selected_queue();
  switch (field) {
    case kDeviceFeatureSelect: return device_feature_select_;
    case kDeviceFeature:
      return device_feature_select_ < 2
                 ? static_cast<uint32_t>(offered_ >> (32 * device_feature_select_))
                 : 0;
    case kDriverFeatureSelect: return driver_feature_select_;
    case kDriverFeature:
      return driver_feature_select_ < 2
                 ? static_cast<uint32_t>(driver_features_ >> (32 * driver_feature_select_))
                 : 0;
    case kConfigMsixVector: return config_vector_.load();
    case kNumQueues: return num_queues_;
    case kDeviceStatus: return status_.load();
    case kConfigGeneration: return config_generation_.load();
    case kQueueSelect: return queue_select_;
    case kQueueSize: return q ? q->size() : 0;
    case kQueueMsixVector: return q ? queue_vectors_[queue_select_].load() : virtio::kNoVector;
    case kQueueEnable: return q && q->enabled();
    case kQueueNotifyOff: return q ? queue_select_ : 0;
    case kQueueDescLo: return q ? static_cast<uint32_t>(q->desc_addr()) : 0;
    case kQueueDescHi: return q ? static_cast<uint32_t>(q->desc_addr() >> 32) : 0;
    case kQueueDriverLo: return q ? static_cast<uint32_t>(q->avail_addr()) : 0;
    case kQueueDriverHi: return q ? static_cast<uint32_t>(q->avail_addr() >> 32) : 0;
    case kQueueDeviceLo: return q ? static_cast<uint32_t>(q->used_addr()) : 0;
    case kQueueDeviceHi: return q ? static_cast<uint32_t>(q->used_addr() >> 32) : 0;
  }
  return 0;
}

void VirtioPciDevice::common_write(uint32_t field, uint32_t value) {
  SplitQueue* q = selected_queue();
  // Queue layout is fixed once the queue is enabled or the device is live.
  bool q_writable = q && !q->enabled() && !active_;
  auto set_lo = [](uint64_t old, uint32_t v) { return (old & ~0xffffffffull) | v; };
  auto set_hi = [](uint64_t old, uint32_t v) { return (old & 0xffffffffull) | (uint64_t{v} << 32); };
  switch (field) {
    case kDeviceFeatureSelect: device_feature_select_ = value; break;
    case kDriverFeatureSelect: driver_feature_select_ = value; break;
    case kDriverFeature:
      if (driver_feature_select_ < 2 && !(status_.load() & virtio::kStatusFeaturesOk)) {
        unsigned shift = 32 * driver_feature_select_;
        driver_features_ = (driver_features_ & ~(0xffffffffull << shift)) | (uint64_t{value} << shift);
      }
      break;
    case kConfigMsixVector: config_vector_ = checked_vector(value); break;
    case kDeviceStatus: write_status(static_cast<uint8_t>(value)); break;
    case kQueueSelect: queue_select_ = static_cast<uint16_t>(value); break;
    case kQueueSize:
      if (q_writable) q->set_size(static_cast<uint16_t>(value));
      break;
    case kQueueMsixVector:
      if (q) queue_vectors_[queue_select_] = checked_vector(value);
      break;
    case kQueueEnable:
      if (q_writable && value == 1) {
        try {
          q->enable(memory_);
        } catch (const QueueError& e) {
          queue_broken(queue_select_, e.what());
        }
      }
      break;
    case kQueueDescLo: if (q_writable) q->set_desc_addr(set_lo(q->desc_addr(), value)); break;
    case kQueueDescHi: if (q_writable) q->set_desc_addr(set_hi(q->desc_addr(), value)); break;
    case kQueueDriverLo: if (q_writable) q->set_avail_addr(set_lo(q->avail_addr(), value)); break;
    case kQueueDriverHi: if (q_writable) q->set_avail_addr(set_hi(q->avail_addr(), value)); break;
    case kQueueDeviceLo: if (q_writable) q->set_used_addr(set_lo(q->used_addr(), value)); break;
    case kQueueDeviceHi: if (q_writable) q->set_used_addr(set_hi(q->used_addr(), value)); break;
    default: break;  // read-only registers
  }
}

void VirtioPciDevice::reset_locked() {
  if (active_ && !quiesced_) device_->reset();
  active_ = false;
  quiesced_ = false;
  for (auto& q : queues_) q->reset();
  for (uint16_t q = 0; q < num_queues_; ++q) queue_vectors_[q] = virtio::kNoVector;
  config_vector_ = virtio::kNoVector;
  device_feature_select_ = driver_feature_select_ = 0;
  driver_features_ = 0;
  queue_select_ = 0;
  isr_ = 0;
  status_ = 0;
}

void VirtioPciDevice::write_status(uint8_t value) {
  if (value == 0) {
    reset_locked();
    return;
  }
  uint8_t old = status_.load();
  if ((value & virtio::kStatusFeaturesOk) && !(old & virtio::kStatusFeaturesOk)) {
    // FEATURES_OK sticks only for a subset of what was offered that includes VERSION_1; otherwise
    // the driver reads it back clear and gives up (3.1.1).
    bool ok = !(driver_features_ & ~offered_) &&
              (driver_features_ & virtio::bit(virtio::kFeatureVersion1));
    if (!ok) {
      log::warn("{}: driver features {:#x} refused (offered {:#x})", name(), driver_features_,
                offered_);
      value &= ~virtio::kStatusFeaturesOk;
    }
  }
  value |= old & virtio::kStatusNeedsReset;  // device-owned bit
  status_ = value;
  if ((value & virtio::kStatusDriverOk) && (value & virtio::kStatusFeaturesOk) && !active_ &&
      !(value & virtio::kStatusFailed)) {
    bool indirect = driver_features_ & virtio::bit(virtio::kFeatureRingIndirectDesc);
    bool event_idx = driver_features_ & virtio::bit(virtio::kFeatureRingEventIdx);
    for (auto& q : queues_) q->set_features(indirect, event_idx);
    active_ = true;
    activate_locked();
  }
}

void VirtioPciDevice::activate_locked() {
  VirtioContext ctx{memory_, {}, *this, driver_features_, launcher_};
  for (auto& q : queues_) ctx.queues.push_back(q.get());
  device_->activate(ctx);
}

void VirtioPciDevice::signal_queue(uint16_t queue) {
  isr_.fetch_or(1);
  if (queue < num_queues_ && msix()->enabled()) {
    uint16_t vector = queue_vectors_[queue].load();
    if (vector != virtio::kNoVector) msix()->notify(vector);
  }
}

void VirtioPciDevice::signal_config() {
  config_generation_.fetch_add(1);
  isr_.fetch_or(2);
  uint16_t vector = config_vector_.load();
  if (vector != virtio::kNoVector && msix()->enabled()) msix()->notify(vector);
}

void VirtioPciDevice::queue_broken(uint16_t queue, const std::string& reason) {
  log::warn("{}: queue {} needs reset: {}", name(), queue, reason);
  if (status_.fetch_or(virtio::kStatusNeedsReset) & virtio::kStatusNeedsReset) return;
  signal_config();
}

void VirtioPciDevice::bar_read(int bar, uint64_t offset, std::span<uint8_t> data) {
  std::memset(data.data(), 0, data.size());
  if (bar != kRegionsBar) return;
  if (offset < kCommonSize) {
    std::lock_guard lock(mutex_);
    for (size_t i = 0; i < data.size() && offset + i < kCommonSize; ++i) {
      const Field* f = field_at(offset + i);
      if (!f) continue;
      uint32_t v = common_read(f->offset);
      data[i] = static_cast<uint8_t>(v >> (8 * (offset + i - f->offset)));
    }
  } else if (offset == kIsrOffset) {
    data[0] = isr_.exchange(0);  // reading ISR status clears it (4.1.4.5)
  } else if (offset >= kDeviceConfigOffset && offset < kNotifyOffset) {
    uint64_t off = offset - kDeviceConfigOffset;
    if (off < device_->config_size()) device_->read_config(off, data);
  }
}

void VirtioPciDevice::bar_write(int bar, uint64_t offset, std::span<const uint8_t> data) {
  if (bar != kRegionsBar) return;
  if (offset < kCommonSize) {
    std::lock_guard lock(mutex_);
    // Group the written bytes by register, merging partial writes with the current value.
    size_t i = 0;
    while (i < data.size() && offset + i < kCommonSize) {
      const Field* f = field_at(offset + i);
      if (!f) {
        ++i;
        continue;
      }
      uint32_t v = common_read(f->offset);
      while (i < data.size() && offset + i < f->offset + f->size) {
        unsigned shift = 8 * (offset + i - f->offset);
        v = (v & ~(0xffu << shift)) | (uint32_t{data[i]} << shift);
        ++i;
      }
      common_write(f->offset, v);
    }
  } else if (offset >= kDeviceConfigOffset && offset < kNotifyOffset) {
    uint64_t off = offset - kDeviceConfigOffset;
    if (off < device_->config_size()) device_->write_config(off, data);
  } else if (offset >= kNotifyOffset && offset < kNotifyOffset + kNotifyMultiplier * num_queues_) {
    uint16_t queue = (offset - kNotifyOffset) / kNotifyMultiplier;
    std::lock_guard lock(mutex_);
    if (active_ && !quiesced_ && queues_[queue]->enabled()) device_->notify(queue);
  }
}

// The PCI configuration access capability: a window onto the BARs through config space.
void VirtioPciDevice::config_read_hook(uint32_t offset, unsigned size, uint32_t& value) {
  uint32_t data = pci_cfg_cap_ + 16;
  if (offset < data || offset >= data + 4) return;
  uint8_t bar = read_config_locked(pci_cfg_cap_ + 4, 1);
  uint32_t bar_offset = read_config_locked(pci_cfg_cap_ + 8, 4);
  uint32_t length = read_config_locked(pci_cfg_cap_ + 12, 4);
  if (length != 1 && length != 2 && length != 4) return;
  uint8_t buf[4] = {};
  bar_access_read(bar, bar_offset, {buf, length});
  write_config_raw(data, 4, 0);
  std::memcpy(&value, buf, std::min<unsigned>(size, length));
}

void VirtioPciDevice::config_written(uint32_t offset, unsigned size) {
  uint32_t data = pci_cfg_cap_ + 16;
  if (offset + size <= data || offset >= data + 4) return;
  uint8_t bar = read_config_locked(pci_cfg_cap_ + 4, 1);
  uint32_t bar_offset = read_config_locked(pci_cfg_cap_ + 8, 4);
  uint32_t length = read_config_locked(pci_cfg_cap_ + 12, 4);
  if (length != 1 && length != 2 && length != 4) return;
  uint32_t v = read_config_locked(data, 4);
  bar_access_write(bar, bar_offset, {reinterpret_cast<uint8_t*>(&v), length});
}

}  // namespace keel
