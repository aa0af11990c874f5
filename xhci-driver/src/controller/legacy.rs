//! The USB Legacy Support Capability (xHCI 7.1): firmware that drives the controller itself
//! (a laptop's BIOS, for a keyboard before an OS runs) owns it until the OS asks for it, and
//! may take System Management Interrupts on its events. The OS sets HC OS Owned and waits
//! for the firmware to clear HC BIOS Owned; firmware that does not answer within a second
//! is overruled, as Linux does; and the SMIs are turned off, so that firmware never acts on
//! the controller behind the driver's back.

use super::registers::{extended_capabilities, spin_until, Capabilities};
use crate::hal::Hal;

/// Extended Capability ID of USB Legacy Support.
const XECP_LEGACY_SUPPORT: u32 = 1;
/// USBLEGSUP: HC BIOS Owned Semaphore.
const BIOS_OWNED: u32 = 1 << 16;
/// USBLEGSUP: HC OS Owned Semaphore.
const OS_OWNED: u32 = 1 << 24;
/// USBLEGCTLSTS, at the capability + 4.
const LEGACY_CONTROL: usize = 4;
/// USBLEGCTLSTS: the SMI enables (USB SMI, on Host System Error, on OS Ownership Change, on
/// PCI Command, on BAR), all cleared.
const SMI_ENABLES: u32 = 1 << 0 | 1 << 4 | 1 << 13 | 1 << 14 | 1 << 15;
/// USBLEGCTLSTS: the SMI status bits the OS may clear (RW1C): on OS Ownership Change, on
/// PCI Command, on BAR.
const SMI_EVENTS: u32 = 0b111 << 29;
/// How long firmware gets to let go (Linux waits as long).
pub const HANDOFF_TIMEOUT_US: u64 = 1_000_000;

/// What the handoff found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Handoff {
    /// The controller has no USB Legacy Support Capability (QEMU's have none).
    Absent,
    /// Firmware did not own it; the OS now does.
    NotOwned,
    /// Firmware owned it and let go when asked.
    Released,
    /// Firmware owned it and did not let go within [`HANDOFF_TIMEOUT_US`]: its semaphore
    /// was cleared by the OS.
    Forced,
}

impl Handoff {
    /// The name logs use.
    pub fn name(self) -> &'static str {
        match self {
            Handoff::Absent => "absent",
            Handoff::NotOwned => "not_owned",
            Handoff::Released => "released",
            Handoff::Forced => "forced",
        }
    }
}

/// Takes the controller from firmware (before it is halted and reset) and turns firmware's
/// SMIs off.
pub fn legacy_handoff<H: Hal>(hal: &H) -> Handoff {
    let caps = Capabilities::read(hal);
    let Some(at) = extended_capabilities(|o| hal.read32(o), caps.xecp, hal.mmio_len())
        .into_iter()
        .find(|(_, header)| header & 0xff == XECP_LEGACY_SUPPORT)
        .map(|(at, _)| at)
    else {
        return Handoff::Absent;
    };
    let legsup = hal.read32(at);
    hal.write32(at, legsup | OS_OWNED);
    let result = if legsup & BIOS_OWNED == 0 {
        Handoff::NotOwned
    } else if spin_until(hal, HANDOFF_TIMEOUT_US, &|| {
        hal.read32(at) & BIOS_OWNED == 0
    }) {
        Handoff::Released
    } else {
        hal.write32(at, (hal.read32(at) & !BIOS_OWNED) | OS_OWNED);
        Handoff::Forced
    };
    let control = hal.read32(at + LEGACY_CONTROL);
    hal.write32(at + LEGACY_CONTROL, (control & !SMI_ENABLES) | SMI_EVENTS);
    result
}
