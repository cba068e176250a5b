#include "engine/emu/platform/pic8259.h"

#include <algorithm>
#include <bit>

namespace keel::emu {

void Pic8259::read(uint64_t offset, std::span<uint8_t> data) {
  std::lock_guard lock(mutex_);
  for (size_t i = 0; i < data.size(); ++i) {
    uint64_t port = offset + i;
    data[i] = port == 0 ? (read_isr_ ? isr_ : irr_) : port == 1 ? imr_ : 0xFF;
  }
}

void Pic8259::write(uint64_t offset, std::span<const uint8_t> data) {
  std::lock_guard lock(mutex_);
  for (size_t i = 0; i < data.size(); ++i) {
    uint64_t port = offset + i;
    uint8_t v = data[i];
    if (port == 0) {
      if (v & 0x10) {  // ICW1: start initialisation
        init_step_ = 2;
        need_icw4_ = v & 0x01;
        single_ = v & 0x02;
        imr_ = 0;
        isr_ = irr_ = 0;
        read_isr_ = false;
      } else if (v & 0x08) {  // OCW3: bit 1 selects the register port 0 reads
        if (v & 0x02) read_isr_ = v & 0x01;
      } else {  // OCW2: EOIs (rotation and priority commands change nothing we model)
        uint8_t cmd = v >> 5;
        if (cmd == 1) isr_ &= static_cast<uint8_t>(isr_ - 1);  // IR0 has the highest priority
        if (cmd == 3) isr_ &= static_cast<uint8_t>(~(1u << (v & 7)));
      }
    } else if (port == 1) {
      switch (init_step_) {
        case 2:  // ICW2: vector base
          vector_base_ = v & 0xF8;
          init_step_ = single_ ? (need_icw4_ ? 4 : 0) : 3;
          break;
        case 3:  // ICW3: cascade wiring
          init_step_ = need_icw4_ ? 4 : 0;
          break;
        case 4:  // ICW4: mode (8086, auto-EOI): nothing to keep
          init_step_ = 0;
          break;
        default:  // OCW1: the mask
          imr_ = v;
          break;
      }
    }
  }
}

uint8_t Pic8259::imr() const {
  std::lock_guard lock(mutex_);
  return imr_;
}

uint8_t Pic8259::vector_base() const {
  std::lock_guard lock(mutex_);
  return vector_base_;
}

}  // namespace keel::emu
