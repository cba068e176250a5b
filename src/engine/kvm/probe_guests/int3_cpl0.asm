; INT3 at CPL0 delivered through the IDT as vector 3 (a trap: it resumes after the int3).
%include "probe.inc"
  INSTALL_IDT
  lea r15, [rel after]
  int3
after:
  cmp dword [rel last_vector], 3
  jne fail
  PROBE_EXIT 0
fail:
  PROBE_EXIT 1
  PROBE_RUNTIME
