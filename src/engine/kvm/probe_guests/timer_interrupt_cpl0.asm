; An external interrupt at CPL0: the in-kernel local APIC's one-shot timer wakes HLT and is
; delivered through the IDT as vector 0x20.
%include "probe.inc"
  INSTALL_IDT
  mov rbx, 0xFEE00000
  mov dword [rbx + 0xF0], 0x1FF        ; spurious vector register: APIC software-enabled
  mov dword [rbx + 0x3E0], 0xB         ; divide by 1
  mov dword [rbx + 0x320], 0x20        ; LVT timer: one-shot, vector 0x20
  mov dword [rbx + 0x380], 100000      ; initial count
  sti
  hlt
  cli
  cmp dword [rel last_vector], 0x20
  jne fail
  PROBE_EXIT 0
fail:
  PROBE_EXIT 1
  PROBE_RUNTIME
