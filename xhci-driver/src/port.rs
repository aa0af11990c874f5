//! The Port Status and Control register (PORTSC, xHCI 5.4.8) and how to write it without
//! side effects: its change bits are write-1-to-clear, Port Enabled/Disabled is cleared (the
//! port disabled) by writing 1, and Port Reset starts a reset when written 1; and the
//! Protocol Speed IDs its Port Speed field holds.

use usb::Speed;

/// Current Connect Status (RO).
pub const CCS: u32 = 1 << 0;
/// Port Enabled/Disabled (RW1CS: writing 1 disables the port).
pub const PED: u32 = 1 << 1;
/// Port Reset (RW1S).
pub const PR: u32 = 1 << 4;
/// Port Link State (RWS, written only together with LWS).
const PLS_SHIFT: u32 = 5;
/// Port Power (RWS).
pub const PP: u32 = 1 << 9;
const SPEED_SHIFT: u32 = 10;
/// Port Indicator Control (RWS).
const PIC: u32 = 0b11 << 14;
/// Connect Status Change (RW1CS).
pub const CSC: u32 = 1 << 17;
/// Port Enabled/Disabled Change (RW1CS).
pub const PEC: u32 = 1 << 18;
/// Warm Port Reset Change (RW1CS).
pub const WRC: u32 = 1 << 19;
/// Over-current Change (RW1CS).
pub const OCC: u32 = 1 << 20;
/// Port Reset Change (RW1CS).
pub const PRC: u32 = 1 << 21;
/// Port Link State Change (RW1CS).
pub const PLC: u32 = 1 << 22;
/// Port Config Error Change (RW1CS).
pub const CEC: u32 = 1 << 23;
/// Wake on Connect/Disconnect/Over-current Enable (RWS).
const WAKE_ENABLES: u32 = 0b111 << 25;
/// Warm Port Reset (RW1S, USB3 ports).
pub const WPR: u32 = 1 << 31;

/// Every change bit.
pub const CHANGE_BITS: u32 = CSC | PEC | WRC | OCC | PRC | PLC | CEC;
/// The bits a write must carry over from a read to change nothing.
const PRESERVED: u32 = PP | PIC | WAKE_ENABLES;

/// The [`Speed`] of a Protocol Speed ID of the default speed mapping (xHCI 7.2.2.1.1), as
/// a Port Speed field holds it; the same encoding goes into the Slot Context.
pub fn speed_from_psiv(psiv: u8) -> Option<Speed> {
    Some(match psiv {
        1 => Speed::Full,
        2 => Speed::Low,
        3 => Speed::High,
        4 => Speed::Super,
        5 => Speed::SuperPlus,
        _ => return None,
    })
}

/// The Protocol Speed ID of `speed` (the default speed mapping).
pub fn psiv(speed: Speed) -> u8 {
    match speed {
        Speed::Full => 1,
        Speed::Low => 2,
        Speed::High => 3,
        Speed::Super => 4,
        Speed::SuperPlus => 5,
    }
}

/// A PORTSC value as read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Portsc(pub u32);

impl Portsc {
    /// Something is connected.
    pub fn connected(self) -> bool {
        self.0 & CCS != 0
    }

    /// The port is enabled.
    pub fn enabled(self) -> bool {
        self.0 & PED != 0
    }

    /// A reset is in progress.
    pub fn resetting(self) -> bool {
        self.0 & PR != 0
    }

    /// Port Link State.
    pub fn link_state(self) -> u8 {
        ((self.0 >> PLS_SHIFT) & 0xf) as u8
    }

    /// The attached device's speed, if known.
    pub fn speed(self) -> Option<Speed> {
        speed_from_psiv(((self.0 >> SPEED_SHIFT) & 0xf) as u8)
    }

    /// The change bits that are set.
    pub fn changes(self) -> u32 {
        self.0 & CHANGE_BITS
    }

    /// A value that, written back, changes nothing: the RWS bits kept, the change bits and
    /// PED written 0, Port Reset and Link State strobe 0.
    pub fn neutral(self) -> u32 {
        self.0 & PRESERVED
    }

    /// The write that acknowledges (clears) the change bits in `bits`.
    pub fn clear_changes(self, bits: u32) -> u32 {
        self.neutral() | (bits & CHANGE_BITS)
    }

    /// The write that starts a port reset (USB2 ports: enables the port afterwards).
    pub fn start_reset(self) -> u32 {
        self.neutral() | PR
    }

    /// The write that starts a Warm Port Reset (USB3 ports: retrains the link).
    pub fn start_warm_reset(self) -> u32 {
        self.neutral() | WPR
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A USB2 port as QEMU shows it after a reset: powered, enabled, high speed, U0, with
    /// Connect Status Change and Port Reset Change pending.
    const AFTER_RESET: u32 = CCS | PED | PP | (3 << SPEED_SHIFT) | CSC | PRC;

    #[test]
    fn a_neutral_write_clears_no_change_bit_and_does_not_disable_the_port() {
        let p = Portsc(AFTER_RESET | (1 << 14) | (1 << 25));
        let w = p.neutral();
        assert_eq!(w & CHANGE_BITS, 0);
        assert_eq!(w & PED, 0);
        assert_eq!(w & PR, 0);
        assert_eq!(w & PP, PP, "power stays on");
        assert_eq!(w & (1 << 14), 1 << 14, "indicator kept");
        assert_eq!(w & (1 << 25), 1 << 25, "wake enables kept");
        assert_eq!(w & (0xf << SPEED_SHIFT), 0, "read-only speed not echoed");
    }

    #[test]
    fn acknowledging_clears_only_the_named_changes() {
        let w = Portsc(AFTER_RESET).clear_changes(PRC);
        assert_eq!(w & CHANGE_BITS, PRC);
        assert_eq!(w & PED, 0);
        assert_eq!(Portsc(AFTER_RESET).clear_changes(PP) & CHANGE_BITS, 0);
    }

    #[test]
    fn a_reset_write_sets_pr_and_keeps_changes_pending() {
        let w = Portsc(CCS | PP | CSC | (7 << PLS_SHIFT)).start_reset();
        assert_eq!(w, PP | PR);
    }

    #[test]
    fn a_warm_reset_write_sets_wpr_only() {
        assert_eq!(Portsc(CCS | PP | PED | PLC).start_warm_reset(), PP | WPR);
    }

    #[test]
    fn fields_decode() {
        let p = Portsc(AFTER_RESET);
        assert!(p.connected() && p.enabled() && !p.resetting());
        assert_eq!(p.speed(), Some(Speed::High));
        assert_eq!(p.changes(), CSC | PRC);
        assert_eq!(Portsc(CCS | (7 << PLS_SHIFT)).link_state(), 7);
        assert_eq!(Portsc(0).speed(), None);
        for n in 1..=5 {
            assert_eq!(psiv(speed_from_psiv(n).unwrap()), n);
        }
    }
}
