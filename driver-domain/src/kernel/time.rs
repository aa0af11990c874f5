//! Time from the TSC: its frequency comes from CPUID (the Intel TSC leaf, or Xen's timing
//! leaf) or, failing that, is measured against the PIT. Everything else (delays, timeouts,
//! log timestamps) counts TSC ticks.

use core::sync::atomic::{AtomicU64, Ordering};

use super::cpu::{cpuid, inb, outb, rdtsc};

static BOOT_TSC: AtomicU64 = AtomicU64::new(0);
static TSC_HZ: AtomicU64 = AtomicU64::new(0);

/// Where the TSC frequency came from.
#[derive(Clone, Copy, Debug)]
pub enum Source {
    /// CPUID leaf 0x15 (crystal ratio).
    CpuidTsc,
    /// Xen's CPUID timing leaf.
    Xen,
    /// Measured over 10 ms of PIT channel 2.
    Pit,
    /// Nothing worked: 1 GHz assumed; times are wrong by the real ratio.
    Assumed,
}

impl Source {
    /// Its name in the log.
    pub fn name(self) -> &'static str {
        match self {
            Source::CpuidTsc => "cpuid_15h",
            Source::Xen => "xen_cpuid",
            Source::Pit => "pit",
            Source::Assumed => "assumed",
        }
    }
}

fn from_cpuid() -> Option<u64> {
    let (max, ..) = cpuid(0, 0);
    if max < 0x15 {
        return None;
    }
    let (den, num, crystal, _) = cpuid(0x15, 0);
    (den != 0 && num != 0 && crystal != 0)
        .then(|| u64::from(crystal) * u64::from(num) / u64::from(den))
}

fn from_xen() -> Option<u64> {
    // Xen's leaves start at 0x40000000 or, with Viridian, 0x40000100.
    let base = (0x4000_0000..0x4001_0000).step_by(0x100).find(|&b| {
        let (_, ebx, ecx, edx) = cpuid(b, 0);
        [ebx, ecx, edx] == [0x566e_6558, 0x6558_4d4d, 0x4d4d_566e] // "XenVMMXenVMM"
    })?;
    // Leaf base+3, subleaf 0: ECX = guest TSC frequency in kHz.
    let (_, _, khz, _) = cpuid(base + 3, 0);
    (khz != 0).then_some(u64::from(khz) * 1000)
}

fn from_pit() -> Option<u64> {
    const PIT_HZ: u64 = 1_193_182;
    const COUNT: u64 = PIT_HZ / 100; // 10 ms
                                     // Channel 2 gate on, speaker off; mode 0 (output rises at terminal count), binary.
    outb(0x61, (inb(0x61) & !0x02) | 0x01);
    outb(0x43, 0b1011_0000);
    outb(0x42, COUNT as u8);
    outb(0x42, (COUNT >> 8) as u8);
    let start = rdtsc();
    // Bounded: without a PIT (a PVH domU) bit 5 never rises.
    for _ in 0..50_000_000u64 {
        if inb(0x61) & 0x20 != 0 {
            let ticks = rdtsc() - start;
            return (ticks > 0).then_some(ticks * PIT_HZ / COUNT);
        }
    }
    None
}

/// Finds the TSC frequency; the first call also fixes time zero.
pub fn init() -> (u64, Source) {
    BOOT_TSC.store(rdtsc(), Ordering::Relaxed);
    let (hz, source) = if let Some(hz) = from_cpuid() {
        (hz, Source::CpuidTsc)
    } else if let Some(hz) = from_xen() {
        (hz, Source::Xen)
    } else if let Some(hz) = from_pit() {
        (hz, Source::Pit)
    } else {
        (1_000_000_000, Source::Assumed)
    };
    TSC_HZ.store(hz, Ordering::Relaxed);
    (hz, source)
}

/// TSC ticks per second (0 before [`init`]).
pub fn tsc_hz() -> u64 {
    TSC_HZ.load(Ordering::Relaxed)
}

/// Microseconds since [`init`] (0 before it).
pub fn now_micros() -> u64 {
    let hz = tsc_hz();
    if hz == 0 {
        return 0;
    }
    let ticks = rdtsc().wrapping_sub(BOOT_TSC.load(Ordering::Relaxed));
    (u128::from(ticks) * 1_000_000 / u128::from(hz)) as u64
}

/// A point in time `micros` from now, for timeouts.
pub fn deadline(micros: u64) -> u64 {
    now_micros() + micros
}

/// Busy-waits `micros` microseconds.
pub fn delay_us(micros: u64) {
    let end = deadline(micros);
    while now_micros() < end {
        core::hint::spin_loop();
    }
}
