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

use usb::descriptor::{
    CONFIGURATION, DEVICE, ENDPOINT, SUPERSPEEDPLUS_ISOCHRONOUS_ENDPOINT_COMPANION,
    SUPERSPEED_USB_ENDPOINT_COMPANION,
};
use usb::request::GET_DESCRIPTOR;

use crate::host::MAX_CONFIGURATIONS;

/// A GET_DESCRIPTOR of a SuperSpeed device whose answer is rewritten for the guest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rewrite {
    /// bDescriptorType: DEVICE or CONFIGURATION.
    pub kind: u8,
    /// The descriptor index.
    pub index: u8,
    /// A configuration the guest reads in part (Linux reads the 9-byte header first) is
    /// asked of the device whole, up to [`WHOLE_READ_BYTES`], into the start of the request's
    /// one frame: only the whole one can be rewritten, and the header's wTotalLength must
    /// already be the rewritten length the guest then asks for.
    pub whole_read: bool,
}

/// The most of a configuration read in one go for a shorter read: one frame. A longer
/// configuration (real ones are a few hundred bytes to a few KiB) read in part keeps the
/// device's wTotalLength in its header.
pub const WHOLE_READ_BYTES: u16 = xen::abi::PAGE_SIZE as u16;

impl Rewrite {
    /// The rewrite the request with SETUP packet `setup` needs on its way back from a
    /// SuperSpeed device shown as high speed: a standard GET_DESCRIPTOR of the device or of
    /// a configuration; `None` for any other request.
    pub fn of(setup: &[u8; 8]) -> Option<Rewrite> {
        let value = u16::from_le_bytes([setup[2], setup[3]]);
        let kind = (value >> 8) as u8;
        (setup[0] == 0x80
            && setup[1] == GET_DESCRIPTOR
            && (kind == DEVICE || kind == CONFIGURATION))
            .then_some(Rewrite {
                kind,
                index: value as u8,
                whole_read: false,
            })
    }

    /// Makes a configuration read shorter than [`WHOLE_READ_BYTES`] ask the device for that
    /// much (its wLength in `setup`), when the request's buffer is one of usbdom's frames
    /// (`own_frame`): never a guest's mapped page, which holds more than the guest's buffer.
    pub fn read_whole(&mut self, setup: &mut [u8; 8], own_frame: bool) {
        let asked = u16::from_le_bytes([setup[6], setup[7]]);
        if self.kind == CONFIGURATION && own_frame && asked < WHOLE_READ_BYTES {
            self.whole_read = true;
            setup[6..8].copy_from_slice(&WHOLE_READ_BYTES.to_le_bytes());
        }
    }

    /// The most bytes the device may answer with: a whole read's page, else the guest's
    /// `buffer` bytes.
    pub fn device_bytes(&self, buffer: usize) -> usize {
        if self.whole_read {
            usize::from(WHOLE_READ_BYTES)
        } else {
            buffer
        }
    }

    /// The guest's answer made of what the device sent (`bytes`), and, when `bytes` held a
    /// whole configuration, the rewritten one with its index, to keep for the port.
    pub fn answer(self, mut bytes: Vec<u8>) -> (Vec<u8>, Option<(u8, Vec<u8>)>) {
        if self.kind == DEVICE {
            rewrite_device(&mut bytes);
            return (bytes, None);
        }
        let whole = bytes.len() >= 4
            && bytes.len() >= usize::from(u16::from_le_bytes([bytes[2], bytes[3]]));
        let rewritten = rewrite_configuration(&bytes);
        let kept = whole.then(|| (self.index, rewritten.clone()));
        (rewritten, kept)
    }
}

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
            SUPERSPEED_USB_ENDPOINT_COMPANION | SUPERSPEEDPLUS_ISOCHRONOUS_ENDPOINT_COMPANION => {}
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

/// Bytes of rewritten configurations a port keeps. The device chooses how many
/// configurations it answers for and how long each is (wTotalLength up to 64 KiB), so without
/// a bound one device could fill the driver domain's heap; real configurations are a few
/// hundred bytes to a few KiB.
pub const CACHE_BYTES: usize = 32 * 1024;

/// A port's configuration descriptors as rewritten for the guest, by index, once read
/// whole: a later read of any length is answered from here, so a guest that checks the
/// descriptors again (Linux does after every reset) finds them unchanged (rewriting a partial
/// read would drop a different number of companion bytes). At most [`MAX_CONFIGURATIONS`]
/// entries and [`CACHE_BYTES`] bytes: what does not fit is rewritten afresh on each read.
#[derive(Clone, Debug, Default)]
pub struct ConfigCache {
    entries: Vec<(u8, Vec<u8>)>,
    bytes: usize,
    /// A cap was hit since the cache was last cleared (it is reported once).
    full: bool,
}

/// Which bound kept a configuration out of a [`ConfigCache`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CacheFull {
    /// [`MAX_CONFIGURATIONS`] entries are held.
    Entries,
    /// It would take the bytes held past [`CACHE_BYTES`].
    Bytes,
}

impl CacheFull {
    /// The name logs use.
    pub fn name(self) -> &'static str {
        match self {
            CacheFull::Entries => "entries",
            CacheFull::Bytes => "bytes",
        }
    }
}

impl ConfigCache {
    /// The rewritten configuration at `index`, if it was kept.
    pub fn get(&self, index: u8) -> Option<&[u8]> {
        self.entries
            .iter()
            .find(|e| e.0 == index)
            .map(|e| e.1.as_slice())
    }

    /// Keeps `config` as configuration `index` (replacing what was kept for it) if it fits.
    /// Returns the bound that kept it out the first time one does after [`Self::clear`], so
    /// a device that tries again and again is logged once.
    pub fn insert(&mut self, index: u8, config: Vec<u8>) -> Option<CacheFull> {
        let held = self.get(index).map(<[u8]>::len);
        let replaced = held.unwrap_or(0);
        let refused = if held.is_none() && self.entries.len() >= usize::from(MAX_CONFIGURATIONS) {
            Some(CacheFull::Entries)
        } else if self.bytes - replaced + config.len() > CACHE_BYTES {
            Some(CacheFull::Bytes)
        } else {
            None
        };
        if let Some(why) = refused {
            return (!core::mem::replace(&mut self.full, true)).then_some(why);
        }
        self.entries.retain(|e| e.0 != index);
        self.bytes = self.bytes - replaced + config.len();
        self.entries.push((index, config));
        None
    }

    /// Forgets everything (a device was connected to the port).
    pub fn clear(&mut self) {
        *self = ConfigCache::default();
    }

    /// Configurations kept.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether none is kept.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Bytes kept.
    pub fn bytes(&self) -> usize {
        self.bytes
    }
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
    fn only_descriptor_reads_are_rewritten_and_only_a_short_configuration_read_in_our_frame_is_widened(
    ) {
        assert_eq!(
            Rewrite::of(&[0x80, 6, 0, 3, 0, 0, 255, 0]),
            None,
            "a string"
        );
        assert_eq!(
            Rewrite::of(&[0x00, 9, 1, 0, 0, 0, 0, 0]),
            None,
            "SET_CONFIGURATION"
        );
        let mut header = [0x80, 6, 1, 2, 0, 0, 9, 0];
        let mut w = Rewrite::of(&header).unwrap();
        assert_eq!((w.kind, w.index, w.whole_read), (CONFIGURATION, 1, false));
        w.read_whole(&mut header, false);
        assert_eq!(
            (w.whole_read, header[6]),
            (false, 9),
            "not into a guest's page"
        );
        w.read_whole(&mut header, true);
        assert!(w.whole_read);
        assert_eq!(u16::from_le_bytes([header[6], header[7]]), WHOLE_READ_BYTES);
        assert_eq!(w.device_bytes(9), usize::from(WHOLE_READ_BYTES));
        let mut device = [0x80, 6, 0, 1, 0, 0, 18, 0];
        let mut d = Rewrite::of(&device).unwrap();
        d.read_whole(&mut device, true);
        assert_eq!(
            (d.whole_read, d.device_bytes(18)),
            (false, 18),
            "a device descriptor"
        );
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

    #[test]
    fn the_configuration_cache_is_bounded_in_entries_and_bytes_and_says_so_once() {
        let mut cache = ConfigCache::default();
        assert_eq!(cache.insert(0, vec![1; 100]), None);
        // Replacing an entry counts its new size only.
        assert_eq!(cache.insert(0, vec![2; 200]), None);
        assert_eq!((cache.len(), cache.bytes()), (1, 200));
        assert_eq!(cache.get(0), Some(&[2u8; 200][..]));
        for i in 1..MAX_CONFIGURATIONS {
            assert_eq!(cache.insert(i, vec![0; 10]), None);
        }
        assert_eq!(cache.insert(200, vec![0; 10]), Some(CacheFull::Entries));
        assert_eq!(cache.insert(201, vec![0; 10]), None, "reported once");
        assert_eq!(cache.get(200), None);
        assert_eq!(cache.len(), usize::from(MAX_CONFIGURATIONS));
        cache.clear();
        assert!(cache.is_empty());
        assert_eq!(cache.insert(0, vec![0; CACHE_BYTES]), None);
        assert_eq!(cache.insert(1, vec![0; 1]), Some(CacheFull::Bytes));
        assert_eq!(cache.insert(0, vec![0; 10]), None, "a smaller one fits");
        assert_eq!(cache.bytes(), 10);
    }
}
