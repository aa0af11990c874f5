//! PVUSB requests, decoded: the typed pipe and the checked form of a URB request.
//!
//! A [`UsbifUrbRequest`] is what a frontend wrote into shared memory: an allegation. The only
//! way to a [`UrbRequest`] is [`UrbRequest::decode`], which checks every field the wire format
//! constrains (pipe bits, port range, flags, segment counts, offsets and lengths) once, so code
//! above it never re-checks and never sees an unchecked value.
//!
//! The device's xenstore nodes (the keys, the toolstack's and usbdom's own directories, the
//! bus ids and device selectors written there) are in `nodes.rs`.

use alloc::format;
use alloc::string::{String, ToString};

use heapless::Vec;
use usb::{Direction, TransferType};

use crate::abi::usbif::*;
use crate::abi::{DomId, GrantRef, PAGE_SIZE};
use crate::ring::{ring_size, ring_size_in};
use crate::xenbus::XenbusState;
use crate::xenstore::{Access, Perm, TxId, XenStore, XsError, XsTransport};

/// Bytes of one URB ring entry (the union of request and response).
pub const URB_RING_ENTRY_SIZE: usize = max(
    core::mem::size_of::<UsbifUrbRequest>(),
    core::mem::size_of::<UsbifUrbResponse>(),
);
/// Bytes of one conn ring entry.
pub const CONN_RING_ENTRY_SIZE: usize = max(
    core::mem::size_of::<UsbifConnRequest>(),
    core::mem::size_of::<UsbifConnResponse>(),
);
/// Entries of the URB ring (16): also the most URBs a frontend can have in flight.
pub const URB_RING_SIZE: u32 = ring_size(URB_RING_ENTRY_SIZE);
/// Entries of the largest multi-page URB ring, [`MAX_RING_PAGE_ORDER`] pages (256).
pub const MAX_URB_RING_SIZE: u32 =
    ring_size_in(PAGE_SIZE << MAX_RING_PAGE_ORDER, URB_RING_ENTRY_SIZE);
/// Entries of the conn ring (512).
pub const CONN_RING_SIZE: u32 = ring_size(CONN_RING_ENTRY_SIZE);

const fn max(a: usize, b: usize) -> usize {
    if a > b {
        a
    } else {
        b
    }
}

/// Offset of the union `u` in a URB request.
const U: usize = core::mem::offset_of!(UsbifUrbRequest, u);
/// `u.isoc.interval` / `u.intr.interval`, relative to `u`.
const U_INTERVAL: usize = 0;
/// `u.isoc.start_frame`.
const U_ISOC_START_FRAME: usize = 2;
/// `u.isoc.number_of_packets`.
const U_ISOC_NUMBER_OF_PACKETS: usize = 4;
/// `u.isoc.nr_frame_desc_segs`.
const U_ISOC_NR_FRAME_DESC_SEGS: usize = 6;
/// `u.unlink.unlink_id`.
const U_UNLINK_ID: usize = 0;

/// The members of the `u` union we read, as (C offset expression, our offset): checked
/// against Xen's headers by `abi_matches_xen_headers`.
pub const URB_UNION_MEMBERS: &[(&str, usize)] = &[
    ("offsetof(struct usbif_urb_request, u.ctrl)", U),
    (
        "offsetof(struct usbif_urb_request, u.isoc.interval)",
        U + U_INTERVAL,
    ),
    (
        "offsetof(struct usbif_urb_request, u.isoc.start_frame)",
        U + U_ISOC_START_FRAME,
    ),
    (
        "offsetof(struct usbif_urb_request, u.isoc.number_of_packets)",
        U + U_ISOC_NUMBER_OF_PACKETS,
    ),
    (
        "offsetof(struct usbif_urb_request, u.isoc.nr_frame_desc_segs)",
        U + U_ISOC_NR_FRAME_DESC_SEGS,
    ),
    (
        "offsetof(struct usbif_urb_request, u.intr.interval)",
        U + U_INTERVAL,
    ),
    (
        "offsetof(struct usbif_urb_request, u.unlink.unlink_id)",
        U + U_UNLINK_ID,
    ),
];

/// Pipe bits the protocol leaves undefined; a frontend must keep them zero.
const PIPE_RESERVED: u32 = !(USBIF_PIPE_PORT_MASK
    | USBIF_PIPE_UNLINK
    | USBIF_PIPE_DIR
    | (USBIF_PIPE_DEV_MASK << USBIF_PIPE_DEV_SHIFT)
    | (USBIF_PIPE_EP_MASK << USBIF_PIPE_EP_SHIFT)
    | (USBIF_PIPE_TYPE_MASK << USBIF_PIPE_TYPE_SHIFT));

/// A decoded `pipe` field.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pipe {
    /// Virtual root-hub port, 1..=31.
    pub port: u8,
    /// The request cancels an earlier one.
    pub unlink: bool,
    /// Data direction.
    pub direction: Direction,
    /// Device address as the guest assigned it (0 before SET_ADDRESS).
    pub device: u8,
    /// Endpoint number, 0..=15.
    pub endpoint: u8,
    /// Transfer type.
    pub transfer_type: TransferType,
}

impl Pipe {
    /// Decodes a pipe value, refusing reserved bits and port 0.
    pub fn decode(raw: u32) -> Result<Pipe, RequestError> {
        if raw & PIPE_RESERVED != 0 {
            return Err(RequestError::PipeReservedBits(raw));
        }
        let port = (raw & USBIF_PIPE_PORT_MASK) as u8;
        if port == 0 {
            return Err(RequestError::PortOutOfRange(0));
        }
        let transfer_type = match (raw >> USBIF_PIPE_TYPE_SHIFT) & USBIF_PIPE_TYPE_MASK {
            USBIF_PIPE_TYPE_ISOC => TransferType::Isochronous,
            USBIF_PIPE_TYPE_INT => TransferType::Interrupt,
            USBIF_PIPE_TYPE_CTRL => TransferType::Control,
            _ => TransferType::Bulk,
        };
        Ok(Pipe {
            port,
            unlink: raw & USBIF_PIPE_UNLINK != 0,
            direction: if raw & USBIF_PIPE_DIR != 0 {
                Direction::In
            } else {
                Direction::Out
            },
            device: ((raw >> USBIF_PIPE_DEV_SHIFT) & USBIF_PIPE_DEV_MASK) as u8,
            endpoint: ((raw >> USBIF_PIPE_EP_SHIFT) & USBIF_PIPE_EP_MASK) as u8,
            transfer_type,
        })
    }

    /// Encodes the pipe as the wire carries it.
    pub fn encode(&self) -> u32 {
        let ty = match self.transfer_type {
            TransferType::Isochronous => USBIF_PIPE_TYPE_ISOC,
            TransferType::Interrupt => USBIF_PIPE_TYPE_INT,
            TransferType::Control => USBIF_PIPE_TYPE_CTRL,
            TransferType::Bulk => USBIF_PIPE_TYPE_BULK,
        };
        u32::from(self.port) & USBIF_PIPE_PORT_MASK
            | if self.unlink { USBIF_PIPE_UNLINK } else { 0 }
            | if self.direction == Direction::In {
                USBIF_PIPE_DIR
            } else {
                0
            }
            | (u32::from(self.device) & USBIF_PIPE_DEV_MASK) << USBIF_PIPE_DEV_SHIFT
            | (u32::from(self.endpoint) & USBIF_PIPE_EP_MASK) << USBIF_PIPE_EP_SHIFT
            | ty << USBIF_PIPE_TYPE_SHIFT
    }
}

/// One checked buffer segment of a request ([`UsbifRequestSegment`] as it arrived): `length`
/// bytes at `offset` in the guest page granted by `gref`. The backend turns it into its own
/// frame or a mapping of the grant (`usbback::host::PageSegment`), which the xHCI adapter
/// turns into a bus address (`xhci_driver::DmaSegment`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RequestSegment {
    /// The frontend's grant of the page.
    pub gref: GrantRef,
    /// Offset within the page.
    pub offset: u16,
    /// Bytes in this page, at least 1, and `offset + length <= 4096`.
    pub length: u16,
}

/// What a submit request does, by transfer type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transfer {
    /// A control transfer with its 8-byte SETUP packet.
    Control {
        /// bmRequestType, bRequest, wValue, wIndex, wLength (little-endian).
        setup: [u8; 8],
    },
    /// An interrupt transfer.
    Interrupt {
        /// Linux `urb->interval` (frames for FS/LS, microframes for HS).
        interval: u16,
    },
    /// A bulk transfer.
    Bulk,
    /// An isochronous transfer.
    Isochronous {
        /// Linux `urb->interval`.
        interval: u16,
        /// Requested start frame.
        start_frame: u16,
        /// Packets in the transfer, at least 1.
        number_of_packets: u16,
    },
}

/// A checked URB submission.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Submit {
    /// The frontend's request id, echoed in the response.
    pub id: u16,
    /// The decoded pipe (never an unlink).
    pub pipe: Pipe,
    /// `USBIF_SHORT_NOT_OK`: a short IN transfer is an error.
    pub short_not_ok: bool,
    /// Total data bytes: the sum of the buffer segments' lengths, up to 64 KiB for a stock
    /// request (the wire's u16 `buffer_length` holds it modulo 2^16) and up to
    /// [`MAX_INDIRECT_SEGMENTS`] pages for an indirect one (its `u` holds it whole).
    pub buffer_length: u32,
    /// Transfer-type specific fields.
    pub transfer: Transfer,
    /// The data buffer, contiguous: only the first segment may start inside its page and only
    /// the last may end inside its page. Empty for an indirect request until
    /// [`Submit::resolve_indirect`] has read its segments.
    pub buffer: SegList<RequestSegment>,
    /// An indirect request ([`USBIF_F_INDIRECT`]): the pages that list its data segments.
    pub indirect: Option<IndirectPages>,
    /// ISO only: the pages of the frontend's `usb_iso_packet_descriptor` array.
    pub iso_descriptors: Vec<RequestSegment, USBIF_MAX_SEGMENTS_PER_REQUEST>,
}

/// A checked request from the URB ring.
// Not boxed: a request lives briefly on the stack, and a box would cost an allocation per URB.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum UrbRequest {
    /// Start a transfer.
    Submit(Submit),
    /// Cancel the in-flight request `unlink_id`.
    Unlink {
        /// This request's own id (it gets its own response).
        id: u16,
        /// The port of the request to cancel.
        port: u8,
        /// Id of the request to cancel.
        unlink_id: u16,
    },
}

/// Why a URB request was refused. Each names the offending value for the log.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RequestError {
    /// The pipe sets bits the protocol does not define.
    PipeReservedBits(u32),
    /// The port is 0 or above the controller's port count.
    PortOutOfRange(u8),
    /// `transfer_flags` has bits other than `USBIF_SHORT_NOT_OK`.
    UnknownTransferFlags(u16),
    /// More segments than a request can carry.
    TooManySegments(usize),
    /// `buffer_length` is not the sum of the segment lengths.
    LengthMismatch {
        /// `buffer_length` as sent (an indirect request's whole length).
        buffer_length: u32,
        /// The sum of the segment lengths.
        segments_total: usize,
    },
    /// A segment is empty or runs past the end of its page.
    BadSegment {
        /// Index in `seg[]`.
        index: usize,
        /// Its offset.
        offset: u16,
        /// Its length.
        length: u16,
    },
    /// The buffer segments are not one contiguous buffer.
    NotContiguous(usize),
    /// An indirect request that is not bulk, or whose pages or `u` break the form
    /// (`docs/pvusb-features.md`).
    BadIndirect,
    /// An isochronous request with no packets, or descriptor pages too small for them.
    BadIsoDescriptors {
        /// `number_of_packets` as sent.
        number_of_packets: u16,
        /// Bytes the descriptor segments cover.
        descriptor_bytes: usize,
    },
}

impl core::fmt::Display for RequestError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match *self {
            RequestError::PipeReservedBits(p) => write!(f, "reason=pipe_reserved_bits pipe={p:#x}"),
            RequestError::PortOutOfRange(p) => write!(f, "reason=port_out_of_range port={p}"),
            RequestError::UnknownTransferFlags(x) => {
                write!(f, "reason=unknown_transfer_flags flags={x:#x}")
            }
            RequestError::TooManySegments(n) => write!(f, "reason=too_many_segments segs={n}"),
            RequestError::LengthMismatch { buffer_length, segments_total } => write!(
                f,
                "reason=length_mismatch buffer_length={buffer_length} segments_total={segments_total}"
            ),
            RequestError::BadSegment { index, offset, length } => write!(
                f,
                "reason=bad_segment index={index} offset={offset} length={length}"
            ),
            RequestError::NotContiguous(i) => write!(f, "reason=not_contiguous index={i}"),
            RequestError::BadIndirect => write!(f, "reason=bad_indirect"),
            RequestError::BadIsoDescriptors { number_of_packets, descriptor_bytes } => write!(
                f,
                "reason=bad_iso_descriptors packets={number_of_packets} bytes={descriptor_bytes}"
            ),
        }
    }
}

/// `struct usb_iso_packet_descriptor` from Linux `include/linux/usb.h`: the array an ISO
/// request's descriptor segments grant. Not part of Xen's headers (xen-hcd grants Linux's own
/// array), so its layout is pinned here by `const` assertions instead.
#[repr(C)]
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    zerocopy::FromBytes,
    zerocopy::IntoBytes,
    zerocopy::Immutable,
    zerocopy::KnownLayout,
)]
pub struct UsbIsoPacketDescriptor {
    /// Offset of the packet in the transfer buffer.
    pub offset: u32,
    /// Expected length.
    pub length: u32,
    /// Bytes transferred (written by the backend).
    pub actual_length: u32,
    /// Linux errno of the packet (written by the backend).
    pub status: i32,
}

const _: () = {
    assert!(core::mem::size_of::<UsbIsoPacketDescriptor>() == 16);
    assert!(core::mem::offset_of!(UsbIsoPacketDescriptor, actual_length) == 8);
    assert!(core::mem::offset_of!(UsbIsoPacketDescriptor, status) == 12);
};

fn u16_at(u: &[u8; 8], off: usize) -> u16 {
    u16::from_le_bytes([u[off], u[off + 1]])
}

fn check_segment(index: usize, s: &UsbifRequestSegment) -> Result<RequestSegment, RequestError> {
    let end = usize::from(s.offset) + usize::from(s.length);
    if s.length == 0 || end > PAGE_SIZE {
        return Err(RequestError::BadSegment {
            index,
            offset: s.offset,
            length: s.length,
        });
    }
    Ok(RequestSegment {
        gref: s.gref,
        offset: s.offset,
        length: s.length,
    })
}

impl UrbRequest {
    /// Checks a request copied out of the ring against the wire rules and the controller's
    /// port count (`num_ports`, 1..=31).
    pub fn decode(raw: &UsbifUrbRequest, num_ports: u8) -> Result<UrbRequest, RequestError> {
        let pipe = Pipe::decode(raw.pipe)?;
        if pipe.port > num_ports {
            return Err(RequestError::PortOutOfRange(pipe.port));
        }
        if pipe.unlink {
            // Linux reuses the shadow request of the id, so every other field is stale: read
            // only the id to cancel.
            return Ok(UrbRequest::Unlink {
                id: raw.id,
                port: pipe.port,
                unlink_id: u16_at(&raw.u, U_UNLINK_ID),
            });
        }
        if raw.transfer_flags & !(USBIF_SHORT_NOT_OK | USBIF_F_INDIRECT) != 0 {
            return Err(RequestError::UnknownTransferFlags(raw.transfer_flags));
        }
        if raw.transfer_flags & USBIF_F_INDIRECT != 0 {
            return decode_indirect(raw, pipe);
        }
        let nr_buffer = usize::from(raw.nr_buffer_segs);
        let (transfer, nr_desc) = match pipe.transfer_type {
            TransferType::Control => (Transfer::Control { setup: raw.u }, 0),
            TransferType::Bulk => (Transfer::Bulk, 0),
            TransferType::Interrupt => (
                Transfer::Interrupt {
                    interval: u16_at(&raw.u, U_INTERVAL),
                },
                0,
            ),
            TransferType::Isochronous => (
                Transfer::Isochronous {
                    interval: u16_at(&raw.u, U_INTERVAL),
                    start_frame: u16_at(&raw.u, U_ISOC_START_FRAME),
                    number_of_packets: u16_at(&raw.u, U_ISOC_NUMBER_OF_PACKETS),
                },
                usize::from(u16_at(&raw.u, U_ISOC_NR_FRAME_DESC_SEGS)),
            ),
        };
        if nr_buffer + nr_desc > USBIF_MAX_SEGMENTS_PER_REQUEST {
            return Err(RequestError::TooManySegments(nr_buffer + nr_desc));
        }

        let mut buffer = SegList::new();
        for (i, s) in raw.seg[..nr_buffer].iter().enumerate() {
            buffer.push(check_data_segment(i, nr_buffer, s)?);
        }
        let total: usize = buffer.iter().map(|s| usize::from(s.length)).sum();
        // Linux's xen-hcd stores the URB's length in this u16 as it is, so a 64 KiB URB
        // (16 full pages, which usb-storage sends) arrives with buffer_length 0: the segments
        // are the length, and buffer_length must be their sum in 16 bits.
        if total as u16 != raw.buffer_length {
            return Err(RequestError::LengthMismatch {
                buffer_length: u32::from(raw.buffer_length),
                segments_total: total,
            });
        }

        let mut iso_descriptors = Vec::new();
        for (i, s) in raw.seg[nr_buffer..nr_buffer + nr_desc].iter().enumerate() {
            let _ = iso_descriptors.push(check_segment(nr_buffer + i, s)?);
        }
        if let Transfer::Isochronous {
            number_of_packets, ..
        } = transfer
        {
            let descriptor_bytes: usize =
                iso_descriptors.iter().map(|s| usize::from(s.length)).sum();
            let needed =
                usize::from(number_of_packets) * core::mem::size_of::<UsbIsoPacketDescriptor>();
            if number_of_packets == 0 || descriptor_bytes < needed {
                return Err(RequestError::BadIsoDescriptors {
                    number_of_packets,
                    descriptor_bytes,
                });
            }
        }

        Ok(UrbRequest::Submit(Submit {
            id: raw.id,
            pipe,
            short_not_ok: raw.transfer_flags & USBIF_SHORT_NOT_OK != 0,
            buffer_length: total as u32,
            transfer,
            buffer,
            indirect: None,
            iso_descriptors,
        }))
    }
}

/// Checks data segment `i` of `n`: a segment, and the buffer contiguous around it (only the
/// first may start inside its page, only the last may end inside its page).
fn check_data_segment(
    i: usize,
    n: usize,
    s: &UsbifRequestSegment,
) -> Result<RequestSegment, RequestError> {
    let seg = check_segment(i, s)?;
    let starts_page = seg.offset == 0;
    let ends_page = usize::from(seg.offset) + usize::from(seg.length) == PAGE_SIZE;
    if (i > 0 && !starts_page) || (i + 1 < n && !ends_page) {
        return Err(RequestError::NotContiguous(i));
    }
    Ok(seg)
}

mod indirect;
mod nodes;
mod seglist;
pub use indirect::*;
pub use nodes::*;
pub use seglist::SegList;

#[cfg(test)]
mod tests {
    use super::*;
    use zerocopy::FromZeros;

    #[test]
    fn device_selectors_name_a_place_or_a_device() {
        let ids = |v, p, s: Option<&str>| DeviceSelector::Ids {
            vendor_id: v,
            product_id: p,
            serial: s.map(Into::into),
        };
        for (text, want) in [
            ("1-2", Some(DeviceSelector::BusId("1-2".into()))),
            ("2-4.3", Some(DeviceSelector::BusId("2-4.3".into()))),
            ("0627:0001", Some(ids(0x0627, 1, None))),
            (
                "46F4:0001:SN-42_x.y",
                Some(ids(0x46f4, 1, Some("SN-42_x.y"))),
            ),
            ("627:0001", None),
            ("0627:00011", None),
            ("0627:0001:", None),
            ("0627:0001:a b", None),
            ("0627:0001:a:b", None),
            ("gggg:0001", None),
            ("1-0", None),
            ("", None),
        ] {
            assert_eq!(DeviceSelector::parse(text), want, "{text:?}");
        }
        let long = alloc::format!("0627:0001:{}", "x".repeat(MAX_SERIAL_LEN + 1));
        assert_eq!(DeviceSelector::parse(&long), None);
        let s = ids(0x0627, 1, Some("A1"));
        assert_eq!(s.to_string(), "0627:0001:A1");
        assert!(s.matches("3-1", 0x0627, 1, Some("A1")));
        assert!(!s.matches("3-1", 0x0627, 1, Some("A2")));
        assert!(!s.matches("3-1", 0x0627, 1, None));
        assert!(ids(0x0627, 1, None).matches("1-9", 0x0627, 1, None));
        assert!(!ids(0x0627, 1, None).matches("1-9", 0x0627, 2, None));
        assert!(DeviceSelector::BusId("1-9".into()).matches("1-9", 0, 0, None));
    }

    fn pipe(port: u8, ty: TransferType, dir: Direction) -> u32 {
        Pipe {
            port,
            unlink: false,
            direction: dir,
            device: 3,
            endpoint: 2,
            transfer_type: ty,
        }
        .encode()
    }

    fn request(pipe: u32, segs: &[(u32, u16, u16)]) -> UsbifUrbRequest {
        let mut r = UsbifUrbRequest::new_zeroed();
        r.id = 5;
        r.pipe = pipe;
        r.nr_buffer_segs = segs.len() as u16;
        // As xen-hcd stores it: the length in 16 bits.
        r.buffer_length = segs.iter().map(|s| u32::from(s.2)).sum::<u32>() as u16;
        for (i, &(gref, offset, length)) in segs.iter().enumerate() {
            r.seg[i] = UsbifRequestSegment {
                gref: GrantRef(gref),
                offset,
                length,
            };
        }
        r
    }

    #[test]
    fn ring_sizes_match_the_protocol() {
        assert_eq!(URB_RING_ENTRY_SIZE, 148);
        assert_eq!(URB_RING_SIZE, 16);
        assert_eq!(MAX_URB_RING_SIZE, 256);
        assert_eq!(CONN_RING_SIZE, 512);
    }

    #[test]
    fn pipe_round_trips_and_decodes_every_field() {
        let raw = pipe(7, TransferType::Bulk, Direction::In);
        let p = Pipe::decode(raw).unwrap();
        assert_eq!(
            (
                p.port,
                p.device,
                p.endpoint,
                p.direction,
                p.transfer_type,
                p.unlink
            ),
            (7, 3, 2, Direction::In, TransferType::Bulk, false)
        );
        assert_eq!(p.encode(), raw);
        assert_eq!(raw, 7 | 0x80 | 3 << 8 | 2 << 15 | 3 << 30);
    }

    #[test]
    fn pipe_refuses_reserved_bits_and_port_zero() {
        assert_eq!(
            Pipe::decode(0x40 | 1),
            Err(RequestError::PipeReservedBits(0x41))
        );
        assert_eq!(
            Pipe::decode(1 << 20 | 1),
            Err(RequestError::PipeReservedBits(1 << 20 | 1))
        );
        assert_eq!(Pipe::decode(0), Err(RequestError::PortOutOfRange(0)));
    }

    #[test]
    fn decode_accepts_a_linux_style_buffer() {
        let raw = request(
            pipe(1, TransferType::Bulk, Direction::Out),
            &[(10, 100, 3996), (11, 0, 4096), (12, 0, 5)],
        );
        let UrbRequest::Submit(s) = UrbRequest::decode(&raw, 8).unwrap() else {
            panic!()
        };
        assert_eq!(s.buffer.len(), 3);
        assert_eq!(s.buffer_length, 3996 + 4096 + 5);
        assert_eq!(s.transfer, Transfer::Bulk);
    }

    #[test]
    fn decode_refuses_what_linux_never_sends() {
        let p = pipe(1, TransferType::Bulk, Direction::Out);
        let cases: &[(UsbifUrbRequest, RequestError)] = &[
            (
                request(pipe(9, TransferType::Bulk, Direction::In), &[]),
                RequestError::PortOutOfRange(9),
            ),
            (
                request(p, &[(1, 4000, 200)]),
                RequestError::BadSegment {
                    index: 0,
                    offset: 4000,
                    length: 200,
                },
            ),
            (
                request(p, &[(1, 0, 0)]),
                RequestError::BadSegment {
                    index: 0,
                    offset: 0,
                    length: 0,
                },
            ),
            (
                request(p, &[(1, 0, 100), (2, 0, 100)]),
                RequestError::NotContiguous(0),
            ),
            (
                request(p, &[(1, 0, 4096), (2, 8, 100)]),
                RequestError::NotContiguous(1),
            ),
        ];
        for (raw, err) in cases {
            assert_eq!(UrbRequest::decode(raw, 8), Err(*err));
        }
        let mut r = request(p, &[(1, 0, 10)]);
        r.buffer_length = 11;
        assert_eq!(
            UrbRequest::decode(&r, 8),
            Err(RequestError::LengthMismatch {
                buffer_length: 11,
                segments_total: 10
            })
        );
        // 64 KiB in 16 pages, as usb-storage sends through xen-hcd: buffer_length wraps to 0.
        let pages: [(u32, u16, u16); 16] = core::array::from_fn(|g| (g as u32, 0, 4096));
        let r = request(p, &pages);
        assert_eq!(r.buffer_length, 0);
        match UrbRequest::decode(&r, 8) {
            Ok(UrbRequest::Submit(s)) => assert_eq!(s.buffer_length, 65536),
            other => panic!("{other:?}"),
        }
        let mut r = request(p, &[]);
        r.nr_buffer_segs = 17;
        assert_eq!(
            UrbRequest::decode(&r, 8),
            Err(RequestError::TooManySegments(17))
        );
        let mut r = request(p, &[]);
        r.transfer_flags = 2;
        assert_eq!(
            UrbRequest::decode(&r, 8),
            Err(RequestError::UnknownTransferFlags(2))
        );
    }

    #[test]
    fn unlink_reads_only_the_id_to_cancel() {
        let mut r = request(
            pipe(2, TransferType::Bulk, Direction::In) | USBIF_PIPE_UNLINK,
            &[],
        );
        r.nr_buffer_segs = 200; // stale shadow data, as Linux leaves it
        r.u[0..2].copy_from_slice(&9u16.to_le_bytes());
        assert_eq!(
            UrbRequest::decode(&r, 8),
            Ok(UrbRequest::Unlink {
                id: 5,
                port: 2,
                unlink_id: 9
            })
        );
    }

    #[test]
    fn iso_needs_descriptor_pages_for_every_packet() {
        let mut r = request(
            pipe(1, TransferType::Isochronous, Direction::In),
            &[(1, 0, 192), (2, 0, 32)],
        );
        r.nr_buffer_segs = 1;
        r.buffer_length = 192;
        r.u = [1, 0, 0, 0, 2, 0, 1, 0]; // interval 1, 2 packets, 1 descriptor segment
        let UrbRequest::Submit(s) = UrbRequest::decode(&r, 8).unwrap() else {
            panic!()
        };
        assert_eq!(s.iso_descriptors.len(), 1);
        assert_eq!(
            s.transfer,
            Transfer::Isochronous {
                interval: 1,
                start_frame: 0,
                number_of_packets: 2
            }
        );
        r.u[4] = 3; // 3 packets need 48 bytes of descriptors
        assert_eq!(
            UrbRequest::decode(&r, 8),
            Err(RequestError::BadIsoDescriptors {
                number_of_packets: 3,
                descriptor_bytes: 32
            })
        );
        r.u[6] = 16; // 1 + 16 segments
        assert_eq!(
            UrbRequest::decode(&r, 8),
            Err(RequestError::TooManySegments(17))
        );
    }
}
