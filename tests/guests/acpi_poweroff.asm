; ACPI power-off the way an OS does it: find PM1a_CNT_BLK (FADT) and SLP_TYPa (the DSDT's \_S5)
; through the tables at 0xE0000 (acpi_tables.inc; the test writes keel's tables there), then write
; SLP_TYP and SLP_TYP | SLP_EN to PM1a_CNT (read-modify-write, as ACPICA does). Reports: the
; PM1a_CNT port, then SLP_TYPa. The power-off request ends the run; EXIT 1..5 name the table step
; that failed.
%include "guest.inc"
  call acpi_find_pm
  mov r12d, [rdi + 64]             ; PM1a_CNT_BLK
  REPORT r12d
  REPORT r14d

  mov dx, r12w
  in ax, dx
  and ax, 0xC3FF                   ; clear SLP_TYP (bits 10-12) and SLP_EN (bit 13)
  mov ecx, r14d
  shl ecx, 10
  or eax, ecx
  mov dx, r12w
  out dx, ax                       ; SLP_TYP
  or ax, 1 << 13
  out dx, ax                       ; SLP_TYP | SLP_EN: the machine powers off
  HANG                             ; a powered-off machine runs nothing more

%include "acpi_tables.inc"
