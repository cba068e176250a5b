#include "devices/legacy/serial16550.h"

#include <utility>

namespace keel {
namespace {

// IER bits.
constexpr uint8_t kIerRda = 0x01, kIerThre = 0x02, kIerRls = 0x04, kIerMsi = 0x08;
// IIR interrupt identifications (bit 0 clear = pending), highest priority first.
constexpr uint8_t kIirNone = 0x01, kIirRls = 0x06, kIirRda = 0x04, kIirThre = 0x02, kIirMsi = 0x00;
constexpr uint8_t kIirFifoEnabled = 0xC0;
// FCR bits.
constexpr uint8_t kFcrEnable = 0x01, kFcrClearRx = 0x02;
// LCR / MCR / LSR bits.
constexpr uint8_t kLcrDlab = 0x80;
constexpr uint8_t kMcrDtr = 0x01, kMcrRts = 0x02, kMcrOut1 = 0x04, kMcrOut2 = 0x08, kMcrLoop = 0x10;
constexpr uint8_t kLsrDataReady = 0x01, kLsrOverrun = 0x02, kLsrThre = 0x20, kLsrTemt = 0x40;
// MSR bits: inputs in 7:4, their deltas in 3:0.
constexpr uint8_t kMsrCts = 0x10, kMsrDsr = 0x20, kMsrRi = 0x40, kMsrDcd = 0x80;
constexpr uint8_t kMsrDcts = 0x01, kMsrDdsr = 0x02, kMsrTeri = 0x04, kMsrDdcd = 0x08;

}  // namespace

Serial16550::Serial16550(IrqLine irq, ConsoleOutput output)
    : irq_(irq), output_(std::move(output)) {}

void Serial16550::set_input_space_callback(std::function<void()> callback) {
  std::lock_guard lock(mutex_);
  space_callback_ = std::move(callback);
}

void Serial16550::hold_input_until_driver_ready() {
  std::lock_guard lock(mutex_);
  hold_input_ = true;
}

size_t Serial16550::push_input(std::span<const uint8_t> bytes) {
  std::lock_guard lock(mutex_);
  if (hold_input_) {
    rx_refused_ = rx_refused_ || !bytes.empty();
    return 0;
  }
  size_t accepted = 0;
  // In loopback the receiver is wired to the transmitter, not to the line.
  if (!(mcr_ & kMcrLoop)) {
    while (accepted < bytes.size() && rx_.size() < kRxCapacity) rx_.push_back(bytes[accepted++]);
  }
  if (accepted < bytes.size()) rx_refused_ = true;
  update_irq();
  return accepted;
}

void Serial16550::read(uint64_t offset, std::span<uint8_t> data) {
  std::function<void()> call_space;
  {
    std::lock_guard lock(mutex_);
    // A wider access reads consecutive registers, as the ISA bus splits it.
    for (size_t i = 0; i < data.size(); ++i)
      data[i] = offset + i < kPortCount ? read_reg(static_cast<uint8_t>(offset + i)) : 0xFF;
    if (rx_refused_ && rx_.empty()) {
      rx_refused_ = false;
      call_space = space_callback_;  // a copy: the owner may replace it meanwhile
    }
    update_irq();
  }
  if (call_space) call_space();
}

void Serial16550::write(uint64_t offset, std::span<const uint8_t> data) {
  std::vector<uint8_t> out;
  std::unique_lock lock(mutex_);
  for (size_t i = 0; i < data.size(); ++i)
    if (offset + i < kPortCount) write_reg(static_cast<uint8_t>(offset + i), data[i], out);
  update_irq();
  std::function<void()> call_space;
  if (hold_input_ && (ier_ & kIerRda) && (fcr_ & kFcrEnable)) {
    hold_input_ = false;  // the driver is ready: what waited on the host may come now
    if (std::exchange(rx_refused_, false)) call_space = space_callback_;
  }
  if (!out.empty() && output_) {
    std::lock_guard out_lock(output_mutex_);
    lock.unlock();
    output_(out);
  } else {
    lock.unlock();
  }
  if (call_space) call_space();
}

uint8_t Serial16550::msr_inputs() const {
  if (mcr_ & kMcrLoop) {
    uint8_t v = 0;
    if (mcr_ & kMcrRts) v |= kMsrCts;
    if (mcr_ & kMcrDtr) v |= kMsrDsr;
    if (mcr_ & kMcrOut1) v |= kMsrRi;
    if (mcr_ & kMcrOut2) v |= kMsrDcd;
    return v;
  }
  // A null-modem line that is always ready.
  return kMsrDcd | kMsrDsr | kMsrCts;
}

uint8_t Serial16550::iir() const {
  uint8_t id = kIirNone;
  if ((ier_ & kIerRls) && lsr_errors_) id = kIirRls;
  else if ((ier_ & kIerRda) && !rx_.empty()) id = kIirRda;
  else if ((ier_ & kIerThre) && thr_interrupt_) id = kIirThre;
  else if ((ier_ & kIerMsi) && msr_delta_) id = kIirMsi;
  return id | ((fcr_ & kFcrEnable) ? kIirFifoEnabled : 0);
}

uint8_t Serial16550::read_reg(uint8_t reg) {
  const bool dlab = lcr_ & kLcrDlab;
  switch (reg) {
    case kRbrThr: {
      if (dlab) return divisor_ & 0xFF;
      if (rx_.empty()) return 0;
      uint8_t v = rx_.front();
      rx_.pop_front();
      return v;
    }
    case kIer:
      return dlab ? divisor_ >> 8 : ier_;
    case kIirFcr: {
      uint8_t v = iir();
      // Reading IIR acknowledges a THR-empty interrupt when that is what it reports.
      if ((v & 0x0F) == kIirThre) thr_interrupt_ = false;
      return v;
    }
    case kLcr:
      return lcr_;
    case kMcr:
      return mcr_;
    case kLsr: {
      uint8_t v = kLsrThre | kLsrTemt | lsr_errors_ | (rx_.empty() ? 0 : kLsrDataReady);
      lsr_errors_ = 0;
      return v;
    }
    case kMsr: {
      uint8_t v = msr_inputs() | msr_delta_;
      msr_delta_ = 0;
      return v;
    }
    case kScr:
      return scr_;
  }
  return 0xFF;
}

void Serial16550::write_reg(uint8_t reg, uint8_t value, std::vector<uint8_t>& out) {
  const bool dlab = lcr_ & kLcrDlab;
  switch (reg) {
    case kRbrThr:
      if (dlab) {
        divisor_ = (divisor_ & 0xFF00) | value;
        return;
      }
      if (mcr_ & kMcrLoop) receive(value);
      else out.push_back(value);
      // Transmission is instant: the THR is empty again at once.
      thr_interrupt_ = true;
      return;
    case kIer:
      if (dlab) {
        divisor_ = static_cast<uint16_t>((divisor_ & 0x00FF) | (value << 8));
        return;
      }
      // Enabling THRE interrupts while the THR is empty raises one at once (Linux's THRE test
      // relies on it).
      if ((value & kIerThre) && !(ier_ & kIerThre)) thr_interrupt_ = true;
      if (!(value & kIerThre)) thr_interrupt_ = false;
      ier_ = value & 0x0F;
      return;
    case kIirFcr:
      if ((value ^ fcr_) & kFcrEnable) rx_.clear();  // switching FIFO mode resets the FIFOs
      if (value & kFcrClearRx) rx_.clear();
      fcr_ = value & 0xC1;  // keep the enable bit and the receive trigger level
      return;
    case kLcr:
      lcr_ = value;
      return;
    case kMcr: {
      uint8_t before = msr_inputs();
      mcr_ = value & 0x1F;
      uint8_t after = msr_inputs();
      uint8_t changed = before ^ after;
      if (changed & kMsrCts) msr_delta_ |= kMsrDcts;
      if (changed & kMsrDsr) msr_delta_ |= kMsrDdsr;
      if ((before & kMsrRi) && !(after & kMsrRi)) msr_delta_ |= kMsrTeri;
      if (changed & kMsrDcd) msr_delta_ |= kMsrDdcd;
      return;
    }
    case kLsr:
    case kMsr:
      return;  // read-only (factory test registers on real parts)
    case kScr:
      scr_ = value;
      return;
  }
}

void Serial16550::receive(uint8_t byte) {
  if (rx_.size() >= kRxCapacity) {
    lsr_errors_ |= kLsrOverrun;
    return;
  }
  rx_.push_back(byte);
}

void Serial16550::save_state(state::SectionWriter& out) {
  std::lock_guard lock(mutex_);
  std::vector<uint8_t> rx(rx_.begin(), rx_.end());
  out.bytes("rx_fifo", rx);
  out.u8("ier", ier_);
  out.u8("lcr", lcr_);
  out.u8("mcr", mcr_);
  out.u8("lsr_errors", lsr_errors_);
  out.u8("msr_delta", msr_delta_);
  out.u8("scr", scr_);
  out.u8("fcr", fcr_);
  out.u16("divisor", divisor_);
  out.boolean("thr_interrupt", thr_interrupt_);
  out.boolean("irq_level", irq_level_);
}

void Serial16550::restore_state(const state::SectionReader& in) {
  auto rx = in.bytes("rx_fifo", kRxCapacity);
  uint8_t ier = in.u8("ier"), lcr = in.u8("lcr"), mcr = in.u8("mcr");
  uint8_t lsr_errors = in.u8("lsr_errors"), msr_delta = in.u8("msr_delta"), fcr = in.u8("fcr");
  if (ier & ~0x0F) in.fail("field 'ier' has reserved bits set");
  if (mcr & ~0x1F) in.fail("field 'mcr' has reserved bits set");
  if (lsr_errors & ~0x1E) in.fail("field 'lsr_errors' has bits that are not errors");
  if (msr_delta & ~0x0F) in.fail("field 'msr_delta' has bits that are not deltas");
  if (fcr & ~0xC1) in.fail("field 'fcr' has bits the UART does not keep");
  std::lock_guard lock(mutex_);
  rx_.assign(rx.begin(), rx.end());
  rx_refused_ = false;
  ier_ = ier;
  lcr_ = lcr;
  mcr_ = mcr;
  lsr_errors_ = lsr_errors;
  msr_delta_ = msr_delta;
  scr_ = in.u8("scr");
  fcr_ = fcr;
  divisor_ = in.u16("divisor");
  thr_interrupt_ = in.boolean("thr_interrupt");
  irq_level_ = in.boolean("irq_level");
  // A restored driver does not set up the UART again: if it had, the saved registers show it
  // ready and input held since the machine was built must flow now.
  if (hold_input_ && (ier_ & kIerRda) && (fcr_ & kFcrEnable)) hold_input_ = false;
}

void Serial16550::update_irq() {
  bool level = !(iir() & kIirNone);
  if (level == irq_level_) return;
  irq_level_ = level;
  irq_.set(level);
}

}  // namespace keel
