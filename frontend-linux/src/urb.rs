//! URBs as the caller hands them in and gets them back, and the status mapping of
//! `xenhcd_translate_status`.

use alloc::vec::Vec;

use usb::{Direction, IsoPacket, TransferType};
use xen::abi::usbif::*;
use xen::pvusb::{Pipe, UsbIsoPacketDescriptor};

/// Linux errno values (positive); URB statuses are their negatives, as in Linux.
pub mod errno {
    /// No such device.
    pub const ENODEV: i32 = 19;
    /// Invalid argument.
    pub const EINVAL: i32 = 22;
    /// Broken pipe: the endpoint stalled.
    pub const EPIPE: i32 = 32;
    /// Protocol error (`USBIF_STATUS_IOERROR`).
    pub const EPROTO: i32 = 71;
    /// Value too large (`USBIF_STATUS_BABBLE`).
    pub const EOVERFLOW: i32 = 75;
    /// Connection reset: the status of an URB given back after an unlink (`usb_unlink_urb`).
    pub const ECONNRESET: i32 = 104;
    /// Cannot send after shutdown: the controller went away, or the backend answered a
    /// status the protocol does not define.
    pub const ESHUTDOWN: i32 = 108;
}

/// `xenhcd_translate_status`: the backend's `USBIF_STATUS_*` to the status Linux gives the
/// URB. Anything the protocol does not define becomes `-ESHUTDOWN`.
pub fn translate_status(status: i32) -> i32 {
    match status {
        USBIF_STATUS_OK => 0,
        USBIF_STATUS_NODEV => -errno::ENODEV,
        USBIF_STATUS_INVAL => -errno::EINVAL,
        USBIF_STATUS_STALL => -errno::EPIPE,
        USBIF_STATUS_IOERROR => -errno::EPROTO,
        USBIF_STATUS_BABBLE => -errno::EOVERFLOW,
        _ => -errno::ESHUTDOWN,
    }
}

/// An URB to submit: what Linux's `struct urb` carries over PVUSB.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Urb {
    /// Port, device address, endpoint, direction and type (`unlink` must be false: unlinks go
    /// through [`Frontend::unlink`](crate::Frontend::unlink)).
    pub pipe: Pipe,
    /// `URB_SHORT_NOT_OK`, sent as `USBIF_SHORT_NOT_OK` (the only flag xen-hcd passes on).
    pub short_not_ok: bool,
    /// Control only: the SETUP packet, copied verbatim.
    pub setup: [u8; 8],
    /// Interrupt and ISO: Linux `urb->interval`.
    pub interval: u16,
    /// ISO: the requested start frame.
    pub start_frame: u16,
    /// ISO: the packets; their descriptor array is granted after the buffer segments.
    pub iso_packets: Vec<IsoPacket>,
    /// The transfer buffer: for OUT its bytes are sent; for IN only its length counts.
    pub buffer: Vec<u8>,
    /// Where the buffer starts in its first page (0..4096): as with a Linux buffer that is not
    /// page aligned, the first segment then has this offset and the buffer may touch one page
    /// more.
    pub page_offset: u16,
    /// IN: give the URB back without its data (only `actual_length`). Linux's xen-hcd copies
    /// nothing, the data stays in the URB's own pages; this frontend copies it out of its
    /// granted pages into [`Completion::data`], which a caller that does not look at the
    /// data (a throughput benchmark) can spare.
    pub discard_in_data: bool,
}

impl Urb {
    /// An URB on `pipe` with `buffer`, page aligned, no flags.
    pub fn new(pipe: Pipe, buffer: Vec<u8>) -> Urb {
        Urb {
            pipe,
            short_not_ok: false,
            setup: [0; 8],
            interval: 0,
            start_frame: 0,
            iso_packets: Vec::new(),
            buffer,
            page_offset: 0,
            discard_in_data: false,
        }
    }

    /// A control transfer to `device` on `port`, endpoint 0, its direction taken from the
    /// SETUP packet's bmRequestType; an IN buffer of `wLength` zero bytes, or `data` for OUT.
    pub fn control(port: u8, device: u8, setup: [u8; 8], data: Vec<u8>) -> Urb {
        let direction = if setup[0] & 0x80 != 0 {
            Direction::In
        } else {
            Direction::Out
        };
        let buffer = match direction {
            Direction::In => alloc::vec![0; usize::from(u16::from_le_bytes([setup[6], setup[7]]))],
            Direction::Out => data,
        };
        let pipe = Pipe {
            port,
            unlink: false,
            direction,
            device,
            endpoint: 0,
            transfer_type: TransferType::Control,
        };
        Urb {
            setup,
            ..Urb::new(pipe, buffer)
        }
    }
}

/// An URB's identity from submission to completion.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct UrbHandle(pub(crate) u64);

impl core::fmt::Display for UrbHandle {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A finished URB, as Linux gives it back (`usb_hcd_giveback_urb`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Completion {
    /// Which URB.
    pub handle: UrbHandle,
    /// 0 or a negative Linux errno: the backend's status through [`translate_status`],
    /// `-ECONNRESET` after an unlink, `-ESHUTDOWN` when the controller went away.
    pub status: i32,
    /// Bytes transferred, clamped to [0, buffer length] as xen-hcd does.
    pub actual_length: u32,
    /// IN: the first `actual_length` bytes of the buffer; OUT: empty.
    pub data: Vec<u8>,
    /// ISO: the start frame the backend reported.
    pub start_frame: u16,
    /// ISO: the error count the backend reported.
    pub error_count: i32,
    /// ISO: the packet descriptors as the backend left them (actual_length and status).
    pub iso_packets: Vec<UsbIsoPacketDescriptor>,
}

impl Completion {
    pub(crate) fn without_data(handle: UrbHandle, status: i32) -> Completion {
        Completion {
            handle,
            status,
            actual_length: 0,
            data: Vec::new(),
            start_frame: 0,
            error_count: 0,
            iso_packets: Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_translate_as_xen_hcd_does() {
        assert_eq!(translate_status(USBIF_STATUS_OK), 0);
        assert_eq!(translate_status(USBIF_STATUS_NODEV), -errno::ENODEV);
        assert_eq!(translate_status(USBIF_STATUS_INVAL), -errno::EINVAL);
        assert_eq!(translate_status(USBIF_STATUS_STALL), -errno::EPIPE);
        assert_eq!(translate_status(USBIF_STATUS_IOERROR), -errno::EPROTO);
        assert_eq!(translate_status(USBIF_STATUS_BABBLE), -errno::EOVERFLOW);
        assert_eq!(translate_status(USBIF_STATUS_SHUTDOWN), -errno::ESHUTDOWN);
        for other in [-121, -62, -104, 1, i32::MIN] {
            assert_eq!(translate_status(other), -errno::ESHUTDOWN);
        }
    }

    #[test]
    fn control_urbs_take_direction_and_length_from_setup() {
        let urb = Urb::control(2, 0, [0x80, 6, 0, 1, 0, 0, 18, 0], Vec::new());
        assert_eq!(urb.pipe.direction, Direction::In);
        assert_eq!(urb.buffer.len(), 18);
        let urb = Urb::control(2, 5, [0, 9, 1, 0, 0, 0, 0, 0], Vec::new());
        assert_eq!(urb.pipe.direction, Direction::Out);
        assert!(urb.buffer.is_empty());
    }
}
