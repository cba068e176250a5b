; Atomic read-modify-writes between vCPUs: every vCPU (RSI of them) adds 1 to three counters,
; ITER times with LOCK XADD, ITER times with a LOCK CMPXCHG loop, and SPLIT times with LOCK ADD
; on a dword that straddles two pages (no host atomic covers it: emu stops the other vCPUs).
; vCPU 0 waits for all, then reports the three totals (exact only if every operation was atomic).
%include "guest.inc"
%define ITER  200000
%define SPLIT 2000
  mov r12, rdi                          ; vCPU index
  mov r13, rsi                          ; vCPU count
  mov ecx, ITER
.xadd:
  mov eax, 1
  lock xadd [counter_xadd], eax
  dec ecx
  jnz .xadd
  mov ecx, ITER
.cas:
  mov eax, [counter_cas]
.retry:
  lea edx, [rax + 1]
  lock cmpxchg [counter_cas], edx       ; on failure EAX holds the current value: try again
  jnz .retry
  dec ecx
  jnz .cas
  mov ecx, SPLIT
.split:
  lock add dword [counter_split], 1
  dec ecx
  jnz .split
  lock inc dword [done]
  test r12, r12
  jnz .park
.wait_all:
  pause
  cmp [done], r13d
  jb .wait_all
  REPORT [counter_xadd]
  REPORT [counter_cas]
  REPORT [counter_split]
  EXIT 0
.park:
  HANG

; Data on pages of its own: a store to a page that holds code makes emu drop that code.
align 4096, db 0
counter_xadd: dd 0
counter_cas:  dd 0
done:         dd 0
  times 4096 - 2 - 12 db 0
counter_split: dd 0                     ; bytes 4094..4097 of the data: crosses into the next page
  times 4096 db 0
