// Serial16550: the PC's COM1 UART (NS16550A), ports 0x3F8-0x3FF, IRQ 4.
//
// Transmit is instant (THR never fills: LSR.THRE and TEMT stay set) and goes to a ConsoleOutput.
// Receive goes through a FIFO that the main loop thread fills with push_input(); the guest drains
// it through RBR. Interrupts: receive-data-available (or FIFO timeout), THR-empty, receiver line
// status and modem status, with the IIR priorities of the 16550. MCR loopback routes THR to the
// receiver and MCR's outputs to MSR's inputs, as Linux's probe expects.
//
// Thread safety: guest accesses (vCPU threads) and push_input() (main thread) take one mutex; the
// IRQ line is set under it so level changes reach the interrupt controller in order.
#pragma once

#include <cstdint>
#include <deque>
#include <functional>
#include <mutex>
#include <span>
#include <vector>

#include "backends/console/console_port.h"
#include "bus/io_bus.h"
#include "irq/interrupts.h"
#include "state/persistent.h"

namespace keel {

class Serial16550 : public BusDevice, public ConsoleInput, public state::Persistent {
 public:
  static constexpr uint16_t kCom1Base = 0x3F8;
  static constexpr uint32_t kCom1Irq = 4;
  static constexpr uint16_t kPortCount = 8;
  // Host-side receive buffer: deeper than the 16-byte hardware FIFO so a paste is not dropped
  // between two guest interrupts; push_input() refuses what does not fit.
  static constexpr size_t kRxCapacity = 256;

  Serial16550(IrqLine irq, ConsoleOutput output);

  void read(uint64_t offset, std::span<uint8_t> data) override;
  void write(uint64_t offset, std::span<const uint8_t> data) override;

  size_t push_input(std::span<const uint8_t> bytes) override;
  void set_input_space_callback(std::function<void()> callback) override;

  // Registers, the receive FIFO and the interrupt state (the line level itself belongs to the
  // interrupt controller's state).
  void save_state(state::SectionWriter& out) override;
  void restore_state(const state::SectionReader& in) override;

  // Input waits on the host (push_input() takes nothing) until the guest's driver has enabled the
  // receive-data interrupt and the FIFO: Linux's 8250 driver empties the receiver when it opens
  // the port and again when it switches the FIFO on, so input typed while the kernel boots would
  // be lost. Once both happened the space callback runs and input flows for good. For Linux
  // guests; guests that poll the receiver without interrupts (purpose-built tests) never enable it.
  void hold_input_until_driver_ready();

  // Register offsets.
  enum : uint8_t { kRbrThr = 0, kIer = 1, kIirFcr = 2, kLcr = 3, kMcr = 4, kLsr = 5, kMsr = 6, kScr = 7 };

 private:
  uint8_t read_reg(uint8_t reg);                           // mutex held
  void write_reg(uint8_t reg, uint8_t value, std::vector<uint8_t>& out);  // mutex held
  uint8_t iir() const;                                     // mutex held
  void update_irq();                                       // mutex held
  void receive(uint8_t byte);                              // mutex held
  uint8_t msr_inputs() const;                              // mutex held

  const IrqLine irq_;
  const ConsoleOutput output_;
  std::function<void()> space_callback_;

  std::mutex mutex_;
  std::mutex output_mutex_;  // taken before mutex_ is released: keeps output in THR order
  std::deque<uint8_t> rx_;
  bool rx_refused_ = false;  // push_input() turned bytes away: call space_callback_ once drained
  bool hold_input_ = false;  // hold_input_until_driver_ready() and the driver is not ready yet
  uint8_t ier_ = 0;
  uint8_t lcr_ = 0x03;  // 8N1
  uint8_t mcr_ = 0x08;  // OUT2
  uint8_t lsr_errors_ = 0;  // OE/PE/FE/BI, cleared by reading LSR
  uint8_t msr_delta_ = 0;   // MSR bits 3:0
  uint8_t scr_ = 0;
  uint8_t fcr_ = 0;
  uint16_t divisor_ = 12;  // 9600 baud
  bool thr_interrupt_ = false;  // THR-empty interrupt pending (cleared by IIR read or THR write)
  bool irq_level_ = false;
};

}  // namespace keel
