//! The CPU instructions the kernel needs, each wrapped once.

use core::arch::asm;

/// Writes a byte to an I/O port.
pub fn outb(port: u16, value: u8) {
    // SAFETY: port writes have no memory effects; callers pick ports of devices they own.
    unsafe {
        asm!("out dx, al", in("dx") port, in("al") value, options(nomem, nostack, preserves_flags))
    }
}

/// Reads a byte from an I/O port.
pub fn inb(port: u16) -> u8 {
    let v: u8;
    // SAFETY: as for `outb`.
    unsafe {
        asm!("in al, dx", out("al") v, in("dx") port, options(nomem, nostack, preserves_flags))
    }
    v
}

/// Writes a dword to an I/O port.
pub fn outl(port: u16, value: u32) {
    // SAFETY: as for `outb`.
    unsafe {
        asm!("out dx, eax", in("dx") port, in("eax") value, options(nomem, nostack, preserves_flags))
    }
}

/// Reads a dword from an I/O port.
pub fn inl(port: u16) -> u32 {
    let v: u32;
    // SAFETY: as for `outb`.
    unsafe {
        asm!("in eax, dx", out("eax") v, in("dx") port, options(nomem, nostack, preserves_flags))
    }
    v
}

/// Reads a model-specific register.
pub fn rdmsr(msr: u32) -> u64 {
    let (lo, hi): (u32, u32);
    // SAFETY: callers read only architectural MSRs whose presence CPUID reported.
    unsafe {
        asm!("rdmsr", in("ecx") msr, out("eax") lo, out("edx") hi, options(nomem, nostack, preserves_flags))
    }
    u64::from(hi) << 32 | u64::from(lo)
}

/// Writes a model-specific register.
pub fn wrmsr(msr: u32, value: u64) {
    // SAFETY: callers write only architectural MSRs whose presence CPUID reported, with
    // values the SDM allows.
    unsafe {
        asm!("wrmsr", in("ecx") msr, in("eax") value as u32, in("edx") (value >> 32) as u32, options(nostack, preserves_flags))
    }
}

/// The time-stamp counter.
pub fn rdtsc() -> u64 {
    let (lo, hi): (u32, u32);
    // SAFETY: RDTSC only reads the counter.
    unsafe { asm!("rdtsc", out("eax") lo, out("edx") hi, options(nomem, nostack, preserves_flags)) }
    u64::from(hi) << 32 | u64::from(lo)
}

/// CPUID leaf/subleaf: (eax, ebx, ecx, edx).
pub fn cpuid(leaf: u32, subleaf: u32) -> (u32, u32, u32, u32) {
    // `core::arch` wraps CPUID safely (it preserves rbx for LLVM).
    let r = core::arch::x86_64::__cpuid_count(leaf, subleaf);
    (r.eax, r.ebx, r.ecx, r.edx)
}

/// Enables interrupts and halts until one arrives, atomically: the interrupt shadow of
/// `sti` covers `hlt`, so a wake-up that is already pending is not lost.
pub fn enable_and_halt() {
    // SAFETY: the IDT is loaded before interrupts are first enabled.
    unsafe { asm!("sti", "hlt", options(nomem, nostack)) }
}

/// Disables interrupts.
pub fn disable_interrupts() {
    // SAFETY: masking interrupts cannot break memory safety.
    unsafe { asm!("cli", options(nomem, nostack)) }
}

/// Enables interrupts.
pub fn enable_interrupts() {
    // SAFETY: the IDT is loaded before interrupts are first enabled.
    unsafe { asm!("sti", options(nomem, nostack)) }
}

/// Whether interrupts are enabled (RFLAGS.IF).
pub fn interrupts_enabled() -> bool {
    let flags: u64;
    // SAFETY: reads RFLAGS through the stack.
    unsafe { asm!("pushfq", "pop {}", out(reg) flags, options(nomem, preserves_flags)) }
    flags & (1 << 9) != 0
}

/// Runs `f` with interrupts disabled, restoring the previous state.
pub fn without_interrupts<R>(f: impl FnOnce() -> R) -> R {
    let was = interrupts_enabled();
    disable_interrupts();
    let r = f();
    if was {
        enable_interrupts();
    }
    r
}

/// Halts forever with interrupts off.
pub fn halt_forever() -> ! {
    loop {
        disable_interrupts();
        // SAFETY: halting with interrupts off stops this CPU; only NMI/reset leave it.
        unsafe { asm!("hlt", options(nomem, nostack)) }
    }
}

/// CR2: the faulting address of the last page fault.
pub fn cr2() -> u64 {
    let v: u64;
    // SAFETY: reading CR2 has no side effects.
    unsafe { asm!("mov {}, cr2", out(reg) v, options(nomem, nostack, preserves_flags)) }
    v
}

/// Flushes the TLB entry for the page holding `addr`.
pub fn invlpg(addr: u64) {
    // SAFETY: invalidating a TLB entry only costs a later page walk.
    unsafe { asm!("invlpg [{}]", in(reg) addr, options(nostack, preserves_flags)) }
}

extern "C" {
    /// The lowest byte of the kernel stack (`boot.rs`); the page tables lie just below it.
    static mut boot_stack: [u64; 0];
}

/// What the lowest word of the kernel stack holds while nothing has grown into it.
const STACK_CANARY: u64 = 0x5453_4d4f_4442_5355;

/// Marks the bottom of the kernel stack (at boot, before anything can reach it).
pub fn arm_stack_canary() {
    // SAFETY: `boot_stack` is the kernel stack's lowest word, in .bss, identity-mapped and
    // writable; the stack is 256 KiB deep and nothing has come near its bottom at boot.
    unsafe {
        core::ptr::addr_of_mut!(boot_stack)
            .cast::<u64>()
            .write_volatile(STACK_CANARY)
    }
}

/// Stops the kernel, saying why, if the stack grew into its last word: the page tables come
/// next, and overwriting them turns the next interrupt into a silent triple fault.
pub fn check_stack_canary() {
    // SAFETY: as in `arm_stack_canary`; a read of a word of our own .bss.
    let word = unsafe {
        core::ptr::addr_of!(boot_stack)
            .cast::<u64>()
            .read_volatile()
    };
    if word != STACK_CANARY {
        panic!("the kernel stack overflowed into its last word ({word:#x})");
    }
}
