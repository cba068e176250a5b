; XRSTOR at CPL0 (the kernel restores every task's FPU state with it): enable XSAVE, set
; XCR0 = x87|SSE, restore an all-zero standard-format area (init state for both).
%include "probe.inc"
  INSTALL_IDT
  mov rax, cr4
  or eax, 1 << 18                      ; CR4.OSXSAVE
  mov cr4, rax
  xor ecx, ecx
  xor edx, edx
  mov eax, 3
  xsetbv
  mov rdi, SCRATCH
  xor eax, eax
  mov ecx, 1024 / 8
  rep stosq
  lea r15, [rel after]
  mov eax, 3
  xor edx, edx
  xrstor [SCRATCH]
after:
  cmp dword [rel last_vector], -1
  jne fail
  PROBE_EXIT 0
fail:
  PROBE_EXIT 1
  PROBE_RUNTIME
