; XGETBV at CPL0 (the kernel reads XCR0 while setting up the FPU).
%include "probe.inc"
  INSTALL_IDT
  mov rax, cr4
  or eax, 1 << 18                      ; CR4.OSXSAVE
  mov cr4, rax
  lea r15, [rel after]
  xor ecx, ecx
  xgetbv
  cmp eax, 0
  je fail
after:
  cmp dword [rel last_vector], -1
  jne fail
  PROBE_EXIT 0
fail:
  PROBE_EXIT 1
  PROBE_RUNTIME
