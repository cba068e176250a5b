; A triple fault: with an empty IDT, #UD cannot be delivered, nor the #DF that follows; the
; machine shuts down.
%include "guest.inc"
  lidt [empty_idt]
  ud2
  EXIT 1                                ; not reached

empty_idt:
  dw 0
  dq 0
