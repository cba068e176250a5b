; Dirty page logging (dirty_log_test.cc): stores to known pages between two writes to port 0x50C,
; at each of which the test takes the dirty log.
%include "guest.inc"
  mov rdi, 0x400000
  mov byte [rdi], 1
  mov byte [rdi + 0x3000], 1
  mov dx, 0x50C
  out dx, al                    ; log 1: 0x400000 and 0x403000
  mov byte [rdi + 0x1000], 2
  mov byte [rdi], 2             ; written again after the log was taken
  mov dx, 0x50C
  out dx, al                    ; log 2: 0x400000 and 0x401000
  EXIT 0
