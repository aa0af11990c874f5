//! The PVH entry: 32-bit protected mode, paging off, `%ebx` = physical address of
//! `hvm_start_info` (Xen `docs/misc/pvh.pandoc`). It zeroes .bss, identity-maps the first
//! 4 GiB with 2 MiB pages, enters long mode and calls [`super::kernel_main`].

use core::arch::global_asm;

global_asm!(
    r#"
    /* The PVH note: name "Xen", type XEN_ELFNOTE_PHYS32_ENTRY (18), desc = the 32-bit entry.
       An 8-byte desc suits older loaders; the section is 4-aligned (see build/linker.ld). */
    .section .note.Xen, "a"
    .balign 4
    .long 4                       /* namesz */
    .long 8                       /* descsz */
    .long 18                      /* type: XEN_ELFNOTE_PHYS32_ENTRY */
    .asciz "Xen"
    .balign 4
    .quad pvh_start32
    .balign 4

    .section .text.boot, "ax"
    .code32
    .global pvh_start32
pvh_start32:
    /* 1. No interrupts, string ops count up. */
    cli
    cld
    /* 2. Keep the start-info pointer: %esi survives everything below. */
    mov %ebx, %esi

    /* 3. Zero .bss (page tables and stack live there). */
    mov $__bss_start, %edi
    mov $__bss_end, %ecx
    sub %edi, %ecx
    xor %eax, %eax
    rep stosb

    /* 4. PML4[0] -> PDPT. */
    mov $boot_pdpt, %eax
    or $0x3, %eax                 /* present | writable */
    mov %eax, boot_pml4

    /* 5. PDPT[0..4] -> the four page directories (one per GiB). */
    mov $boot_pd, %eax
    or $0x3, %eax
    mov $boot_pdpt, %edi
    mov $4, %ecx
1:  mov %eax, (%edi)
    add $0x1000, %eax
    add $8, %edi
    loop 1b

    /* 6. 2048 2-MiB pages identity-mapping 0..4 GiB, present|writable|large (0x83).
          The top GiB (PCI holes, local and I/O APIC) is uncached: PCD|PWT (0x18). */
    mov $boot_pd, %edi
    xor %ecx, %ecx
2:  mov %ecx, %eax
    shl $21, %eax
    or $0x83, %eax
    cmp $1536, %ecx
    jb 3f
    or $0x18, %eax
3:  mov %eax, (%edi,%ecx,8)
    inc %ecx
    cmp $2048, %ecx
    jne 2b

    /* 7. CR4.PAE, CR3 = PML4, EFER.LME, then CR0.PG (with PE) turns on long mode. */
    mov %cr4, %eax
    or $0x20, %eax
    mov %eax, %cr4
    mov $boot_pml4, %eax
    mov %eax, %cr3
    mov $0xC0000080, %ecx
    rdmsr
    or $0x100, %eax
    wrmsr
    mov %cr0, %eax
    or $0x80000001, %eax
    mov %eax, %cr0

    /* 8. Our own GDT with a 64-bit code segment; a far jump enters 64-bit mode. */
    lgdt boot_gdt_ptr
    ljmp $0x08, $long_mode_entry

    .code64
long_mode_entry:
    /* 9. Flat data segments, our stack, and Rust with the start-info address. */
    mov $0x10, %ax
    mov %ax, %ds
    mov %ax, %es
    mov %ax, %ss
    xor %ax, %ax
    mov %ax, %fs
    mov %ax, %gs
    mov $boot_stack_top, %rsp
    mov %esi, %edi                /* zero-extends: first argument */
    call kernel_main
4:  cli
    hlt
    jmp 4b

    .section .rodata
    .balign 8
boot_gdt:
    .quad 0                       /* null */
    .quad 0x00AF9A000000FFFF      /* 0x08: 64-bit code, DPL 0 */
    .quad 0x00CF92000000FFFF      /* 0x10: data, DPL 0 */
boot_gdt_end:
boot_gdt_ptr:
    .word boot_gdt_end - boot_gdt - 1
    .quad boot_gdt

    .section .bss
    .balign 4096
    .global boot_pml4
boot_pml4:
    .skip 4096
    .global boot_pdpt
boot_pdpt:
    .skip 4096
    .global boot_pd
boot_pd:
    .skip 4096 * 4
    .balign 16
    .global boot_stack
boot_stack:
    .skip 256 * 1024
boot_stack_top:
    "#,
    options(att_syntax)
);
