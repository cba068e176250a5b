; i8042 reset: checks the controller's self test (0xAA -> 0x55), then pulses the reset line
; with command 0xFE and parks. The machine must end with a reset; reaching the status port
; means the reset was ignored (status 2) or the self test failed (status 1).
%include "guest.inc"
default rel
  mov al, 0xAA
  out 0x64, al
.wait:
  in al, 0x64
  test al, 0x01              ; output buffer full
  jz .wait
  in al, 0x60
  cmp al, 0x55
  jne .fail
  mov al, 0xFE
  out 0x64, al
  ; The reset request stops the vCPU; spin a while before declaring it ignored.
  mov ecx, 10000000
.spin:
  dec ecx
  jnz .spin
  mov al, 2
  jmp .exit
.fail:
  mov al, 1
.exit:
  mov dx, 0x504
  out dx, al
.hang:
  cli
  hlt
  jmp .hang
