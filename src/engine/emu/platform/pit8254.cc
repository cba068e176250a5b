#include "engine/emu/platform/pit8254.h"

#include <algorithm>

#include "engine/emu/platform/guest_clock.h"

namespace keel::emu {

namespace {

uint32_t from_bcd(uint32_t v) {
  return ((v >> 12) & 0xF) * 1000 + ((v >> 8) & 0xF) * 100 + ((v >> 4) & 0xF) * 10 + (v & 0xF);
}

uint16_t to_bcd(uint32_t v) {
  return static_cast<uint16_t>(((v / 1000) % 10) << 12 | ((v / 100) % 10) << 8 |
                               ((v / 10) % 10) << 4 | (v % 10));
}

// Port 0x61 bit 4 toggles with DRAM refresh, every ~15 us; old delay loops watch it.
constexpr uint64_t kRefreshToggleNs = 15'085;

class Port61 final : public BusDevice {
 public:
  explicit Port61(Pit8254& pit) : pit_(pit) {}
  void read(uint64_t, std::span<uint8_t> data) override {
    for (auto& b : data) b = pit_.read_port61();
  }
  void write(uint64_t, std::span<const uint8_t> data) override {
    if (!data.empty()) pit_.write_port61(data[0]);
  }

 private:
  Pit8254& pit_;
};

}  // namespace

Pit8254::Pit8254(const GuestClock& clock, std::vector<IrqLine> irq0)
    : clock_(clock), irq0_(std::move(irq0)), next_edge_ns_(kNever) {
  // Channels 0 and 1 have their gates tied high; channel 2's follows port 0x61 bit 0.
  ch_[0].gate = ch_[1].gate = true;
}

std::shared_ptr<BusDevice> Pit8254::port61_device() { return std::make_shared<Port61>(*this); }

// ---------------------------------------------------------------------------------------------
// Counting, computed from the clock

uint64_t Pit8254::ticks_locked(const Channel& c, uint64_t now) const {
  if (!c.counting) return 0;
  if (c.paused) return c.paused_ticks;
  return now > c.load_ns ? mul_div(now - c.load_ns, kPitHz, kNsPerSec) : 0;
}

uint64_t Pit8254::tick_time_locked(const Channel& c, uint64_t tick) const {
  return c.load_ns + mul_div_ceil(tick, kNsPerSec, kPitHz);
}

uint16_t Pit8254::count_locked(const Channel& c, uint64_t now) const {
  uint32_t modulus = c.bcd ? 10000 : 0x10000;
  uint64_t n = c.reload;
  uint32_t v;
  if (!c.counting) {
    v = static_cast<uint32_t>(n % modulus);
  } else {
    uint64_t d = ticks_locked(c, now);
    switch (c.mode) {
      case 2:
        v = static_cast<uint32_t>((n - d % n) % modulus);
        break;
      case 3:
        v = static_cast<uint32_t>(((n - (2 * d) % n) % modulus) & ~1u);
        break;
      default:  // 0, 1, 4, 5: count down and wrap
        v = static_cast<uint32_t>((n + modulus - d % modulus) % modulus);
        break;
    }
  }
  return c.bcd ? to_bcd(v) : static_cast<uint16_t>(v);
}

bool Pit8254::out_locked(const Channel& c, uint64_t now) const {
  uint64_t n = c.reload;
  switch (c.mode) {
    case 0:
      return c.counting && ticks_locked(c, now) >= n;  // low until terminal count
    case 1:
    case 5:
      if (!c.counting) return true;  // waiting for the gate trigger
      return c.mode == 1 ? ticks_locked(c, now) >= n : ticks_locked(c, now) != n;
    case 2:
      if (!c.counting || !c.gate) return true;
      return ticks_locked(c, now) % n != n - 1;  // low for the tick before reload
    case 3:
      if (!c.counting || !c.gate) return true;
      return ticks_locked(c, now) % n < (n + 1) / 2;  // high for the first half
    case 4:
      return !c.counting || ticks_locked(c, now) != n;  // one low tick at terminal count
    default:
      return true;
  }
}

uint8_t Pit8254::status_locked(const Channel& c, uint64_t now) const {
  return static_cast<uint8_t>((out_locked(c, now) ? 0x80 : 0) | (c.null_count ? 0x40 : 0) |
                              c.access << 4 | c.mode << 1 | (c.bcd ? 1 : 0));
}

uint64_t Pit8254::next_edge_locked(uint64_t after_ns) const {
  const Channel& c = ch_[0];
  if (!c.counting || c.paused) return kNever;
  uint64_t d = ticks_locked(c, after_ns);
  uint64_t n = c.reload;
  uint64_t tick;
  switch (c.mode) {
    case 0: tick = n; break;        // OUT rises at terminal count
    case 4: tick = n + 1; break;    // OUT rises after its one low tick
    case 2:
    case 3: tick = (d / n + 1) * n; break;  // every period
    default: return kNever;         // 1 and 5 need a gate edge channel 0 never gets
  }
  if (tick <= d) return kNever;  // one-shot edge already behind us
  return tick_time_locked(c, tick);
}

uint64_t Pit8254::poll(uint64_t now_ns) {
  bool fire = false;
  uint64_t next;
  {
    std::lock_guard lock(mutex_);
    if (next_edge_ns_ <= now_ns) {
      fire = true;
      next_edge_ns_ = next_edge_locked(now_ns);
    }
    next = next_edge_ns_;
  }
  if (fire)
    for (const auto& line : irq0_) line.pulse();
  return next;
}

// ---------------------------------------------------------------------------------------------
// Programming

void Pit8254::load_count_locked(Channel& c, uint32_t raw, uint64_t now) {
  uint32_t n = c.bcd ? from_bcd(raw) : raw;
  if (n == 0) n = c.bcd ? 10000 : 0x10000;
  if ((c.mode == 2 || c.mode == 3) && n == 1) n = 2;  // 1 is illegal in the periodic modes
  c.reload = n;
  c.null_count = false;
  c.paused = false;
  c.paused_ticks = 0;
  // Modes 1 and 5 wait for a gate rising edge; the others start now (if the gate allows).
  if (c.mode == 1 || c.mode == 5) return;
  c.counting = true;
  c.load_ns = now;
  if (!c.gate && (c.mode == 0 || c.mode == 4)) {
    c.paused = true;  // counts once the gate goes high
  }
}

void Pit8254::latch_count_locked(Channel& c, uint64_t now) {
  if (c.count_latched) return;  // a second latch before the read is ignored
  c.count_latched = true;
  c.latched_count = count_locked(c, now);
  c.latch_msb_next = false;
}

void Pit8254::control_word_locked(uint8_t value, uint64_t now) {
  int sel = value >> 6;
  if (sel == 3) {  // read-back: bit 5 clear latches counts, bit 4 clear latches status
    for (int i = 0; i < 3; ++i) {
      if (!(value & (2 << i))) continue;
      Channel& c = ch_[i];
      if (!(value & 0x20)) latch_count_locked(c, now);
      if (!(value & 0x10) && !c.status_latched) {
        c.status_latched = true;
        c.latched_status = status_locked(c, now);
      }
    }
    return;
  }
  Channel& c = ch_[sel];
  uint8_t access = (value >> 4) & 3;
  if (access == 0) {
    latch_count_locked(c, now);
    return;
  }
  c.access = access;
  c.mode = (value >> 1) & 7;
  if (c.mode > 5) c.mode -= 4;  // 6 and 7 are aliases of 2 and 3
  c.bcd = value & 1;
  c.counting = false;
  c.null_count = true;
  c.paused = false;
  c.write_msb_next = c.read_msb_next = false;
  c.count_latched = c.status_latched = false;
}

bool Pit8254::write_port_locked(int port, uint8_t value, uint64_t now) {
  if (port == 3) {
    control_word_locked(value, now);
    return (value >> 6) == 0;
  }
  Channel& c = ch_[port];
  switch (c.access) {
    case 1:
      load_count_locked(c, value, now);
      break;
    case 2:
      load_count_locked(c, uint32_t{value} << 8, now);
      break;
    default:
      if (!c.write_msb_next) {
        c.write_lsb = value;
        c.write_msb_next = true;
        return false;
      }
      c.write_msb_next = false;
      load_count_locked(c, c.write_lsb | uint32_t{value} << 8, now);
      break;
  }
  return port == 0;
}

uint8_t Pit8254::read_port_locked(int port, uint64_t now) {
  if (port == 3) return 0xFF;  // the control register is write-only
  Channel& c = ch_[port];
  if (c.status_latched) {
    c.status_latched = false;
    return c.latched_status;
  }
  auto byte_of = [&](uint16_t v, bool& msb_next) -> uint8_t {
    switch (c.access) {
      case 1: return static_cast<uint8_t>(v);
      case 2: return static_cast<uint8_t>(v >> 8);
      default: {
        bool msb = msb_next;
        msb_next = !msb_next;
        return static_cast<uint8_t>(msb ? v >> 8 : v);
      }
    }
  };
  if (c.count_latched) {
    uint8_t b = byte_of(c.latched_count, c.latch_msb_next);
    // The latch holds until every byte of the access mode has been read.
    if (c.access != 3 || !c.latch_msb_next) c.count_latched = false;
    return b;
  }
  return byte_of(count_locked(c, now), c.read_msb_next);
}

void Pit8254::read(uint64_t offset, std::span<uint8_t> data) {
  std::lock_guard lock(mutex_);
  uint64_t now = clock_.now_ns();
  for (size_t i = 0; i < data.size(); ++i)
    data[i] = offset + i <= 3 ? read_port_locked(static_cast<int>(offset + i), now) : 0xFF;
}

void Pit8254::write(uint64_t offset, std::span<const uint8_t> data) {
  bool reprogrammed = false;
  {
    std::lock_guard lock(mutex_);
    uint64_t now = clock_.now_ns();
    for (size_t i = 0; i < data.size() && offset + i <= 3; ++i)
      reprogrammed |= write_port_locked(static_cast<int>(offset + i), data[i], now);
    if (reprogrammed) next_edge_ns_ = next_edge_locked(now);
  }
  if (reprogrammed && reprogrammed_) reprogrammed_();
}

// ---------------------------------------------------------------------------------------------
// Gate (channel 2 only) and port 0x61

void Pit8254::set_gate_locked(Channel& c, bool gate, uint64_t now) {
  if (gate == c.gate) return;
  switch (c.mode) {
    case 0:
    case 4:
      // Counting pauses while the gate is low and resumes where it stopped.
      if (c.counting) {
        if (!gate) {
          c.paused_ticks = ticks_locked(c, now);
          c.paused = true;
        } else {
          c.paused = false;
          c.load_ns = now - std::min(now, mul_div_ceil(c.paused_ticks, kNsPerSec, kPitHz));
        }
      }
      break;
    default:
      // Modes 1, 2, 3, 5: a rising edge (re)starts the count; in 2 and 3 a low gate holds OUT
      // high (out_locked looks at the gate).
      if (gate && !c.null_count) {
        c.counting = true;
        c.load_ns = now;
      }
      break;
  }
  c.gate = gate;
}

uint8_t Pit8254::read_port61() {
  std::lock_guard lock(mutex_);
  uint64_t now = clock_.now_ns();
  uint8_t v = port61_ & 0x0F;
  if ((now / kRefreshToggleNs) & 1) v |= 0x10;
  if (out_locked(ch_[2], now)) v |= 0x20;
  return v;
}

void Pit8254::write_port61(uint8_t value) {
  std::lock_guard lock(mutex_);
  port61_ = value & 0x0F;
  set_gate_locked(ch_[2], value & 1, clock_.now_ns());
}

bool Pit8254::out(int channel) {
  std::lock_guard lock(mutex_);
  return out_locked(ch_[channel % 3], clock_.now_ns());
}

uint16_t Pit8254::count(int channel) {
  std::lock_guard lock(mutex_);
  return count_locked(ch_[channel % 3], clock_.now_ns());
}

}  // namespace keel::emu
