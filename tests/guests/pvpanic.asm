; Reports a kernel panic through keel's pvpanic device (port 0x505, PVPANIC_PANICKED), as Linux's
; pvpanic driver does, then spins: the machine's on-panic action decides what follows.
%include "guest.inc"
  mov dx, 0x505
  in al, dx          ; the events the device supports
  cmp al, 3          ; PVPANIC_PANICKED | PVPANIC_CRASH_LOADED
  jne .wrong
  mov al, 1          ; PVPANIC_PANICKED
  out dx, al
.spin:
  pause
  jmp .spin
.wrong:
  EXIT 2
