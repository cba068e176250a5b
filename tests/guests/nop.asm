%include "guest.inc"
; Placeholder so the guest build has a target.
hlt
