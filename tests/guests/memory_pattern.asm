; Live migration under a high dirty rate (migration_test.cc): rewrites every qword of 256 MiB at
; 16 MiB, round after round without pause, each from its previous value
;   x = x * K + round + address   (mod 2^64)
; and prints "round R sum S\n" (hex) on COM1 after each round, S the sum of the new values.
; The sum obeys S(R) = K * S(R-1) + N * R + sum of addresses, so a page lost or stale anywhere
; makes every later sum wrong. Needs 272 MiB of RAM. Single vCPU: other vCPUs park at once.
%include "guest.inc"
%define BASE 0x1000000
%define SIZE (256 << 20)
  test rdi, rdi
  jnz park
  xor ebp, ebp                     ; the round
  mov r9, 0x9E3779B97F4A7C15       ; K
round:
  mov rsi, BASE
  mov rcx, SIZE / 8
  xor r8d, r8d                     ; the sum
.qword:
  mov rax, [rsi]
  imul rax, r9
  add rax, rbp
  add rax, rsi
  mov [rsi], rax
  add r8, rax
  add rsi, 8
  dec rcx
  jnz .qword
  lea rsi, [rel round_text]
  call puts
  mov rax, rbp
  call put_hex
  lea rsi, [rel sum_text]
  call puts
  mov rax, r8
  call put_hex
  mov al, 10
  call putc
  inc rbp
  jmp round
park:
  HANG

%include "com1_print.inc"

; put_hex: rax as 16 hex digits. Clobbers rax, rbx, rcx, rdx, rdi.
put_hex:
  mov rdi, rax
  mov ecx, 16
.digit:
  rol rdi, 4
  mov eax, edi
  and eax, 15
  cmp eax, 10
  jb .num
  add eax, 'a' - 10 - '0'
.num:
  add eax, '0'
  push rcx
  call putc
  pop rcx
  dec ecx
  jnz .digit
  ret

round_text: db "round ", 0
sum_text: db " sum ", 0
