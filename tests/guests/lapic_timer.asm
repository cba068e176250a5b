; HLT woken by an interrupt: the local APIC's one-shot timer fires vector 0x20 while the vCPU
; sits in HLT. Reports the handler's count (1).
%include "guest.inc"
  SET_GATE 0x20, timer_handler
  LOAD_IDT
  LAPIC_ENABLE
  mov dword [rbx + 0x3E0], 0xB          ; divide by 1
  mov dword [rbx + 0x320], 0x20         ; LVT timer: one-shot, vector 0x20, unmasked
  mov dword [rbx + 0x380], 200000       ; initial count
.wait:
  sti
  hlt                                   ; STI's shadow: the interrupt cannot slip in before HLT
  cli
  cmp dword [ticks], 0
  je .wait
  REPORT [ticks]
  EXIT 0

timer_handler:
  inc dword [ticks]
  LAPIC_EOI
  iretq

ticks: dd 0
