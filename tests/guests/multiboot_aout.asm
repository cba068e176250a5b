; A multiboot kernel as a flat binary with the a.out kludge (header flag 16): the header gives the
; load and entry addresses. Loaded at 2 MiB. Prints what the loader passed (multiboot_report.inc).
; Run: keel run --kernel multiboot_aout.bin --isa-debug-exit [--initrd "file args,file"]
bits 32
org 0x200000

start:
  jmp multiboot_main

align 4
mb_header:
  dd 0x1BADB002                     ; magic
  dd 0x00010003                     ; page-aligned modules, memory information, a.out kludge
  dd -(0x1BADB002 + 0x00010003)     ; checksum
  dd mb_header                      ; header_addr
  dd start                          ; load_addr
  dd load_end                       ; load_end_addr
  dd bss_end                        ; bss_end_addr
  dd start                          ; entry_addr

%include "boot32.inc"
%include "multiboot_report.inc"
load_end:
bss_end equ load_end + 0x1000
