/* Entry of hvm's tier-1 test guest, in 64-bit mode as hvm's Linux loader
 * starts a kernel: RSI points at boot_params. The 0x200 bytes of padding
 * put the entry where a bzImage's startup_64 is (load address + 0x200). */
    .section .text.pad, "ax"
    .fill 0x200, 1, 0
    .section .text.entry, "ax"
    .code64
    .globl _start
_start:
    lea stack_top(%rip), %rsp
    mov %rsi, %rdi
    call hvmtest_main
1:  cli
    hlt
    jmp 1b

    .globl triple_fault
triple_fault:
    lidt null_idt(%rip)
    ud2

    .section .rodata
null_idt:
    .word 0
    .quad 0

    .section .bss
    .align 16
stack:
    .skip 16384
stack_top:

    .section .note.GNU-stack, "", @progbits
