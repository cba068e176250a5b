#include "devices/legacy/i8042.h"

namespace keel {
namespace {

// Command byte bits.
constexpr uint8_t kCtrKeyboardInt = 0x01, kCtrAuxInt = 0x02, kCtrSystem = 0x04;
constexpr uint8_t kCtrKeyboardDisabled = 0x10, kCtrAuxDisabled = 0x20;

// Controller commands (port 0x64).
constexpr uint8_t kCmdReadCtr = 0x20, kCmdWriteCtr = 0x60;
constexpr uint8_t kCmdAuxDisable = 0xA7, kCmdAuxEnable = 0xA8, kCmdAuxTest = 0xA9;
constexpr uint8_t kCmdSelfTest = 0xAA, kCmdKeyboardTest = 0xAB;
constexpr uint8_t kCmdKeyboardDisable = 0xAD, kCmdKeyboardEnable = 0xAE;
constexpr uint8_t kCmdReadOutputPort = 0xD0, kCmdWriteOutputPort = 0xD1;
constexpr uint8_t kCmdWriteKeyboardBuffer = 0xD2, kCmdWriteAuxBuffer = 0xD3, kCmdWriteAux = 0xD4;
constexpr uint8_t kCmdPulseReset = 0xFE;

// Keyboard device replies.
constexpr uint8_t kKbdAck = 0xFA, kKbdSelfTestPassed = 0xAA;

class CommandPort : public BusDevice {
 public:
  explicit CommandPort(std::shared_ptr<I8042> kbc) : kbc_(std::move(kbc)) {}
  void read(uint64_t offset, std::span<uint8_t> data) override { kbc_->read(offset + 4, data); }
  void write(uint64_t offset, std::span<const uint8_t> data) override {
    kbc_->write(offset + 4, data);
  }

 private:
  std::shared_ptr<I8042> kbc_;
};

}  // namespace

std::shared_ptr<BusDevice> I8042::command_port(std::shared_ptr<I8042> kbc) {
  return std::make_shared<CommandPort>(std::move(kbc));
}

I8042::I8042(PowerControl& power, IrqLine keyboard_irq, IrqLine aux_irq)
    : power_(power), keyboard_irq_(keyboard_irq), aux_irq_(aux_irq) {}

void I8042::read(uint64_t offset, std::span<uint8_t> out) {
  if (out.empty()) return;
  std::lock_guard lock(mutex_);
  uint8_t v = 0xFF;
  if (offset == 0) {
    if (!output_.empty()) {
      v = output_.front().value;
      output_.pop_front();
      // The next queued byte (if any) becomes visible with its own interrupt.
      if (!output_.empty()) {
        const Byte& next = output_.front();
        if (next.aux ? (ctr_ & kCtrAuxInt) : (ctr_ & kCtrKeyboardInt))
          (next.aux ? aux_irq_ : keyboard_irq_).pulse();
      }
    } else {
      v = 0;
    }
  } else if (offset == 4) {
    v = kStatusSystem;
    if (!output_.empty()) {
      v |= kStatusOutputFull;
      if (output_.front().aux) v |= kStatusAuxData;
    }
    if (last_was_command_) v |= kStatusCommand;
  }
  // Wider accesses are not meaningful on an 8-bit controller: extra bytes read as 0xFF.
  out[0] = v;
  for (size_t i = 1; i < out.size(); ++i) out[i] = 0xFF;
}

void I8042::write(uint64_t offset, std::span<const uint8_t> in) {
  // Only 1-byte writes reach the controller; a wider write is ignored rather than guessed at.
  if (in.size() != 1) return;
  std::lock_guard lock(mutex_);
  if (offset == 0) {
    last_was_command_ = false;
    data(in[0]);
  } else if (offset == 4) {
    last_was_command_ = true;
    command(in[0]);
  }
}

void I8042::queue(uint8_t value, bool aux) {
  // Bound the queue: a guest looping on commands without reading must not grow it forever.
  if (output_.size() >= kMaxQueued) return;
  bool was_empty = output_.empty();
  output_.push_back({value, aux});
  if (was_empty && (aux ? (ctr_ & kCtrAuxInt) : (ctr_ & kCtrKeyboardInt)))
    (aux ? aux_irq_ : keyboard_irq_).pulse();
}

void I8042::reset_line(const char* detail) {
  power_.request_stop(StopReason::kReset, detail);
}

void I8042::command(uint8_t cmd) {
  pending_command_ = 0;
  switch (cmd) {
    case kCmdReadCtr:
      queue(ctr_, false);
      return;
    case kCmdWriteCtr:
    case kCmdWriteOutputPort:
    case kCmdWriteKeyboardBuffer:
    case kCmdWriteAuxBuffer:
    case kCmdWriteAux:
      pending_command_ = cmd;
      return;
    case kCmdAuxDisable:
      ctr_ |= kCtrAuxDisabled;
      return;
    case kCmdAuxEnable:
      ctr_ &= ~kCtrAuxDisabled;
      return;
    case kCmdAuxTest:
    case kCmdKeyboardTest:
      queue(0x00, false);  // interface test passed
      return;
    case kCmdSelfTest:
      ctr_ |= kCtrSystem;
      queue(0x55, false);
      return;
    case kCmdKeyboardDisable:
      ctr_ |= kCtrKeyboardDisabled;
      return;
    case kCmdKeyboardEnable:
      ctr_ &= ~kCtrKeyboardDisabled;
      return;
    case kCmdReadOutputPort:
      queue(output_port_, false);
      return;
    case kCmdPulseReset:
      reset_line("i8042 reset");
      return;
    default:
      // Commands 0xF0-0xFF pulse output lines: only bit 0 (reset) is wired, handled above.
      return;
  }
}

void I8042::data(uint8_t value) {
  uint8_t cmd = pending_command_;
  pending_command_ = 0;
  switch (cmd) {
    case kCmdWriteCtr:
      ctr_ = value;
      return;
    case kCmdWriteOutputPort:
      output_port_ = value;
      if (!(value & 0x01)) reset_line("i8042 reset");
      return;
    case kCmdWriteKeyboardBuffer:
      queue(value, false);
      return;
    case kCmdWriteAuxBuffer:
      queue(value, true);
      return;
    case kCmdWriteAux:
      return;  // no mouse: the aux device does not answer
    default:
      break;
  }
  // A byte for the keyboard itself: acknowledge it; "reset" also reports a passed self test.
  queue(kKbdAck, false);
  if (value == 0xFF) queue(kKbdSelfTestPassed, false);
  if (value == 0xF2) {  // get ID: an MF2 keyboard
    queue(0xAB, false);
    queue(0x83, false);
  }
}

void I8042::save_state(state::SectionWriter& out) {
  std::lock_guard lock(mutex_);
  std::vector<uint8_t> values, aux;
  for (const Byte& b : output_) {
    values.push_back(b.value);
    aux.push_back(b.aux ? 1 : 0);
  }
  out.bytes("output", values);
  out.bytes("output_aux", aux);
  out.u8("ctr", ctr_);
  out.u8("pending_command", pending_command_);
  out.u8("output_port", output_port_);
  out.boolean("last_was_command", last_was_command_);
}

void I8042::restore_state(const state::SectionReader& in) {
  auto values = in.bytes("output", kMaxQueued);
  auto aux = in.bytes("output_aux", kMaxQueued);
  if (aux.size() != values.size()) in.fail("fields 'output' and 'output_aux' differ in length");
  std::lock_guard lock(mutex_);
  output_.clear();
  for (size_t i = 0; i < values.size(); ++i) output_.push_back({values[i], aux[i] != 0});
  ctr_ = in.u8("ctr");
  pending_command_ = in.u8("pending_command");
  output_port_ = in.u8("output_port");
  last_was_command_ = in.boolean("last_was_command");
}

}  // namespace keel
