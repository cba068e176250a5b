; Serial output: reports boot-progress code 1 on port 0x520, writes a line to COM1 (polling
; LSR.THRE before each byte), then exits 0.
; Position-independent (rel addressing) so it does not depend on guest.inc's origin.
%include "guest.inc"
default rel
  mov al, 1
  mov dx, 0x520              ; boot progress: "init started"
  out dx, al
  lea rsi, [rel message]
  mov ecx, message_len
.next:
  mov dx, 0x3FD              ; LSR
.busy:
  in al, dx
  test al, 0x20              ; THR empty
  jz .busy
  lodsb
  mov dx, 0x3F8              ; THR
  out dx, al
  dec ecx
  jnz .next
  mov al, 0
  mov dx, 0x504              ; exit status port
  out dx, al
.hang:
  cli
  hlt
  jmp .hang

message: db "Hello from the guest on ttyS0", 13, 10
message_len equ $ - message
