; fw_cfg through the selector/data ports and through DMA, reported through isa-debug-exit (run
; with `keel run --test-guest fw_cfg.bin --isa-debug-exit`): exits with value 0x21 (keel's status
; 0x43) when every check passes, otherwise with the failing check's number (status 2n+1).
%include "guest.inc"

%define FW_SEL   0x510
%define FW_DATA  0x511
%define FW_DMA   0x514
%define DEBUG_EXIT 0xf4
%define ACCESS   0x70000            ; the DMA control structure (below the stacks' range)
%define BUFFER   0x70100

%macro FAIL_IF_NE 1                 ; after a cmp: exit with check number %1 when unequal
  je %%ok
  mov al, %1
  out DEBUG_EXIT, al
%%ok:
%endmacro

  mov r15, rsi                      ; vCPU count
  ; 1. The signature through the selector: "QEMU".
  mov ax, 0
  mov dx, FW_SEL
  out dx, ax
  xor ebx, ebx
  mov ecx, 4
.sig:
  mov dx, FW_DATA
  in al, dx
  shl ebx, 8
  mov bl, al
  loop .sig
  cmp ebx, 'QEMU' >> 24 | ('QEMU' >> 8 & 0xff00) | ('QEMU' << 8 & 0xff0000) | ('QEMU' << 24 & 0xff000000)
  FAIL_IF_NE 1
  ; 2. The CPU count (le16) through the selector.
  mov ax, 0x05
  mov dx, FW_SEL
  out dx, ax
  mov dx, FW_DATA
  in al, dx
  movzx ebx, al
  in al, dx
  movzx eax, al
  shl eax, 8
  or ebx, eax
  cmp rbx, r15
  FAIL_IF_NE 2
  ; 3. The DMA port reads back "QEMU CFG".
  mov dx, FW_DMA
  in eax, dx
  cmp eax, 'QEMU'
  FAIL_IF_NE 3
  ; 4. DMA: select the RAM size (0x03) and read 8 bytes into BUFFER.
  mov dword [ACCESS], 0x0a000300    ; be32 control: key 3 << 16 | SELECT | READ
  mov dword [ACCESS + 4], 0x08000000  ; be32 length 8
  mov dword [ACCESS + 8], 0         ; be64 address, high half
  mov eax, BUFFER
  bswap eax
  mov dword [ACCESS + 12], eax
  mov qword [BUFFER], -1
  xor eax, eax
  mov dx, FW_DMA
  out dx, eax                       ; high half of the structure's address (be32 0)
  mov eax, ACCESS
  bswap eax
  mov dx, FW_DMA + 4
  out dx, eax                       ; low half: starts the transfer
  cmp dword [ACCESS], 0             ; control cleared: done, no error
  FAIL_IF_NE 4
  mov rax, [BUFFER]
  cmp rax, 64 << 20                 ; the test guest's 64 MiB... or what --memory said
  je .ram_ok
  cmp rax, 512 << 20
  FAIL_IF_NE 5
.ram_ok:
  ; 5. DMA with an unknown control bit: the error bit comes back.
  mov dword [ACCESS], 0x80000000    ; be32 0x80
  mov eax, ACCESS
  bswap eax
  mov dx, FW_DMA + 4
  out dx, eax
  cmp dword [ACCESS], 0x01000000    ; be32 1: error
  FAIL_IF_NE 6
  ; 6. The file directory holds at least etc/acpi/rsdp: count (be32) >= 1.
  mov ax, 0x19
  mov dx, FW_SEL
  out dx, ax
  mov dx, FW_DATA
  xor ebx, ebx
  mov ecx, 4
.count:
  in al, dx
  shl ebx, 8
  mov bl, al
  loop .count
  cmp ebx, 1
  jae .dir_ok
  mov al, 7
  out DEBUG_EXIT, al
.dir_ok:
  mov al, 0x21
  out DEBUG_EXIT, al
.hang:
  cli
  hlt
  jmp .hang
