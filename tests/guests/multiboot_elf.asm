; A multiboot kernel as an ELF32 executable (as kvm-unit-tests builds them), its ELF header written
; by hand so that nasm's flat output is the whole file. Loaded at 4 MiB (the PT_LOAD segment), with
; a multiboot header that has no a.out kludge. Prints what the loader passed (multiboot_report.inc).
; Run: keel run --kernel multiboot_elf.bin --isa-debug-exit [--initrd "file args,file"]
bits 32
%define BASE 0x400000
org BASE

ehdr:
  db 0x7F, "ELF", 1, 1, 1, 0        ; ELFCLASS32, little-endian, version 1
  times 8 db 0
  dw 2                              ; ET_EXEC
  dw 3                              ; EM_386
  dd 1
  dd start                          ; e_entry
  dd phdr - ehdr                    ; e_phoff
  dd 0                              ; e_shoff
  dd 0                              ; e_flags
  dw 52, 32, 1, 0, 0, 0             ; e_ehsize, e_phentsize, e_phnum, no sections
phdr:
  dd 1                              ; PT_LOAD
  dd 0                              ; p_offset
  dd BASE, BASE                     ; p_vaddr, p_paddr
  dd file_end - ehdr                ; p_filesz
  dd file_end - ehdr + 0x1000       ; p_memsz: a page of bss
  dd 7, 0x1000

align 4
mb_header:
  dd 0x1BADB002
  dd 0x00000003                     ; page-aligned modules, memory information
  dd -(0x1BADB002 + 0x00000003)

%include "boot32.inc"
start:
  jmp multiboot_main

%include "multiboot_report.inc"
file_end:
