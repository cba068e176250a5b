; Entry in 32-bit protected mode with paging off (the multiboot and PVH entry state,
; arch/x86/boot_state.h setup_protected_mode), then ordinary 32-bit code: the stack, a call, a
; memory operand. Unlike the other probes it does not include probe.inc (which is 64-bit code).
bits 32
org 0x100000
  mov esp, 0x80000
  mov eax, 0x12345678
  push eax
  call check
  add esp, 4
  cmp eax, 0x12345679
  jne fail
  mov al, 0
  mov dx, 0x504
  out dx, al
  jmp $
fail:
  mov al, 1
  mov dx, 0x504
  out dx, al
  jmp $
check:
  mov eax, [esp + 4]
  inc eax
  ret
