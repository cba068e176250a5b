; A TLB shootdown: both vCPUs read a word through a 4 KiB mapping at VA 0x40000000 (so each TLB
; holds it), vCPU 0 points the mapping at another page, flushes its own TLB entry and sends an
; IPI; vCPU 1's handler flushes its entry (INVLPG) and reads the word again. vCPU 0 reports what
; both read before and after.
%include "guest.inc"
%define VA      0x40000000
%define PT      0x300000                ; page table for VA's 2 MiB (one of the boot PD entries)
%define PAGE_A  0x400000
%define PAGE_B  0x401000
%define PD1     0xC000                  ; boot tables: the PD for [1 GiB, 2 GiB)
  mov r12, rdi
  SET_GATE 0x41, flush_handler
  LOAD_IDT
  LAPIC_ENABLE
  test r12, r12
  jnz .reader
  ; vCPU 0 builds the mapping VA -> PAGE_A and the two pages' contents.
  mov dword [abs PAGE_A], 0xAAAA
  mov dword [abs PAGE_B], 0xBBBB
  mov rdi, PT
  xor eax, eax
  mov ecx, 1024
  rep stosd
  mov qword [abs PT], PAGE_A | 3
  mov qword [abs PD1], PT | 3               ; PD entry 0 of [1 GiB, 2 GiB): now 4 KiB pages
  mov rax, cr3
  mov cr3, rax                          ; the boot's 2 MiB mapping of VA is gone everywhere it is cached
  mov dword [mapped], 1
  jmp .both
.reader:
  pause
  cmp dword [mapped], 1
  jne .reader
  mov rax, cr3
  mov cr3, rax
.both:
  mov eax, [abs VA]                         ; both TLBs now map VA -> PAGE_A
  mov [before + r12 * 4], eax
  lock inc dword [seen]
  test r12, r12
  jnz .wait_ipi
.wait_seen:
  pause
  cmp dword [seen], 2
  jb .wait_seen
  mov qword [abs PT], PAGE_B | 3            ; remap, flush locally, shoot down vCPU 1's entry
  invlpg [abs VA]
  mov eax, [abs VA]
  mov [after], eax
  mov rbx, LAPIC
  mov dword [rbx + 0x310], 1 << 24
  mov dword [rbx + 0x300], 0x4041
.wait_flushed:
  pause
  cmp dword [flushed], 1
  jne .wait_flushed
  REPORT [before]
  REPORT [before + 4]
  REPORT [after]
  REPORT [after + 4]
  EXIT 0
.wait_ipi:
  sti
  hlt
  jmp .wait_ipi

flush_handler:
  invlpg [abs VA]
  mov eax, [abs VA]
  mov [after + 4], eax
  mov dword [flushed], 1
  LAPIC_EOI
  iretq

align 4096, db 0
mapped:  dd 0
seen:    dd 0
flushed: dd 0
before:  dd 0, 0
after:   dd 0, 0
  times 4096 - 28 db 0
