// I8042: the PC keyboard controller at ports 0x60 (data) and 0x64 (status/command), with no
// keyboard or mouse behind it beyond what Linux's probe needs.
//
// What it does: the controller commands Linux's i8042 driver sends (read/write the command byte,
// self tests, port enable/disable, output port, loopback writes to the keyboard and aux buffers),
// ACKs to keyboard commands, and the reset line: command 0xFE (pulse output line 0), or writing
// the output port with bit 0 clear, asks the machine to reset.
//
// Thread safety: one mutex; request_stop() and IRQ pulses happen under it (PowerControl is
// thread-safe and never calls back into devices).
#pragma once

#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>
#include <span>

#include "bus/io_bus.h"
#include "devices/power.h"
#include "irq/interrupts.h"
#include "state/persistent.h"

namespace keel {

class I8042 : public BusDevice, public state::Persistent {
 public:
  static constexpr uint16_t kDataPort = 0x60;
  static constexpr uint16_t kCommandPort = 0x64;
  static constexpr uint32_t kKeyboardIrq = 1;
  static constexpr uint32_t kAuxIrq = 12;

  // One device covers ports 0x60..0x64 (offset 0 = data, offset 4 = status/command); 0x61..0x63
  // are not the controller's and the machine does not map this device there.
  I8042(PowerControl& power, IrqLine keyboard_irq, IrqLine aux_irq);

  // The status/command port as its own bus device (offset 0 = 0x64), so the machine can map
  // 0x60 and 0x64 alone and leave 0x61 (PIT/speaker) to its owner.
  static std::shared_ptr<BusDevice> command_port(std::shared_ptr<I8042> kbc);

  // Offset relative to 0x60: 0 = data, 4 = status/command.
  void read(uint64_t offset, std::span<uint8_t> data) override;
  void write(uint64_t offset, std::span<const uint8_t> data) override;

  // The command byte, output port, a half-sent command and the output queue.
  void save_state(state::SectionWriter& out) override;
  void restore_state(const state::SectionReader& in) override;
  static constexpr size_t kMaxQueued = 16;  // output bytes waiting for the guest, at most

  // Status register bits.
  static constexpr uint8_t kStatusOutputFull = 0x01;
  static constexpr uint8_t kStatusSystem = 0x04;
  static constexpr uint8_t kStatusCommand = 0x08;  // last write went to 0x64
  static constexpr uint8_t kStatusAuxData = 0x20;

 private:
  struct Byte {
    uint8_t value;
    bool aux;
  };
  void command(uint8_t cmd);                 // mutex held
  void data(uint8_t value);                  // mutex held
  void queue(uint8_t value, bool aux);       // mutex held
  void reset_line(const char* detail);       // mutex held

  PowerControl& power_;
  const IrqLine keyboard_irq_;
  const IrqLine aux_irq_;

  std::mutex mutex_;
  std::deque<Byte> output_;
  uint8_t ctr_ = 0x45;  // command byte: keyboard IRQ on, system flag, translate
  uint8_t pending_command_ = 0;  // controller command waiting for its data byte
  uint8_t output_port_ = 0x03;   // bit 0: reset line (active low), bit 1: A20
  bool last_was_command_ = false;
};

}  // namespace keel
