; Exception delivery at CPL0 through the IDT: #DE (div by zero), #UD (ud2), #GP (non-canonical
; address, with its error code) and #PF (unmapped address, CR2). Each handler reports its vector
; and resumes at the address in r15. Reports: 0, 6, 13 with error code 0, 14 with CR2.
%include "guest.inc"
  SET_GATE 0, de_handler
  SET_GATE 6, ud_handler
  SET_GATE 13, gp_handler
  SET_GATE 14, pf_handler
  LOAD_IDT

  lea r15, [.after_de]
  xor edx, edx
  xor ecx, ecx
  mov eax, 1
  div ecx
.after_de:
  lea r15, [.after_ud]
  ud2
.after_ud:
  lea r15, [.after_gp]
  mov rax, 0x8000000000000000
  mov eax, [rax]
.after_gp:
  lea r15, [.after_pf]
  mov rax, 0x100000000 + 0x123          ; above the 4 GiB identity map
  mov eax, [rax]
.after_pf:
  EXIT 0

de_handler:
  REPORT 0
  mov [rsp], r15
  iretq
ud_handler:
  REPORT 6
  mov [rsp], r15
  iretq
gp_handler:
  REPORT 13
  pop r8                                ; error code
  REPORT r8d
  mov [rsp], r15
  iretq
pf_handler:
  REPORT 14
  pop r8                                ; error code
  mov r8, cr2
  REPORT r8d
  mov r8, cr2
  shr r8, 32
  REPORT r8d
  mov [rsp], r15
  iretq
