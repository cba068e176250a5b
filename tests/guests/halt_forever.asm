; Never ends by itself: HLT with interrupts off. Tests that a kick interrupts a halted vCPU.
%include "guest.inc"
  HANG
