; An MSI: ask the harness (port 0x508) to send vector 0x41 to APIC 0, HLT until the handler has
; run. Reports the count.
%include "guest.inc"
  SET_GATE 0x41, msi_handler
  LOAD_IDT
  LAPIC_ENABLE
  mov eax, (0 << 8) | 0x41
  mov dx, PORT_MSI
  out dx, eax
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
