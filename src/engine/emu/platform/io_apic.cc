#include "engine/emu/platform/io_apic.h"

#include <algorithm>
#include <cstring>

namespace keel::emu {

namespace {

constexpr uint64_t kOffsetSelect = 0x00;
constexpr uint64_t kOffsetWindow = 0x10;
constexpr uint64_t kOffsetEoi = 0x40;
// Writable bits of a redirection entry: vector, delivery mode, destination mode, polarity,
// trigger mode, mask (low word) and the 8-bit destination (high word).
constexpr uint64_t kRedirWritable = 0xFF00'0000'0001'AFFFull;

}  // namespace

IoApic::IoApic(ApicBus& bus, uint8_t id) : bus_(bus), id_(id & 0xF) {
  redir_.fill(kMasked);
}

void IoApic::read(uint64_t offset, std::span<uint8_t> data) {
  std::fill(data.begin(), data.end(), 0);
  // 32-bit registers at 0x00 and 0x10; narrower reads inside one return its bytes.
  uint64_t reg = offset & ~uint64_t{3};
  uint64_t within = offset & 3;
  if (data.empty() || within + data.size() > 4) return;
  uint32_t v = 0;
  {
    std::lock_guard lock(mutex_);
    if (reg == kOffsetSelect)
      v = select_;
    else if (reg == kOffsetWindow)
      v = read_indirect_locked(select_);
    else
      return;
  }
  std::memcpy(data.data(), reinterpret_cast<const uint8_t*>(&v) + within, data.size());
}

void IoApic::write(uint64_t offset, std::span<const uint8_t> data) {
  std::lock_guard lock(mutex_);
  if (offset == kOffsetSelect && !data.empty() && data.size() <= 4) {
    select_ = data[0];  // IOREGSEL holds an 8-bit index; byte writes are common
    return;
  }
  if (data.size() != 4) return;  // the window and EOI registers take 32-bit writes only
  uint32_t value;
  std::memcpy(&value, data.data(), 4);
  if (offset == kOffsetWindow) {
    write_indirect_locked(select_, value);
  } else if (offset == kOffsetEoi) {
    eoi_locked(value & 0xFF);
  }
}

uint32_t IoApic::read_indirect_locked(uint32_t index) const {
  switch (index) {
    case 0x00: return id_ << 24;
    case 0x01: return kIoApicVersion;
    case 0x02: return id_ << 24;  // arbitration id
    default: break;
  }
  if (index >= 0x10 && index < 0x10 + 2 * kIoApicPins) {
    uint64_t e = redir_[(index - 0x10) / 2];
    return index % 2 == 0 ? static_cast<uint32_t>(e) : static_cast<uint32_t>(e >> 32);
  }
  return 0;  // reserved registers
}

void IoApic::write_indirect_locked(uint32_t index, uint32_t value) {
  if (index == 0x00) {
    id_ = (value >> 24) & 0xF;
    return;
  }
  if (index < 0x10 || index >= 0x10 + 2 * kIoApicPins) return;  // version, arbitration, reserved
  uint32_t pin = (index - 0x10) / 2;
  uint64_t& e = redir_[pin];
  uint64_t old = e;
  uint64_t v = index % 2 == 0 ? (old & ~uint64_t{0xFFFF'FFFF}) | value
                              : (old & 0xFFFF'FFFF) | (uint64_t{value} << 32);
  e = (v & kRedirWritable) | (old & kRemoteIrr);
  if (!(e & kLevel)) e &= ~kRemoteIrr;  // an edge pin has no remote IRR
  // Unmasking an asserted level pin (or making an asserted pin level) delivers it now.
  if (e & kLevel) service_locked(pin);
}

void IoApic::set_irq(uint32_t pin, bool level) {
  if (pin >= kIoApicPins) return;
  std::lock_guard lock(mutex_);
  bool was = line_[pin];
  line_[pin] = level;
  uint64_t e = redir_[pin];
  if (e & kMasked) return;
  // Level pins follow the line; edge pins deliver on a rising edge only.
  if ((e & kLevel) || (level && !was)) service_locked(pin);
}

void IoApic::service_locked(uint32_t pin) {
  uint64_t& e = redir_[pin];
  if (e & kMasked) return;
  bool level = e & kLevel;
  // Only level pins are serviced from state (unmask, EOI); edge pins deliver from set_irq's
  // rising edge alone.
  if (level && (!line_[pin] || (e & kRemoteIrr))) return;
  ApicMessage msg;
  msg.vector = static_cast<uint8_t>(e & 0xFF);
  msg.mode = static_cast<DeliveryMode>((e >> 8) & 7);
  msg.logical = e & kLogical;
  msg.level_triggered = level;
  msg.destination = static_cast<uint8_t>(e >> 56);
  bool fixed = msg.mode == DeliveryMode::kFixed || msg.mode == DeliveryMode::kLowestPriority;
  if (level && fixed) e |= kRemoteIrr;
  bus_.deliver(msg);
}

void IoApic::eoi(uint8_t vector) {
  std::lock_guard lock(mutex_);
  eoi_locked(vector);
}

void IoApic::eoi_locked(uint8_t vector) {
  for (uint32_t pin = 0; pin < kIoApicPins; ++pin) {
    if ((redir_[pin] & 0xFF) != vector || !(redir_[pin] & kRemoteIrr)) continue;
    redir_[pin] &= ~kRemoteIrr;
    service_locked(pin);  // still asserted: deliver again
  }
}

uint64_t IoApic::redirection(uint32_t pin) const {
  std::lock_guard lock(mutex_);
  return pin < kIoApicPins ? redir_[pin] : 0;
}

}  // namespace keel::emu
