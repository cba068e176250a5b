; A PVH kernel: an ELF32 executable with the Xen PHYS32_ENTRY note (written by hand, so nasm's flat
; output is the whole file), loaded at 4 MiB and entered in 32-bit protected mode with EBX =
; struct hvm_start_info (Xen's arch-x86/hvm/start_info.h). Prints what the loader passed on COM1,
; then exits through isa-debug-exit with 0x21 (keel's status 0x43) if the magic was right, else 0x11.
;
;   magic=336ec578 version=00000001 rsdp=... modules=...
;   cmdline=<the command line>
;   module 0 size=... cmdline=<its command line> data=<its bytes>
;   memmap base=... length=... type=...
; Run: keel run --kernel pvh.bin --isa-debug-exit [--initrd FILE] [--cmdline ...]
bits 32
%define BASE 0x400000
org BASE

ehdr:
  db 0x7F, "ELF", 1, 1, 1, 0
  times 8 db 0
  dw 2                              ; ET_EXEC
  dw 3                              ; EM_386
  dd 1
  dd start                          ; e_entry (keel enters at the note's address)
  dd phdr - ehdr
  dd 0, 0
  dw 52, 32, 2, 0, 0, 0
phdr:
  dd 1                              ; PT_LOAD
  dd 0
  dd BASE, BASE
  dd file_end - ehdr, file_end - ehdr
  dd 7, 0x1000
  dd 4                              ; PT_NOTE
  dd note - ehdr
  dd note, note
  dd note_end - note, note_end - note
  dd 4, 4
note:
  dd 4, 4, 18                       ; namesz, descsz, XEN_ELFNOTE_PHYS32_ENTRY
  db "Xen", 0
  dd start
note_end:

%include "boot32.inc"
start:
  mov esp, stack_top
  mov [magic_seen], eax
  PUTS "magic="
  mov eax, [ebx]
  call hex32
  PUTS " version="
  mov eax, [ebx + 4]
  call hex32
  PUTS " rsdp="
  lea esi, [ebx + 32]
  call hex64
  PUTS " modules="
  mov eax, [ebx + 12]
  call hex32
  call newline
  PUTS "cmdline="
  mov esi, [ebx + 24]
  call puts
  call newline
  mov ebp, [ebx + 16]               ; modlist_paddr
  xor edi, edi
.module:
  cmp edi, [ebx + 12]
  jae .modules_done
  PUTS "module "
  mov eax, edi
  call hex32
  PUTS " size="
  mov eax, [ebp + 8]
  call hex32
  PUTS " cmdline="
  mov esi, [ebp + 16]
  test esi, esi
  jz .no_module_cmdline
  call puts
.no_module_cmdline:
  PUTS " data="
  mov esi, [ebp]
  mov ecx, [ebp + 8]
  call putn
  call newline
  add ebp, 32
  inc edi
  jmp .module
.modules_done:
  mov ebp, [ebx + 40]               ; memmap_paddr
  mov edi, [ebx + 48]               ; memmap_entries
.memmap:
  test edi, edi
  jz .memmap_done
  PUTS "memmap base="
  mov esi, ebp
  call hex64
  PUTS " length="
  lea esi, [ebp + 8]
  call hex64
  PUTS " type="
  mov eax, [ebp + 16]
  call hex32
  call newline
  add ebp, 24
  dec edi
  jmp .memmap
.memmap_done:
  cmp dword [ebx], 0x336ec578
  jne .bad
  DEBUG_EXIT_WITH 0x21
.bad:
  DEBUG_EXIT_WITH 0x11

align 4
magic_seen: dd 0
  times 1024 db 0
stack_top:
file_end:
