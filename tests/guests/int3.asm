; INT3 at CPL0 is delivered as vector 3 (a trap: it resumes after the int3). Reports 3.
%include "guest.inc"
  SET_GATE 3, bp_handler
  LOAD_IDT
  int3
  REPORT [seen]
  EXIT 0

bp_handler:
  mov dword [seen], 3
  iretq

seen: dd 0
