; Serial input by interrupt: routes COM1's IRQ 4 through the IOAPIC to vector 0x34, enables the
; receive-data interrupt, prints "READY", then echoes every received byte from its interrupt
; handler until it receives 'q', and exits 0. Position-independent (rel addressing).
%include "guest.inc"
default rel
%define IDT 0x90000
%define VECTOR 0x34
  ; IDT gate VECTOR -> rx_handler (64-bit interrupt gate, CS 0x10)
  lea rax, [rel rx_handler]
  mov rbx, IDT + 16 * VECTOR
  mov word [rbx], ax
  mov word [rbx + 2], 0x10
  mov word [rbx + 4], 0x8E00
  shr rax, 16
  mov word [rbx + 6], ax
  shr rax, 16
  mov dword [rbx + 8], eax
  mov dword [rbx + 12], 0
  lidt [rel idtr]
  mov rbx, 0xFEE00000        ; local APIC: software enable, spurious vector 0xFF
  mov dword [rbx + 0xF0], 0x1FF
  mov al, 0xFF               ; mask both PICs: the IOAPIC delivers
  out 0x21, al
  out 0xA1, al
  mov rbx, 0xFEC00000        ; IOAPIC redirection entry 4 -> VECTOR on APIC 0, edge, unmasked
  mov dword [rbx], 0x10 + 2 * 4 + 1
  mov dword [rbx + 0x10], 0
  mov dword [rbx], 0x10 + 2 * 4
  mov dword [rbx + 0x10], VECTOR

  lea rsi, [rel ready]
  mov ecx, ready_len
  mov dx, 0x3F8
.print:
  lodsb
  out dx, al
  dec ecx
  jnz .print
  mov dx, 0x3FC              ; MCR: DTR, RTS, OUT2
  mov al, 0x0B
  out dx, al
  mov dx, 0x3F9              ; IER: receive data available
  mov al, 0x01
  out dx, al

.wait:
  sti
  hlt
  cli
  cmp byte [rel done], 0
  je .wait
  mov al, 0
  mov dx, 0x504
  out dx, al
.hang:
  cli
  hlt
  jmp .hang

rx_handler:
  push rax
  push rdx
.more:
  mov dx, 0x3FD              ; LSR: data ready?
  in al, dx
  test al, 0x01
  jz .eoi
  mov dx, 0x3F8
  in al, dx                  ; RBR
  out dx, al                 ; echo to THR
  cmp al, 'q'
  jne .more
  mov byte [rel done], 1
  jmp .more
.eoi:
  mov rax, 0xFEE000B0
  mov dword [rax], 0
  pop rdx
  pop rax
  iretq

idtr:
  dw 256 * 16 - 1
  dq IDT
done: db 0
ready: db "READY", 13, 10
ready_len equ $ - ready
