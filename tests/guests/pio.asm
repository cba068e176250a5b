; Port I/O in both directions and all sizes, single and string (rep outs/ins).
; The test checks the device's access log; reports echo what `in` read.
%include "guest.inc"
  mov dx, PORT_REPORT
  ; out: 8, 16, 32 bits, immediate-free (dx) forms at each offset of the 32-bit register
  mov al, 0xA1
  out dx, al                 ; 0x500/1 = 0xa1
  inc dx
  mov al, 0xA2
  out dx, al                 ; 0x501/1 = 0xa2
  inc dx
  mov ax, 0xB3B2
  out dx, ax                 ; 0x502/2 = 0xb3b2
  mov dx, PORT_REPORT
  mov eax, 0xC4C3C2C1
  out dx, eax                ; 0x500/4 = 0xc4c3c2c1

  ; in: 8, 16, 32 bits (input register 0x44332211 by default)
  mov dx, PORT_REPORT + 1
  in al, dx                  ; 0x22
  movzx r8d, al
  mov dx, PORT_REPORT + 2
  in ax, dx                  ; 0x4433
  movzx r9d, ax
  mov dx, PORT_REPORT
  in eax, dx                 ; 0x44332211
  mov r10d, eax
  REPORT r8d
  REPORT r9d
  REPORT r10d

  ; string out: 5 bytes, 3 words, 2 dwords
  cld
  lea rsi, [out_bytes]
  mov dx, PORT_REPORT + 1
  mov ecx, 5
  rep outsb
  lea rsi, [out_words]
  mov dx, PORT_REPORT + 2
  mov ecx, 3
  rep outsw
  lea rsi, [out_dwords]
  mov dx, PORT_REPORT
  mov ecx, 2
  rep outsd

  ; string in: 3 bytes from 0x503, 2 words from 0x500, 2 dwords from 0x500
  lea rdi, [in_buffer]
  mov dx, PORT_REPORT + 3
  mov ecx, 3
  rep insb
  mov dx, PORT_REPORT
  mov ecx, 2
  rep insw
  mov ecx, 2
  rep insd
  ; report the 15 bytes read, as 32-bit words (last one padded with the zero byte after)
  mov r8d, [in_buffer]
  REPORT r8d
  mov r8d, [in_buffer + 4]
  REPORT r8d
  mov r8d, [in_buffer + 8]
  REPORT r8d
  mov r8d, [in_buffer + 12]
  REPORT r8d
  EXIT 0

out_bytes:  db 0x10, 0x11, 0x12, 0x13, 0x14
out_words:  dw 0x2120, 0x2322, 0x2524
out_dwords: dd 0x33323130, 0x37363534
in_buffer:  times 16 db 0
