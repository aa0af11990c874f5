//! The local APIC in xAPIC (MMIO) or x2APIC (MSR) mode: enable, EOI, id, and its timer.

use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use super::cpu::{cpuid, rdmsr, wrmsr};
use super::interrupts::{self, SPURIOUS_VECTOR, TIMER_VECTOR};
use super::time;

const IA32_APIC_BASE: u32 = 0x1b;
const APIC_BASE_ENABLE: u64 = 1 << 11;
const APIC_BASE_X2APIC: u64 = 1 << 10;

// Register offsets in the xAPIC page; the x2APIC MSR is 0x800 + offset / 16.
const ID: u32 = 0x20;
const TPR: u32 = 0x80;
const EOI: u32 = 0xb0;
const SVR: u32 = 0xf0;
const LVT_TIMER: u32 = 0x320;
const TIMER_INITIAL: u32 = 0x380;
const TIMER_CURRENT: u32 = 0x390;
const TIMER_DIVIDE: u32 = 0x3e0;
const LVT_TIMER_PERIODIC: u32 = 1 << 17;
const LVT_MASKED: u32 = 1 << 16;

static X2APIC: AtomicBool = AtomicBool::new(false);
static XAPIC_BASE: AtomicU64 = AtomicU64::new(0);
static TICKS: AtomicU64 = AtomicU64::new(0);

fn read(reg: u32) -> u32 {
    if X2APIC.load(Ordering::Relaxed) {
        rdmsr(0x800 + reg / 16) as u32
    } else {
        let addr = XAPIC_BASE.load(Ordering::Relaxed) + u64::from(reg);
        // SAFETY: the xAPIC page is identity-mapped uncached (the top GiB, see boot.rs) and
        // `reg` is one of the architectural registers above.
        unsafe { core::ptr::read_volatile(addr as *const u32) }
    }
}

fn write(reg: u32, value: u32) {
    if X2APIC.load(Ordering::Relaxed) {
        wrmsr(0x800 + reg / 16, u64::from(value));
    } else {
        let addr = XAPIC_BASE.load(Ordering::Relaxed) + u64::from(reg);
        // SAFETY: as in `read`.
        unsafe { core::ptr::write_volatile(addr as *mut u32, value) }
    }
}

/// Which mode the local APIC runs in.
pub fn mode() -> &'static str {
    if X2APIC.load(Ordering::Relaxed) {
        "x2apic"
    } else {
        "xapic"
    }
}

/// Enables the local APIC (x2APIC when the CPU has it), with a spurious vector and priority 0.
pub fn init() {
    let (_, _, ecx, _) = cpuid(1, 0);
    let mut base = rdmsr(IA32_APIC_BASE) | APIC_BASE_ENABLE;
    if ecx & (1 << 21) != 0 {
        base |= APIC_BASE_X2APIC;
        wrmsr(IA32_APIC_BASE, base);
        X2APIC.store(true, Ordering::Relaxed);
    } else {
        wrmsr(IA32_APIC_BASE, base);
        XAPIC_BASE.store(base & 0xf_ffff_f000, Ordering::Relaxed);
    }
    write(TPR, 0);
    write(SVR, 0x100 | u32::from(SPURIOUS_VECTOR));
}

/// This CPU's APIC id (the MSI destination).
pub fn id() -> u32 {
    let raw = read(ID);
    if X2APIC.load(Ordering::Relaxed) {
        raw
    } else {
        raw >> 24
    }
}

/// Signals the end of the interrupt being handled.
pub fn eoi() {
    write(EOI, 0);
}

fn on_timer(_: &mut interrupts::Frame) {
    TICKS.fetch_add(1, Ordering::Relaxed);
    eoi();
}

/// Timer interrupts handled so far.
pub fn ticks() -> u64 {
    TICKS.load(Ordering::Relaxed)
}

/// Starts the periodic timer at `hz`, calibrated against the TSC over 10 ms. Returns the
/// APIC timer's input frequency.
pub fn start_timer(hz: u32) -> u64 {
    interrupts::register(TIMER_VECTOR, on_timer);
    write(TIMER_DIVIDE, 0b1011); // divide by 1
    write(LVT_TIMER, LVT_MASKED | u32::from(TIMER_VECTOR));
    write(TIMER_INITIAL, u32::MAX);
    time::delay_us(10_000);
    let elapsed = u64::from(u32::MAX - read(TIMER_CURRENT));
    let timer_hz = elapsed * 100;
    let period = (timer_hz / u64::from(hz)).clamp(1, u64::from(u32::MAX)) as u32;
    write(LVT_TIMER, LVT_TIMER_PERIODIC | u32::from(TIMER_VECTOR));
    write(TIMER_INITIAL, period);
    timer_hz
}
