; Inter-processor interrupts: vCPUs 0 and 1 bounce a fixed IPI (vector 0x40) ROUNDS times, each
; in HLT until the other's arrives (the xAPIC ICR, physical destination). vCPU 0 reports how many
; each received.
%include "guest.inc"
%define ROUNDS 1000
  mov r12, rdi
  SET_GATE 0x40, ipi_handler
  LOAD_IDT
  LAPIC_ENABLE
  mov rbx, LAPIC
  lock inc dword [ready]
.wait_ready:                            ; both IDTs and APICs are set up before the first IPI
  pause
  cmp dword [ready], 2
  jb .wait_ready
  xor r14d, r14d                        ; IPIs this vCPU has sent
  test r12, r12
  jnz .receive
.send:
  mov eax, r12d
  xor eax, 1                            ; the other vCPU's APIC id
  shl eax, 24
  mov rbx, LAPIC
  mov [rbx + 0x310], eax                ; ICR high: destination
  mov dword [rbx + 0x300], 0x4040       ; ICR low: assert, fixed, vector 0x40
  inc r14d
.receive:
  lea rsi, [received]
  cmp r14d, ROUNDS
  jae .finish
.wait:                                  ; until the other vCPU's IPI number r14d (+1 for vCPU 1)
  sti
  hlt
  cli
  mov eax, [rsi + r12 * 4]
  mov ecx, r14d
  test r12, r12
  jz .check
  inc ecx
.check:
  cmp eax, ecx
  jb .wait
  jmp .send
.finish:
  test r12, r12
  jnz .park
  sti                                   ; vCPU 1's last IPI may still be on its way
.wait_other:                            ; every IPI each way has been received
  pause
  cmp dword [received + 4], ROUNDS
  jb .wait_other
  cmp dword [received], ROUNDS
  jb .wait_other
  cli
  REPORT [received]
  REPORT [received + 4]
  EXIT 0
.park:
  HANG

ipi_handler:
  push rax
  push rbx
  mov rbx, LAPIC
  mov eax, [rbx + 0x20]
  shr eax, 24                           ; this vCPU's APIC id
  lock inc dword [received + rax * 4]
  LAPIC_EOI
  pop rbx
  pop rax
  iretq

align 4096, db 0
ready:    dd 0
received: dd 0, 0
  times 4096 - 12 db 0
