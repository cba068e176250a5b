; 1000 8-bit writes to port 0x501 (one exit each), then ends the run. Used to check that a run
; resumes after a kick.
%include "guest.inc"
  mov ecx, 1000
  mov dx, PORT_REPORT + 1
.loop:
  out dx, al
  dec ecx
  jnz .loop
  EXIT 0
