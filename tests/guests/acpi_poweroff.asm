; ACPI power-off the way an OS does it: find the RSDP at 0xE0000 (the test writes keel's tables
; there), follow it to the XSDT and the FADT, take PM1a_CNT_BLK from the FADT and SLP_TYPa from
; the DSDT's \_S5 package, then write SLP_TYP and SLP_TYP | SLP_EN to PM1a_CNT (read-modify-write,
; as ACPICA does). Reports: the PM1a_CNT port, then SLP_TYPa. The power-off request ends the run;
; EXIT 1..5 name the step that failed.
%include "guest.inc"
  mov rsi, 0xE0000
  mov rax, 'RSD PTR '
  cmp [rsi], rax
  jne no_rsdp
  mov rbx, [rsi + 24]              ; XsdtAddress
  cmp dword [rbx], 'XSDT'
  jne no_xsdt

  ; The XSDT's 8-byte entries follow its 36-byte header.
  mov ecx, [rbx + 4]
  lea r8, [rbx + 36]
  lea r9, [rbx + rcx]
find_fadt:
  cmp r8, r9
  jae no_fadt
  mov rdi, [r8]
  cmp dword [rdi], 'FACP'
  je found_fadt
  add r8, 8
  jmp find_fadt
found_fadt:
  mov r12d, [rdi + 64]             ; PM1a_CNT_BLK
  mov r13, [rdi + 140]             ; X_DSDT
  REPORT r12d

  ; Scan the DSDT's AML for the name _S5_, then read Package { SLP_TYPa, ... }.
  mov ecx, [r13 + 4]
  lea r8, [r13 + 36]
  lea r9, [r13 + rcx - 8]
find_s5:
  cmp r8, r9
  jae no_s5
  cmp dword [r8], '_S5_'
  je found_s5
  inc r8
  jmp find_s5
found_s5:
  cmp byte [r8 + 4], 0x12          ; PackageOp
  jne bad_s5
  movzx eax, byte [r8 + 7]         ; after PkgLength and NumElements: SLP_TYPa
  cmp al, 0x0A                     ; BytePrefix
  jne small_constant
  movzx eax, byte [r8 + 8]
  jmp have_type
small_constant:                    ; ZeroOp (0) or OneOp (1) stand for themselves
  cmp al, 1
  ja bad_s5
have_type:
  mov r14d, eax
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

no_rsdp: EXIT 1
no_xsdt: EXIT 2
no_fadt: EXIT 3
no_s5:   EXIT 4
bad_s5:  EXIT 5
