; Cross-modifying code: vCPU 1 calls `get` (mov eax, imm32; ret) in a loop, so its code is hot
; (emu translates it); vCPU 0 then rewrites the immediate and raises a flag; vCPU 1, once it sees
; the flag, serialises (CPUID) as the SDM asks of the executing processor and calls `get` again.
; vCPU 0 reports what vCPU 1 got before and after.
%include "guest.inc"
  mov r12, rdi
  test r12, r12
  jnz .executor
.wait_hot:
  pause
  cmp dword [calls], 5000
  jb .wait_hot
  mov dword [get + 1], 0x2222           ; the imm32 of `mov eax, imm32`
  mov dword [patched], 1
.wait_done:
  pause
  cmp dword [done], 1
  jne .wait_done
  REPORT [old]
  REPORT [new]
  EXIT 0

.executor:
  call get                              ; before any patch
  mov [old], eax
.loop:
  call get                              ; (may see either value once the patch is under way)
  inc dword [calls]
  cmp dword [patched], 1
  jne .loop
  xor eax, eax
  cpuid                                 ; serialising: the next fetch sees the new code
  call get
  mov [new], eax
  mov dword [done], 1
  HANG

align 4096, db 0
get:
  mov eax, 0x1111
  ret

align 4096, db 0
calls:   dd 0
patched: dd 0
done:    dd 0
old:     dd 0
new:     dd 0
  times 4096 - 20 db 0
