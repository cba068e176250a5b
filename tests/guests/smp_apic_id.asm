; Every vCPU reports (index << 24 | LAPIC ID register << 16 | CPUID.1 APIC id << 8 | CPUID.B
; x2APIC id), then counts itself in; vCPU 0 waits for all (RSI of them) and ends the run.
%include "guest.inc"
  mov r12, rdi                          ; vCPU index
  mov r13, rsi                          ; vCPU count
  mov rbx, LAPIC
  mov r8d, [rbx + 0x20]
  shr r8d, 24                           ; LAPIC ID register
  mov eax, 1
  cpuid
  mov r9d, ebx
  shr r9d, 24                           ; CPUID.1:EBX[31:24]
  mov eax, 0xB
  xor ecx, ecx
  cpuid
  mov r10d, edx                         ; CPUID.B:EDX
  and r10d, 0xFF
  mov r11d, r12d
  shl r11d, 24
  shl r8d, 16
  or r11d, r8d
  shl r9d, 8
  or r11d, r9d
  or r11d, r10d
  REPORT r11d
  lock inc dword [arrived]
  test r12, r12
  jnz .done
.wait_all:
  pause
  cmp [arrived], r13d
  jb .wait_all
  EXIT 0
.done:
  HANG

arrived: dd 0
