; A device interrupt through the IOAPIC: redirect GSI 5 to vector 0x31 on APIC 0, ask the
; harness to pulse GSI 5 (port 0x505), and HLT until the handler has run. Reports the count.
%include "guest.inc"
  SET_GATE 0x31, irq_handler
  LOAD_IDT
  LAPIC_ENABLE
  PIC_MASK_ALL
  ; IOAPIC redirection entry 5: registers 0x10 + 2 * 5 (low) and + 1 (high)
  mov rbx, IOAPIC
  mov dword [rbx], 0x10 + 2 * 5 + 1
  mov dword [rbx + 0x10], 0             ; destination APIC id 0
  mov dword [rbx], 0x10 + 2 * 5
  mov dword [rbx + 0x10], 0x31          ; fixed, physical, edge, active high, unmasked
  mov al, 5
  mov dx, PORT_IRQ
  out dx, al                            ; the line is pulsed before `out` returns (IF = 0)
.wait:
  sti
  hlt
  cli
  cmp dword [count], 0
  je .wait
  REPORT [count]
  EXIT 0

irq_handler:
  inc dword [count]
  LAPIC_EOI
  iretq

count: dd 0
