; Timers and interrupts that must survive a snapshot, on either engine (cross_engine_test.cc):
; the local APIC timer runs periodic (vector 0x30, every 7 ms) and the PIT's channel 0 in mode 2
; (10 ms) reaches vector 0x31 through IOAPIC pin 0 (the 8259s masked). The vCPU sleeps in HLT
; between interrupts; every 10 PIT interrupts it prints "lapic L pit P" and "count N" on COM1
; (polled), L and P the interrupts each timer delivered so far, N the number of such reports. A
; restored guest goes on counting, and L and P keep growing only if both timers keep interrupting.
; Single vCPU: other vCPUs park at once.
%include "guest.inc"
%define LAPIC_VECTOR 0x30
%define PIT_VECTOR   0x31
%define PIT_RELOAD   11932               ; 10 ms at 1.193182 MHz
  test rdi, rdi
  jnz park
  SET_GATE LAPIC_VECTOR, lapic_handler
  SET_GATE PIT_VECTOR, pit_handler
  LOAD_IDT
  LAPIC_ENABLE
  PIC_MASK_ALL
  mov dword [rbx + 0x3E0], 0xB           ; divide by 1: 1 ns per count on both engines
  mov dword [rbx + 0x320], LAPIC_VECTOR | (1 << 17)  ; periodic, unmasked
  mov dword [rbx + 0x380], 7000000       ; 7 ms
  mov rbx, IOAPIC
  mov dword [rbx], 0x11                  ; pin 0, high half: destination APIC 0
  mov dword [rbx + 0x10], 0
  mov dword [rbx], 0x10                  ; low half: fixed, physical, edge, unmasked
  mov dword [rbx + 0x10], PIT_VECTOR
  mov al, 0x34                           ; channel 0, LSB then MSB, mode 2, binary
  out 0x43, al
  mov al, PIT_RELOAD & 0xFF
  out 0x40, al
  mov al, PIT_RELOAD >> 8
  out 0x40, al

  xor ebp, ebp                           ; lines printed
  mov r12d, 10                           ; PIT interrupts at which the next line is due
idle:
  sti
  hlt                                    ; STI's shadow: no interrupt slips in before HLT
  cli
  cmp [pit_ticks], r12d
  jb idle
  add r12d, 10
  lea rsi, [rel lapic_text]
  call puts
  mov eax, [lapic_ticks]
  call put_decimal
  lea rsi, [rel pit_text]
  call puts
  mov eax, [pit_ticks]
  call put_decimal
  mov al, 10
  call putc
  mov eax, ebp
  call put_count
  inc ebp
  jmp idle

park:
  HANG

lapic_handler:
  push rbx
  inc dword [lapic_ticks]
  LAPIC_EOI
  pop rbx
  iretq

pit_handler:
  push rbx
  inc dword [pit_ticks]
  LAPIC_EOI
  pop rbx
  iretq

%include "com1_print.inc"

lapic_text: db "lapic ", 0
pit_text: db " pit ", 0
align 4
lapic_ticks: dd 0
pit_ticks: dd 0
