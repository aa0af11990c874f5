//! The IDT, one assembly stub per vector, dispatch to registered handlers, vector
//! allocation, and the legacy PIC (remapped and masked: we use the local APIC and MSI).
//!
//! The target has no red zone and no SSE (`x86_64-unknown-none`), so a stub saves only the
//! general-purpose registers.

use core::arch::{asm, global_asm};
use core::sync::atomic::{AtomicU8, Ordering};

use super::cpu::{self, outb};

/// Vector of the local APIC timer.
pub const TIMER_VECTOR: u8 = 0x30;
/// Spurious-interrupt vector of the local APIC.
pub const SPURIOUS_VECTOR: u8 = 0xff;
/// First vector handed out by [`allocate`].
const FIRST_DYNAMIC: u8 = 0x40;
/// One past the last vector handed out by [`allocate`].
const END_DYNAMIC: u8 = 0xf0;

/// The registers a stub saved, in stack order.
#[repr(C)]
#[derive(Debug)]
pub struct Frame {
    pub r15: u64,
    pub r14: u64,
    pub r13: u64,
    pub r12: u64,
    pub r11: u64,
    pub r10: u64,
    pub r9: u64,
    pub r8: u64,
    pub rdi: u64,
    pub rsi: u64,
    pub rbp: u64,
    pub rbx: u64,
    pub rdx: u64,
    pub rcx: u64,
    pub rax: u64,
    pub vector: u64,
    pub error_code: u64,
    pub rip: u64,
    pub cs: u64,
    pub rflags: u64,
    pub rsp: u64,
    pub ss: u64,
}

// Stubs: vectors whose exceptions push an error code (8, 10-14, 17, 21, 29, 30) get none
// pushed for them; every other stub pushes a 0 so all frames look alike.
global_asm!(
    r#"
    .altmacro
    .macro isr_stub n
    .balign 16
isr_stub_\n:
    .if (\n == 8) || ((\n >= 10) && (\n <= 14)) || (\n == 17) || (\n == 21) || (\n == 29) || (\n == 30)
    .else
    push $0
    .endif
    push $\n
    jmp isr_common
    .endm

    .macro isr_addr n
    .quad isr_stub_\n
    .endm

    .section .text
isr_common:
    push %rax
    push %rcx
    push %rdx
    push %rbx
    push %rbp
    push %rsi
    push %rdi
    push %r8
    push %r9
    push %r10
    push %r11
    push %r12
    push %r13
    push %r14
    push %r15
    /* 15 registers + vector + error code + the CPU's 5-word frame: %rsp is 16-aligned. */
    mov %rsp, %rdi
    cld
    call interrupt_dispatch
    pop %r15
    pop %r14
    pop %r13
    pop %r12
    pop %r11
    pop %r10
    pop %r9
    pop %r8
    pop %rdi
    pop %rsi
    pop %rbp
    pop %rbx
    pop %rdx
    pop %rcx
    pop %rax
    add $16, %rsp
    iretq

    .set i, 0
    .rept 256
    isr_stub %i
    .set i, i + 1
    .endr

    .section .rodata
    .balign 8
    .global isr_stub_table
isr_stub_table:
    .set i, 0
    .rept 256
    isr_addr %i
    .set i, i + 1
    .endr
    .noaltmacro
    "#,
    options(att_syntax)
);

extern "C" {
    static isr_stub_table: [u64; 256];
}

#[repr(C, align(16))]
struct Idt([u64; 512]);

static IDT: spin::Mutex<Idt> = spin::Mutex::new(Idt([0; 512]));

/// An interrupt handler: it runs with interrupts off and sends its own EOI.
pub type Handler = fn(&mut Frame);

static HANDLERS: spin::Mutex<[Option<Handler>; 256]> = spin::Mutex::new([None; 256]);
static NEXT_VECTOR: AtomicU8 = AtomicU8::new(FIRST_DYNAMIC);

/// Fills and loads the IDT and quiets the legacy PIC. Interrupts stay disabled.
pub fn init() {
    // SAFETY: the table is 256 addresses emitted by the assembly above, immutable.
    let stubs = unsafe { &isr_stub_table };
    let mut idt = IDT.lock();
    for (v, &addr) in stubs.iter().enumerate() {
        // Interrupt gate (0x8E: present, DPL 0, type 0xE), code selector 0x08, no IST.
        let low = (addr & 0xffff) | (0x08 << 16) | (0x8e << 40) | ((addr >> 16) & 0xffff) << 48;
        idt.0[2 * v] = low;
        idt.0[2 * v + 1] = addr >> 32;
    }
    let base = idt.0.as_ptr() as u64;
    let mut pointer = [0u8; 10];
    pointer[..2].copy_from_slice(&(512u16 * 8 - 1).to_le_bytes());
    pointer[2..].copy_from_slice(&base.to_le_bytes());
    // SAFETY: the IDT is a static that lives forever and every entry points at a stub.
    unsafe {
        asm!("lidt [{}]", in(reg) pointer.as_ptr(), options(readonly, nostack, preserves_flags))
    };
    drop(idt);
    quiet_pic();
}

/// Remaps the 8259 pair to vectors 0x20–0x2f (away from exceptions) and masks every line.
fn quiet_pic() {
    outb(0x20, 0x11);
    outb(0xa0, 0x11);
    outb(0x21, 0x20);
    outb(0xa1, 0x28);
    outb(0x21, 4);
    outb(0xa1, 2);
    outb(0x21, 1);
    outb(0xa1, 1);
    outb(0x21, 0xff);
    outb(0xa1, 0xff);
}

/// Installs `handler` for `vector`.
pub fn register(vector: u8, handler: Handler) {
    cpu::without_interrupts(|| HANDLERS.lock()[usize::from(vector)] = Some(handler));
}

/// A fresh vector for a device interrupt, or `None` when all are taken.
pub fn allocate() -> Option<u8> {
    NEXT_VECTOR
        .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| {
            (v < END_DYNAMIC).then(|| v + 1)
        })
        .ok()
}

#[no_mangle]
extern "C" fn interrupt_dispatch(frame: &mut Frame) {
    let vector = frame.vector as u8;
    let handler = HANDLERS.lock()[usize::from(vector)];
    match handler {
        Some(h) => h(frame),
        None if vector < 32 => exception(frame),
        None if vector == SPURIOUS_VECTOR => {}
        None => {
            log::warn!("event=interrupt_unexpected vector={vector:#x}");
            super::apic::eoi();
        }
    }
}

fn exception(frame: &Frame) -> ! {
    let cr2 = if frame.vector == 14 { cpu::cr2() } else { 0 };
    panic!(
        "cpu exception vector={} error={:#x} rip={:#x} rsp={:#x} cr2={:#x}",
        frame.vector, frame.error_code, frame.rip, frame.rsp, cr2
    );
}
