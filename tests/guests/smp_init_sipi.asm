; Application-processor start-up as Linux does it: vCPU 1 is not made runnable; vCPU 0 copies a
; trampoline below 1 MiB and sends INIT, then two SIPIs (vector 8: CS:IP = 0800:0000). The
; trampoline climbs from real mode through 32-bit protected mode (its own GDT) and PAE paging
; (the boot tables' PML4) into long mode, where vCPU 1 reports its APIC id and its mode bits.
; vCPU 0 reports what vCPU 1 found: APIC id, CR0, EFER and the CS it runs on.
%include "guest.inc"
%define TRAMP 0x8000
; The trampoline's results (below 1 MiB, identity-mapped).
%define AP_DONE    0x7000
%define AP_APIC_ID 0x7004
%define AP_CR0     0x7008
%define AP_EFER    0x700C
%define AP_CS      0x7010
  test rdi, rdi
  jnz .never                            ; vCPU 1 starts only through INIT/SIPI
  mov rsi, section.tramp.start          ; where the trampoline sits in this image
  mov rdi, TRAMP
  mov ecx, tramp_end - tramp_start
  rep movsb
  mov rbx, LAPIC
  mov dword [rbx + 0xF0], 0x1FF         ; APIC on
  mov dword [rbx + 0x310], 1 << 24
  mov dword [rbx + 0x300], 0x4500       ; INIT, assert
  mov dword [rbx + 0x310], 1 << 24
  mov dword [rbx + 0x300], 0x4608       ; SIPI, vector 8
  mov dword [rbx + 0x310], 1 << 24
  mov dword [rbx + 0x300], 0x4608       ; the second SIPI, as Linux sends it (ignored: running)
.wait:
  pause
  cmp dword [abs AP_DONE], 1
  jne .wait
  REPORT [abs AP_APIC_ID]
  REPORT [abs AP_CR0]
  REPORT [abs AP_EFER]
  REPORT [abs AP_CS]
  EXIT 0
.never:
  HANG


section tramp vstart=TRAMP
tramp_start:
bits 16
  cli
  mov ax, cs
  mov ds, ax
  mov ss, ax
  mov sp, 0x0F00
  lgdt [gdtr - TRAMP]                   ; DS = CS: offsets within the trampoline
  mov eax, cr0
  or eax, 1                             ; PE
  mov cr0, eax
  jmp dword 0x08:pm32                   ; 32-bit code segment
bits 32
pm32:
  mov ax, 0x10
  mov ds, ax
  mov es, ax
  mov ss, ax
  mov esp, TRAMP + 0xF00
  mov eax, cr4
  or eax, 1 << 5                        ; PAE
  mov cr4, eax
  mov eax, 0x9000                       ; the boot tables' PML4 (arch/x86/boot_state.h)
  mov cr3, eax
  mov ecx, 0xC0000080
  rdmsr
  or eax, 1 << 8                        ; EFER.LME
  wrmsr
  mov eax, cr0
  or eax, 0x80000001                    ; PG | PE: long mode, compatibility code for now
  mov cr0, eax
  jmp 0x18:long64
bits 64
long64:
  mov rbx, LAPIC
  mov eax, [rbx + 0x20]
  shr eax, 24
  mov [abs AP_APIC_ID], eax
  mov rax, cr0
  mov [abs AP_CR0], eax
  mov ecx, 0xC0000080
  rdmsr
  mov [abs AP_EFER], eax
  mov ax, cs
  movzx eax, ax
  mov [abs AP_CS], eax
  mov dword [abs AP_DONE], 1
.hang:
  cli
  hlt
  jmp .hang

align 8
gdt:
  dq 0
  dq 0x00CF9A000000FFFF                 ; 0x08: 32-bit code, base 0, 4 GiB
  dq 0x00CF92000000FFFF                 ; 0x10: data, base 0, 4 GiB
  dq 0x00AF9A000000FFFF                 ; 0x18: 64-bit code
gdtr:
  dw gdtr - gdt - 1
  dd gdt
tramp_end:
