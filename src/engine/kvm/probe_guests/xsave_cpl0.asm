; XSAVE at CPL0 (the kernel saves every task's FPU state with it).
%include "probe.inc"
  INSTALL_IDT
  mov rax, cr4
  or eax, 1 << 18                      ; CR4.OSXSAVE
  mov cr4, rax
  xor ecx, ecx
  xor edx, edx
  mov eax, 3
  xsetbv
  lea r15, [rel after]
  mov eax, 3
  xor edx, edx
  xsave [SCRATCH]
after:
  cmp dword [rel last_vector], -1
  jne fail
  PROBE_EXIT 0
fail:
  PROBE_EXIT 1
  PROBE_RUNTIME
