; A guest for the management tests (keel run, the daemon): it prints "count N" lines on COM1 in a
; loop, so its progress can be watched (and seen to stop while paused), and it obeys the ACPI
; power button as an OS does: it finds PM1a_EVT_BLK, PM1a_CNT_BLK (FADT) and SLP_TYPa (\_S5 in the
; DSDT) through the tables at 0xE0000 (acpi_tables.inc), sets PWRBTN_EN in PM1a_EN, and
; between lines polls PWRBTN_STS in PM1a_STS (interrupts stay off: polling is what works at CPL0 on
; every engine here). On a press it clears the status, prints "power button", and writes SLP_TYP |
; SLP_EN to PM1a_CNT: the machine powers off. EXIT 1..5 name the table step that failed.
; Single vCPU: other vCPUs park at once.
%include "guest.inc"
%define POLLS_PER_LINE 2000        ; PM1a_STS reads between two lines (each one a VM exit)
  test rdi, rdi
  jnz park

  call acpi_find_pm                ; rdi = FADT, r14d = SLP_TYPa
  mov r15d, [rdi + 56]             ; PM1a_EVT_BLK: status, then (at +PM1_EVT_LEN/2) enable
  movzx eax, byte [rdi + 88]       ; PM1_EVT_LEN
  shr eax, 1
  lea r11d, [r15d + eax]           ; PM1a_EN
  mov r12d, [rdi + 64]             ; PM1a_CNT_BLK

  mov dx, r11w
  mov ax, 1 << 8                   ; PWRBTN_EN
  out dx, ax

  xor ebp, ebp                     ; the counter
line:
  mov eax, ebp
  call put_count
  inc ebp

  mov ecx, POLLS_PER_LINE
poll:
  mov dx, r15w
  in ax, dx                        ; PM1a_STS
  test ax, 1 << 8                  ; PWRBTN_STS
  jnz pressed
  dec ecx
  jnz poll
  jmp line

pressed:
  mov dx, r15w
  mov ax, 1 << 8
  out dx, ax                       ; write 1 to clear PWRBTN_STS
  lea rsi, [rel button_text]
  call puts
  mov dx, r12w
  in ax, dx
  and ax, 0xC3FF                   ; clear SLP_TYP and SLP_EN
  mov ecx, r14d
  shl ecx, 10
  or eax, ecx
  or ax, 1 << 13                   ; SLP_EN
  mov dx, r12w
  out dx, ax                       ; S5: the machine powers off
park:
  HANG

%include "com1_print.inc"

button_text: db "power button", 10, 0

%include "acpi_tables.inc"
