// Pit8254: the 8254 programmable interval timer at ports 0x40-0x43, and port 0x61 (system control
// port B: channel 2 gate, speaker enable, channel 2 output in bit 5).
//
// Counters are not ticked: every value (count, OUT) is computed on demand from the GuestClock at
// 1.193182 MHz, from the time the count was loaded. Channel 0's OUT rising edges become IRQ0
// pulses on the lines given (the platform wires GSI 0 and GSI 2, see kPitIrqGsis) when someone
// calls poll(now): the BSP's
// LocalApicModel does at every interrupt check and HLT, with the DeadlineWatcher reporting when
// the next edge is due. No thread of its own.
//
// Modes 0-5 (0, 2, 3 and 4 exact; 1 and 5 start on a gate rising edge, which only channel 2 has),
// binary and BCD, lobyte/hibyte/word access, the counter latch command and the read-back command.
//
// Thread-safe: port accesses from vCPU threads, poll() from the BSP's thread. The lock is never
// held while IRQ0 is pulsed or the reprogram listener runs.
#pragma once

#include <array>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <span>
#include <vector>

#include "bus/io_bus.h"
#include "engine/emu/local_apic.h"
#include "irq/interrupts.h"
#include "state/state_format.h"

namespace keel::emu {

inline constexpr uint64_t kPitHz = 1'193'182;
inline constexpr uint16_t kPitPortBase = 0x40;
inline constexpr uint16_t kSystemControlPortB = 0x61;
// ISA IRQ0 reaches IOAPIC pin 2 when the MADT has the usual IRQ0 -> GSI 2 override (QEMU's
// layout) and pin 0 when it has none (KVM's default routing). The PIT pulses both: the guest
// unmasks only the one its MADT names, and nothing else sits on GSI 0 or 2 (2 is the cascade).
inline constexpr std::array<uint32_t, 2> kPitIrqGsis = {0, 2};

class Pit8254 final : public BusDevice {
 public:
  // IRQ0 edges are pulsed on every line of `irq0`.
  Pit8254(const GuestClock& clock, std::vector<IrqLine> irq0);

  // Ports 0x40-0x43 (offset 0-3). Multi-byte accesses are taken as consecutive byte accesses.
  void read(uint64_t offset, std::span<uint8_t> data) override;
  void write(uint64_t offset, std::span<const uint8_t> data) override;

  // Port 0x61.
  uint8_t read_port61();
  void write_port61(uint8_t value);
  // A BusDevice for port 0x61 (the PIT must outlive it).
  std::shared_ptr<BusDevice> port61_device();

  // Pulses IRQ0 if a channel 0 rising edge is due at `now_ns`; returns the time of the next edge
  // (kNever if none). Missed edges coalesce into one pulse, as an edge-triggered input would.
  uint64_t poll(uint64_t now_ns);
  // Called (without the lock) after channel 0 was reprogrammed, so the poller re-polls.
  void set_reprogram_listener(std::function<void()> listener) { reprogrammed_ = std::move(listener); }

  // Test and debug view of a channel, as it would read now.
  bool out(int channel);
  uint16_t count(int channel);

  // Snapshots: the three channels (times relative to the guest clock's start) and port 0x61.
  void save_state(state::SectionWriter& out, uint64_t epoch_ns);
  void restore_state(const state::SectionReader& in, uint64_t epoch_ns);

 private:
  struct Channel {
    uint8_t mode = 0;
    uint8_t access = 3;  // 1 LSB, 2 MSB, 3 LSB then MSB
    bool bcd = false;
    bool gate = false;
    uint32_t reload = 0x10000;  // count in ticks (0 written means 65536, or 10000 in BCD)
    bool counting = false;      // a count was written (and, for modes 1/5, the gate triggered)
    bool null_count = true;     // control word written, count not yet loaded
    uint64_t load_ns = 0;
    // Modes 0/4 pause while the gate is low: ticks counted before the pause.
    bool paused = false;
    uint64_t paused_ticks = 0;
    bool write_msb_next = false;
    uint8_t write_lsb = 0;
    bool read_msb_next = false;
    bool count_latched = false;
    uint16_t latched_count = 0;
    bool latch_msb_next = false;
    bool status_latched = false;
    uint8_t latched_status = 0;
  };

  uint8_t read_port_locked(int port, uint64_t now);
  // Returns true when channel 0's timing changed.
  bool write_port_locked(int port, uint8_t value, uint64_t now);
  void control_word_locked(uint8_t value, uint64_t now);
  void load_count_locked(Channel& c, uint32_t raw, uint64_t now);
  void latch_count_locked(Channel& c, uint64_t now);
  void set_gate_locked(Channel& c, bool gate, uint64_t now);

  uint64_t ticks_locked(const Channel& c, uint64_t now) const;
  uint16_t count_locked(const Channel& c, uint64_t now) const;
  bool out_locked(const Channel& c, uint64_t now) const;
  uint8_t status_locked(const Channel& c, uint64_t now) const;
  uint64_t next_edge_locked(uint64_t after_ns) const;  // channel 0, strictly after `after_ns`
  uint64_t tick_time_locked(const Channel& c, uint64_t tick) const;

  const GuestClock& clock_;
  std::vector<IrqLine> irq0_;
  std::function<void()> reprogrammed_;
  std::mutex mutex_;
  std::array<Channel, 3> ch_;
  uint8_t port61_ = 0;      // bits 0-3 as written
  uint64_t next_edge_ns_;   // channel 0's next IRQ0 edge
};

}  // namespace keel::emu
