; Waits for vector 0x41 after telling the test it is ready (8-bit out to port 0x50C, a device the
; test adds; the KVM engine test signals an irqfd from it). Reports the handler's count.
%include "guest.inc"
  SET_GATE 0x41, msi_handler
  LOAD_IDT
  LAPIC_ENABLE
  mov al, 1
  mov dx, 0x50C
  out dx, al
.wait:
  sti
  hlt
  cli
  cmp dword [count], 0
  je .wait
  REPORT [count]
  EXIT 0

msi_handler:
  inc dword [count]
  LAPIC_EOI
  iretq

count: dd 0
