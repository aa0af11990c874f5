//! `public/io/usbif.h`: the PVUSB wire format. Typed decoding lives in [`crate::pvusb`].

use super::{xen_abi, GrantRef};

/// `USBIF_MAX_SEGMENTS_PER_REQUEST`: buffer plus ISO descriptor segments of one request.
pub const USBIF_MAX_SEGMENTS_PER_REQUEST: usize = 16;
/// `USBIF_MAX_PORTNR`: the highest virtual root-hub port number.
pub const USBIF_MAX_PORTNR: u32 = 31;
/// `USBIF_RING_SIZE`: bytes of each shared ring (one page).
pub const USBIF_RING_SIZE: usize = 4096;

/// `USBIF_PIPE_PORT_MASK`.
pub const USBIF_PIPE_PORT_MASK: u32 = 0x0000_001f;
/// `USBIF_PIPE_UNLINK`.
pub const USBIF_PIPE_UNLINK: u32 = 0x0000_0020;
/// `USBIF_PIPE_DIR` (set: IN).
pub const USBIF_PIPE_DIR: u32 = 0x0000_0080;
/// `USBIF_PIPE_DEV_MASK`.
pub const USBIF_PIPE_DEV_MASK: u32 = 0x0000_007f;
/// `USBIF_PIPE_DEV_SHIFT`.
pub const USBIF_PIPE_DEV_SHIFT: u32 = 8;
/// `USBIF_PIPE_EP_MASK`.
pub const USBIF_PIPE_EP_MASK: u32 = 0x0000_000f;
/// `USBIF_PIPE_EP_SHIFT`.
pub const USBIF_PIPE_EP_SHIFT: u32 = 15;
/// `USBIF_PIPE_TYPE_MASK`.
pub const USBIF_PIPE_TYPE_MASK: u32 = 0x0000_0003;
/// `USBIF_PIPE_TYPE_SHIFT`.
pub const USBIF_PIPE_TYPE_SHIFT: u32 = 30;
/// `USBIF_PIPE_TYPE_ISOC`.
pub const USBIF_PIPE_TYPE_ISOC: u32 = 0;
/// `USBIF_PIPE_TYPE_INT`.
pub const USBIF_PIPE_TYPE_INT: u32 = 1;
/// `USBIF_PIPE_TYPE_CTRL`.
pub const USBIF_PIPE_TYPE_CTRL: u32 = 2;
/// `USBIF_PIPE_TYPE_BULK`.
pub const USBIF_PIPE_TYPE_BULK: u32 = 3;

/// `USBIF_SHORT_NOT_OK`: the only transfer flag the protocol defines.
pub const USBIF_SHORT_NOT_OK: u16 = 0x0001;

/// `USBIF_STATUS_OK`.
pub const USBIF_STATUS_OK: i32 = 0;
/// `USBIF_STATUS_NODEV`.
pub const USBIF_STATUS_NODEV: i32 = -19;
/// `USBIF_STATUS_INVAL`.
pub const USBIF_STATUS_INVAL: i32 = -22;
/// `USBIF_STATUS_STALL`.
pub const USBIF_STATUS_STALL: i32 = -32;
/// `USBIF_STATUS_IOERROR`.
pub const USBIF_STATUS_IOERROR: i32 = -71;
/// `USBIF_STATUS_BABBLE`.
pub const USBIF_STATUS_BABBLE: i32 = -75;
/// `USBIF_STATUS_SHUTDOWN`.
pub const USBIF_STATUS_SHUTDOWN: i32 = -108;

/// `USBIF_SPEED_NONE`: the port is empty (unplug).
pub const USBIF_SPEED_NONE: u8 = 0;
/// `USBIF_SPEED_LOW`.
pub const USBIF_SPEED_LOW: u8 = 1;
/// `USBIF_SPEED_FULL`.
pub const USBIF_SPEED_FULL: u8 = 2;
/// `USBIF_SPEED_HIGH`.
pub const USBIF_SPEED_HIGH: u8 = 3;

xen_abi! {
    /// `struct usbif_request_segment`: one granted page of a request's buffer.
    pub struct UsbifRequestSegment = "struct usbif_request_segment" {
        pub gref: GrantRef = "gref",
        pub offset: u16 = "offset",
        pub length: u16 = "length",
    }

    /// `struct usbif_urb_request`, exactly as the frontend wrote it: untrusted.
    pub struct UsbifUrbRequest = "struct usbif_urb_request" {
        pub id: u16 = "id",
        pub nr_buffer_segs: u16 = "nr_buffer_segs",
        pub pipe: u32 = "pipe",
        pub transfer_flags: u16 = "transfer_flags",
        pub buffer_length: u16 = "buffer_length",
        /// The union `u`: setup packet, ISO, interrupt or unlink fields by pipe type.
        pub u: [u8; 8] = "u",
        pub seg: [UsbifRequestSegment; USBIF_MAX_SEGMENTS_PER_REQUEST] = "seg",
    }

    /// `struct usbif_urb_response`.
    pub struct UsbifUrbResponse = "struct usbif_urb_response" {
        pub id: u16 = "id",
        pub start_frame: u16 = "start_frame",
        pub status: i32 = "status",
        pub actual_length: i32 = "actual_length",
        pub error_count: i32 = "error_count",
    }

    /// `struct usbif_conn_request`: an empty slot the frontend lends for a port event.
    pub struct UsbifConnRequest = "struct usbif_conn_request" {
        pub id: u16 = "id",
    }

    /// `struct usbif_conn_response`: a port connect (speed 1..3) or disconnect (speed 0).
    pub struct UsbifConnResponse = "struct usbif_conn_response" {
        pub id: u16 = "id",
        pub portnum: u8 = "portnum",
        pub speed: u8 = "speed",
    }
}
