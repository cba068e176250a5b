; CMPXCHG16B at CPL0 (the kernel's per-CPU lockless lists use it).
%include "probe.inc"
  INSTALL_IDT
  mov rdi, SCRATCH
  mov qword [rdi], 1
  mov qword [rdi + 8], 2
  lea r15, [rel after]
  mov eax, 1
  mov edx, 2
  mov ebx, 3
  mov ecx, 4
  lock cmpxchg16b [rdi]
  jnz fail
  cmp qword [rdi], 3
  jne fail
  cmp qword [rdi + 8], 4
  jne fail
after:
  cmp dword [rel last_vector], -1
  jne fail
  PROBE_EXIT 0
fail:
  PROBE_EXIT 1
  PROBE_RUNTIME
