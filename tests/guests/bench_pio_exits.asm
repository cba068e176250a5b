; Benchmark guest (bench/kvm_exit_bench.cc): RBX 8-bit writes to port 0x501, one exit each,
; then ends the run through port 0x504.
%include "guest.inc"
  mov dx, PORT_REPORT + 1
.loop:
  out dx, al
  dec rbx
  jnz .loop
  EXIT 0
