; Never ends by itself: spins with interrupts off. Tests that a deadline or a kick stops it.
%include "guest.inc"
.spin:
  jmp .spin
