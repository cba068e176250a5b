; Exception delivery through the IDT at CPL0: #UD (ud2) and #GP (non-canonical access).
%include "probe.inc"
  INSTALL_IDT
  lea r15, [rel after_ud]
  ud2
after_ud:
  cmp dword [rel last_vector], 6
  jne fail_ud
  lea r15, [rel after_gp]
  mov rax, 0x8000000000000000
  mov eax, [rax]
after_gp:
  cmp dword [rel last_vector], 13
  jne fail_gp
  PROBE_EXIT 0
fail_ud:
  PROBE_EXIT 1
fail_gp:
  PROBE_EXIT 2
  PROBE_RUNTIME
