; MMIO writes and reads of 1, 2, 4 and 8 bytes to the test MMIO device, which reads back what
; was written. Reports: the values read back (the 8-byte one as low, high halves).
%include "guest.inc"
  mov rbx, TEST_MMIO
  mov byte [rbx + 0x10], 0x5A
  mov word [rbx + 0x22], 0x1234
  mov dword [rbx + 0x44], 0xDEADBEEF
  mov rax, 0x1122334455667788
  mov [rbx + 0x88], rax

  movzx r8d, byte [rbx + 0x10]
  movzx r9d, word [rbx + 0x22]
  mov r10d, [rbx + 0x44]
  mov r11, [rbx + 0x88]
  REPORT r8d
  REPORT r9d
  REPORT r10d
  REPORT r11d
  shr r11, 32
  REPORT r11d
  ; a read of a register never written reads zero
  mov r8d, [rbx + 0x800]
  REPORT r8d
  EXIT 0
