//! SuperSpeed devices offered to a USB 2.0 frontend.
//!
//! PVUSB has no SuperSpeed speed code and Linux's xen-hcd is a USB 2.0 host controller, so a
//! SuperSpeed device is reported as high speed and its descriptors are rewritten on the way
//! to the guest as a high-speed device of the same function would have them: bcdUSB 2.10,
//! an EP0 max packet size of 64 bytes instead of the exponent 9 (USB 3.2 9.6.1), no
//! SuperSpeed Endpoint Companion descriptors, and endpoint max packet sizes within USB 2.0's
//! limits (512 bytes for bulk, 1024 for interrupt and isochronous). Linux refuses the
//! unrewritten ones (an EP0 max packet size of 9 is invalid at high speed).

use alloc::vec::Vec;

/// bDescriptorType of a device descriptor.
pub const DEVICE: u8 = 1;
/// bDescriptorType of a configuration descriptor.
pub const CONFIGURATION: u8 = 2;
const ENDPOINT: u8 = 5;
const SS_ENDPOINT_COMPANION: u8 = 0x30;
const SSP_ISOCH_ENDPOINT_COMPANION: u8 = 0x31;

/// Rewrites the first bytes of a device descriptor in place (as many as the guest asked
/// for).
pub fn rewrite_device(d: &mut [u8]) {
    if d.len() >= 4 && u16::from_le_bytes([d[2], d[3]]) >= 0x0300 {
        d[2..4].copy_from_slice(&0x0210u16.to_le_bytes());
    }
    if d.len() >= 8 && d[7] == 9 {
        d[7] = 64;
    }
}

/// Rewrites (the first bytes of) a configuration descriptor set: companions dropped,
/// endpoint sizes capped, wTotalLength reduced by the bytes dropped. A descriptor cut short
/// by the end of `c` is kept as it is, and a malformed length ends the walk there (the rest
/// is kept): the guest parses what it gets as from any device.
pub fn rewrite_configuration(c: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(c.len());
    let mut at = 0;
    while at < c.len() {
        let len = usize::from(c[at]);
        if len < 2 || at + len > c.len() {
            out.extend_from_slice(&c[at..]);
            break;
        }
        let d = &c[at..at + len];
        match d[1] {
            SS_ENDPOINT_COMPANION | SSP_ISOCH_ENDPOINT_COMPANION => {}
            ENDPOINT if len >= 7 => {
                let mut e = d.to_vec();
                let size = u16::from_le_bytes([e[4], e[5]]) & 0x7ff;
                let cap = if e[3] & 3 == 2 { 512 } else { 1024 };
                e[4..6].copy_from_slice(&size.min(cap).to_le_bytes());
                out.extend_from_slice(&e);
            }
            _ => out.extend_from_slice(d),
        }
        at += len;
    }
    let dropped = c.len() - out.len();
    if out.len() >= 4 && out[1] == CONFIGURATION {
        let total = u16::from_le_bytes([out[2], out[3]]);
        let total = total.saturating_sub(dropped as u16);
        out[2..4].copy_from_slice(&total.to_le_bytes());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_superspeed_device_descriptor_becomes_a_high_speed_one() {
        let mut d = [
            18, 1, 0x00, 0x03, 0, 0, 0, 9, 0xf4, 0x46, 1, 0, 0, 0, 1, 2, 3, 1,
        ];
        rewrite_device(&mut d);
        assert_eq!(&d[2..4], &[0x10, 0x02]);
        assert_eq!(d[7], 64);
        assert_eq!(&d[8..], &[0xf4, 0x46, 1, 0, 0, 0, 1, 2, 3, 1]);
        let mut head = [18, 1, 0x00, 0x03];
        rewrite_device(&mut head);
        assert_eq!(
            head,
            [18, 1, 0x10, 0x02],
            "a short read is rewritten as far as it goes"
        );
        let mut usb2 = [18, 1, 0x00, 0x02, 0, 0, 0, 64];
        rewrite_device(&mut usb2);
        assert_eq!(usb2, [18, 1, 0x00, 0x02, 0, 0, 0, 64]);
    }

    #[test]
    fn companions_go_and_endpoint_sizes_are_capped() {
        let c = [
            9, 2, 44, 0, 1, 1, 0, 0x80, 50, //
            9, 4, 0, 0, 2, 8, 6, 0x50, 0, //
            7, 5, 0x81, 2, 0x00, 0x04, 0, //
            6, 0x30, 15, 0, 0, 0, //
            7, 5, 0x02, 2, 0x00, 0x04, 0, //
            6, 0x30, 15, 0, 0, 0,
        ];
        let out = rewrite_configuration(&c);
        assert_eq!(out.len(), 32);
        assert_eq!(u16::from_le_bytes([out[2], out[3]]), 32, "wTotalLength");
        assert_eq!(&out[18..25], &[7, 5, 0x81, 2, 0x00, 0x02, 0]);
        assert_eq!(&out[25..32], &[7, 5, 0x02, 2, 0x00, 0x02, 0]);
        // The 9-byte header read first is left as the device sent it.
        assert_eq!(rewrite_configuration(&c[..9]), &c[..9]);
        // A cut descriptor and a zero length are kept, not misread.
        assert_eq!(rewrite_configuration(&c[..20]), &c[..20]);
        let bad = [9, 2, 12, 0, 1, 1, 0, 0x80, 50, 0, 5, 1];
        assert_eq!(rewrite_configuration(&bad), bad);
    }
}
