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

/* PVH entry (for VMMs such as QEMU that load an ELF through its Xen PVH
 * note): 32-bit protected mode, paging off, EBX = hvm_start_info. Builds an
 * identity map of 0..4 GiB, enters long mode and calls hvmtest_pvh. */
    .section .text.entry32, "ax"
    .code32
    .globl pvh_start32
pvh_start32:
    mov %ebx, %edi
    lgdt pvh_gdt_desc
    /* PML4[0] -> PDPT; PDPT[0..3] -> PD0..3; PDs map 2 MiB pages. */
    lea pvh_pdpt, %eax
    or $3, %eax
    mov %eax, pvh_pml4
    xor %ecx, %ecx
1:  mov %ecx, %eax
    shl $12, %eax
    add $pvh_pd, %eax
    or $3, %eax
    mov %eax, pvh_pdpt(,%ecx,8)
    inc %ecx
    cmp $4, %ecx
    jne 1b
    xor %ecx, %ecx
2:  mov %ecx, %eax
    shl $21, %eax
    or $0x83, %eax
    mov %eax, pvh_pd(,%ecx,8)
    mov %ecx, %eax
    shr $11, %eax
    mov %eax, pvh_pd+4(,%ecx,8)
    inc %ecx
    cmp $2048, %ecx
    jne 2b
    mov %cr4, %eax
    or $0x20, %eax
    mov %eax, %cr4
    lea pvh_pml4, %eax
    mov %eax, %cr3
    mov $0xc0000080, %ecx
    rdmsr
    or $0x100, %eax
    wrmsr
    mov %cr0, %eax
    or $0x80000001, %eax
    mov %eax, %cr0
    ljmp $0x08, $pvh_start64

    .code64
pvh_start64:
    mov $0x10, %ax
    mov %ax, %ds
    mov %ax, %es
    mov %ax, %ss
    lea stack_top(%rip), %rsp
    call hvmtest_pvh
3:  cli
    hlt
    jmp 3b

    .section .rodata
    .align 8
pvh_gdt:
    .quad 0
    .quad 0x00af9a000000ffff
    .quad 0x00cf92000000ffff
pvh_gdt_desc:
    .word 23
    .long pvh_gdt

    .section .note.Xen, "a"
    .align 4
    .long 4, 4, 18
    .asciz "Xen"
    .long pvh_start32

    .section .text.entry, "ax"
    .code64
    .globl triple_fault
    .type triple_fault, @function
triple_fault:
    lidt null_idt(%rip)
    ud2
    .size triple_fault, . - triple_fault

/* Where mode=spin idles for good: a known function for crash reports. */
    .globl spin_here
    .type spin_here, @function
spin_here:
    cli
    hlt
    jmp spin_here
    .size spin_here, . - spin_here

    .section .rodata
null_idt:
    .word 0
    .quad 0

    .section .bss
    .align 4096
pvh_pml4:
    .skip 4096
pvh_pdpt:
    .skip 4096
pvh_pd:
    .skip 4 * 4096
    .align 16
stack:
    .skip 16384
stack_top:

    .section .note.GNU-stack, "", @progbits
