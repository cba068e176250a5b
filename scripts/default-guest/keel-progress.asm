; keel-progress CODE: writes one byte (decimal 0-255) to keel's boot-progress port 0x520.
;
; Debian's cloud kernel has no /dev/port (CONFIG_DEVPORT is off), so the default guest's /init
; uses this static, libc-free x86-64 ELF instead: ioperm(0x520, 1, 1), then `out`. It needs
; CAP_SYS_RAWIO (init runs as root). Exit status: 0 done, 1 ioperm failed, 2 bad argument.
; Built by scripts/build-default-guest.sh with `nasm -f bin`.
bits 64
org 0x400000

ehdr:
  db 0x7f, "ELF", 2, 1, 1, 0        ; ELF64, little endian, version 1, System V ABI
  times 8 db 0
  dw 2                              ; e_type: ET_EXEC
  dw 0x3e                           ; e_machine: EM_X86_64
  dd 1                              ; e_version
  dq _start                         ; e_entry
  dq phdr - $$                      ; e_phoff
  dq 0                              ; e_shoff
  dd 0                              ; e_flags
  dw ehdr_size                      ; e_ehsize
  dw phdr_size                      ; e_phentsize
  dw 1                              ; e_phnum
  dw 0, 0, 0                        ; e_shentsize, e_shnum, e_shstrndx
ehdr_size equ $ - ehdr

phdr:
  dd 1                              ; p_type: PT_LOAD
  dd 5                              ; p_flags: R + X
  dq 0                              ; p_offset
  dq $$                             ; p_vaddr
  dq $$                             ; p_paddr
  dq file_size                      ; p_filesz
  dq file_size                      ; p_memsz
  dq 0x1000                         ; p_align
phdr_size equ $ - phdr

PORT equ 0x520
SYS_IOPERM equ 173
SYS_EXIT equ 60

_start:
  cmp qword [rsp], 2                ; argc == 2
  jne bad_argument
  mov rsi, [rsp + 16]               ; argv[1]
  xor ebx, ebx                      ; value
  xor ecx, ecx                      ; digit count
.digit:
  movzx eax, byte [rsi]
  test eax, eax
  jz .parsed
  sub eax, '0'
  cmp eax, 9
  ja bad_argument
  imul ebx, ebx, 10
  add ebx, eax
  cmp ebx, 255
  ja bad_argument
  inc rsi
  inc ecx
  jmp .digit
.parsed:
  test ecx, ecx
  jz bad_argument
  mov eax, SYS_IOPERM
  mov edi, PORT
  mov esi, 1
  mov edx, 1
  syscall
  test rax, rax
  jnz .ioperm_failed
  mov dx, PORT
  mov al, bl
  out dx, al
  xor edi, edi
  jmp exit
.ioperm_failed:
  mov edi, 1
  jmp exit
bad_argument:
  mov edi, 2
exit:
  mov eax, SYS_EXIT
  syscall

file_size equ $ - $$
