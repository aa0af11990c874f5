//! Indirect segments (`feature-max-indirect-segments`, `docs/pvusb-features.md`), after
//! blkif's: a bulk request whose data segments are listed in pages of their own, so one
//! request carries a whole `usb-storage` command (up to [`MAX_INDIRECT_SEGMENTS`] pages)
//! instead of one request per 16 pages. Decoding is in two steps: the ring entry
//! ([`super::UrbRequest::decode`]) names the indirect pages; once the backend has read them
//! (they are guest memory, read once into its own), [`Submit::resolve_indirect`] checks every
//! listed segment as a stock request's are checked.

use heapless::Vec;

use super::{check_data_segment, check_segment, Pipe, RequestError, Submit, Transfer};
use crate::abi::usbif::{UsbifRequestSegment, UsbifUrbRequest, USBIF_SHORT_NOT_OK};
use crate::abi::{GrantRef, PAGE_SIZE};
use usb::TransferType;

/// `transfer_flags` bit of an indirect request: `seg[]` names the pages that list the data
/// segments. Stock usbif defines only bit 0.
pub const USBIF_F_INDIRECT: u16 = 0x8000;

/// Data segments of one indirect request, at most: 1 MiB of pages, a SuperSpeed
/// `usb-storage` command's most (2048 sectors).
pub const MAX_INDIRECT_SEGMENTS: u16 = 256;

/// Bytes of one listed segment (`struct usbif_request_segment`).
pub const INDIRECT_ENTRY_SIZE: usize = core::mem::size_of::<UsbifRequestSegment>();

/// Listed segments per indirect page.
pub const SEGMENTS_PER_INDIRECT_PAGE: usize = PAGE_SIZE / INDIRECT_ENTRY_SIZE;

/// Indirect pages of one request, at most.
pub const MAX_INDIRECT_PAGES: usize =
    (MAX_INDIRECT_SEGMENTS as usize).div_ceil(SEGMENTS_PER_INDIRECT_PAGE);

/// Where an indirect request's data segments are listed: checked to be well formed, not yet
/// read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IndirectPages {
    /// The frontend's grants of the pages, in order; page `i` holds entries
    /// `i * SEGMENTS_PER_INDIRECT_PAGE ..`, from its offset 0.
    pub pages: Vec<GrantRef, MAX_INDIRECT_PAGES>,
    /// Data segments listed, 1..=[`MAX_INDIRECT_SEGMENTS`].
    pub count: u16,
}

impl IndirectPages {
    /// Bytes of entries in page `i`.
    pub fn page_bytes(&self, i: usize) -> usize {
        let before = i * SEGMENTS_PER_INDIRECT_PAGE;
        let here = usize::from(self.count)
            .saturating_sub(before)
            .min(SEGMENTS_PER_INDIRECT_PAGE);
        here * INDIRECT_ENTRY_SIZE
    }

    /// Bytes of entries in all its pages.
    pub fn entry_bytes(&self) -> usize {
        usize::from(self.count) * INDIRECT_ENTRY_SIZE
    }
}

/// Decodes a request with [`USBIF_F_INDIRECT`] (its pipe and flags checked already): bulk
/// only; `nr_buffer_segs` is the count of listed segments; `seg[..pages]` the indirect
/// pages, each from offset 0 with exactly its entries' bytes; `u` the whole length (u32) and
/// four zero bytes; `buffer_length` that length modulo 2^16.
pub(super) fn decode_indirect(
    raw: &UsbifUrbRequest,
    pipe: Pipe,
) -> Result<super::UrbRequest, RequestError> {
    if pipe.transfer_type != TransferType::Bulk {
        return Err(RequestError::BadIndirect);
    }
    let count = raw.nr_buffer_segs;
    if count == 0 || count > MAX_INDIRECT_SEGMENTS {
        return Err(RequestError::TooManySegments(usize::from(count)));
    }
    let u = &raw.u[..];
    let total = u32::from_le_bytes([u[0], u[1], u[2], u[3]]);
    if u[4..8] != [0; 4] {
        return Err(RequestError::BadIndirect);
    }
    if total as u16 != raw.buffer_length {
        return Err(RequestError::LengthMismatch {
            buffer_length: total,
            segments_total: usize::from(raw.buffer_length),
        });
    }
    let mut indirect = IndirectPages {
        pages: Vec::new(),
        count,
    };
    let pages = usize::from(count).div_ceil(SEGMENTS_PER_INDIRECT_PAGE);
    for (i, s) in raw.seg[..pages].iter().enumerate() {
        let page = check_segment(i, s)?;
        if page.offset != 0 || usize::from(page.length) != indirect.page_bytes(i) {
            return Err(RequestError::BadIndirect);
        }
        // Cannot fail: `pages` is at most MAX_INDIRECT_PAGES, as count is bounded.
        let _ = indirect.pages.push(page.gref);
    }
    Ok(super::UrbRequest::Submit(Submit {
        id: raw.id,
        pipe,
        short_not_ok: raw.transfer_flags & USBIF_SHORT_NOT_OK != 0,
        buffer_length: total,
        transfer: Transfer::Bulk,
        buffer: super::SegList::new(),
        indirect: Some(indirect),
        iso_descriptors: Vec::new(),
    }))
}

impl Submit {
    /// Fills an indirect request's `buffer` from `entries`, the bytes of its indirect pages'
    /// entries as the backend read them (in order, [`IndirectPages::entry_bytes`] of them):
    /// each listed segment is checked as a stock one is, and their sum must be the length
    /// the request gave. Nothing to do for a stock request.
    pub fn resolve_indirect(&mut self, entries: &[u8]) -> Result<(), RequestError> {
        let Some(indirect) = &self.indirect else {
            return Ok(());
        };
        let n = usize::from(indirect.count);
        if entries.len() != indirect.entry_bytes() {
            return Err(RequestError::BadIndirect);
        }
        let mut buffer = super::SegList::new();
        let mut total = 0usize;
        for (i, e) in entries.chunks_exact(INDIRECT_ENTRY_SIZE).enumerate() {
            let raw = UsbifRequestSegment {
                gref: GrantRef(u32::from_le_bytes([e[0], e[1], e[2], e[3]])),
                offset: u16::from_le_bytes([e[4], e[5]]),
                length: u16::from_le_bytes([e[6], e[7]]),
            };
            let seg = check_data_segment(i, n, &raw)?;
            total += usize::from(seg.length);
            buffer.push(seg);
        }
        if total != self.buffer_length as usize {
            return Err(RequestError::LengthMismatch {
                buffer_length: self.buffer_length,
                segments_total: total,
            });
        }
        self.buffer = buffer;
        Ok(())
    }
}

/// Writes the ring entry of an indirect bulk request (for frontends and tests): `count`
/// segments listed in `pages`, `total` bytes.
pub fn encode_indirect(req: &mut UsbifUrbRequest, pages: &[GrantRef], count: u16, total: u32) {
    req.transfer_flags |= USBIF_F_INDIRECT;
    req.nr_buffer_segs = count;
    req.buffer_length = total as u16;
    req.u = [0; 8];
    req.u[..4].copy_from_slice(&total.to_le_bytes());
    let listed = IndirectPages {
        pages: Vec::new(),
        count,
    };
    for (i, &gref) in pages.iter().enumerate().take(req.seg.len()) {
        req.seg[i] = UsbifRequestSegment {
            gref,
            offset: 0,
            length: listed.page_bytes(i) as u16,
        };
    }
}

#[cfg(test)]
mod tests {
    use super::super::{RequestSegment, UrbRequest};
    use super::*;
    use crate::abi::usbif::USBIF_MAX_SEGMENTS_PER_REQUEST;
    use usb::Direction;
    use zerocopy::FromZeros;

    fn bulk_in() -> u32 {
        Pipe {
            port: 1,
            unlink: false,
            direction: Direction::In,
            device: 3,
            endpoint: 1,
            transfer_type: TransferType::Bulk,
        }
        .encode()
    }

    /// Entries listing `n` full pages with grefs 100.., the last `last` bytes long.
    fn entries(n: usize, last: u16) -> alloc::vec::Vec<u8> {
        (0..n)
            .flat_map(|i| {
                let len = if i + 1 == n { last } else { 4096 };
                let mut e = [0u8; 8];
                e[..4].copy_from_slice(&(100 + i as u32).to_le_bytes());
                e[6..].copy_from_slice(&len.to_le_bytes());
                e
            })
            .collect()
    }

    fn request(count: u16, total: u32) -> UsbifUrbRequest {
        let mut r = UsbifUrbRequest::new_zeroed();
        r.id = 9;
        r.pipe = bulk_in();
        encode_indirect(&mut r, &[GrantRef(7)], count, total);
        r
    }

    fn decode(r: &UsbifUrbRequest) -> Result<Submit, RequestError> {
        match UrbRequest::decode(r, 4)? {
            UrbRequest::Submit(s) => Ok(s),
            other => panic!("not a submit: {other:?}"),
        }
    }

    #[test]
    fn a_megabyte_in_one_request_is_read_from_its_indirect_page() {
        let total = 255 * 4096 + 512;
        let mut s = decode(&request(256, total)).unwrap();
        let pages = s.indirect.clone().unwrap();
        assert_eq!(pages.pages.as_slice(), [GrantRef(7)]);
        assert_eq!(pages.entry_bytes(), 2048);
        assert!(
            s.buffer.is_empty(),
            "nothing listed before the page is read"
        );
        s.resolve_indirect(&entries(256, 512)).unwrap();
        assert_eq!(s.buffer.len(), 256);
        assert_eq!(s.buffer_length, total);
        assert_eq!(
            s.buffer[255],
            RequestSegment {
                gref: GrantRef(355),
                offset: 0,
                length: 512
            }
        );
    }

    #[test]
    fn every_field_of_the_form_is_checked() {
        // Past the most segments, or none.
        for count in [0, MAX_INDIRECT_SEGMENTS + 1] {
            assert_eq!(
                decode(&request(count, 4096)),
                Err(RequestError::TooManySegments(usize::from(count)))
            );
        }
        // Only bulk.
        let mut r = request(20, 20 * 4096);
        r.pipe = Pipe {
            transfer_type: TransferType::Interrupt,
            ..Pipe::decode(r.pipe).unwrap()
        }
        .encode();
        assert_eq!(decode(&r), Err(RequestError::BadIndirect));
        // The page's length says its entries, from offset 0.
        let mut r = request(20, 20 * 4096);
        r.seg[0].length = 8 * 21;
        assert_eq!(decode(&r), Err(RequestError::BadIndirect));
        let mut r = request(20, 20 * 4096);
        r.seg[0].offset = 8;
        assert_eq!(decode(&r), Err(RequestError::BadIndirect));
        // The union's upper half is zero; the 16-bit length agrees with the whole one.
        let mut r = request(20, 20 * 4096);
        r.u[7] = 1;
        assert_eq!(decode(&r), Err(RequestError::BadIndirect));
        let mut r = request(20, 20 * 4096);
        r.buffer_length ^= 1;
        assert!(matches!(
            decode(&r),
            Err(RequestError::LengthMismatch { .. })
        ));
        assert!(USBIF_MAX_SEGMENTS_PER_REQUEST < usize::from(MAX_INDIRECT_SEGMENTS));
    }

    #[test]
    fn listed_segments_are_checked_like_direct_ones() {
        let resolve = |count: usize, total: u32, e: &[u8]| {
            let mut s = decode(&request(count as u16, total)).unwrap();
            s.resolve_indirect(e).map(|()| s.buffer.len())
        };
        assert_eq!(resolve(20, 20 * 4096, &entries(20, 4096)), Ok(20));
        // Fewer bytes than the entries.
        assert_eq!(
            resolve(20, 20 * 4096, &entries(19, 4096)),
            Err(RequestError::BadIndirect)
        );
        // The sum is not the length the request gave.
        assert!(matches!(
            resolve(20, 20 * 4096, &entries(20, 100)),
            Err(RequestError::LengthMismatch { .. })
        ));
        // A hole in the middle: a page that does not end at its end.
        let mut e = entries(20, 4096);
        e[5 * 8 + 6..5 * 8 + 8].copy_from_slice(&100u16.to_le_bytes());
        assert_eq!(
            resolve(20, 19 * 4096 + 100, &e),
            Err(RequestError::NotContiguous(5))
        );
        // Empty, or past its page.
        let mut e = entries(20, 4096);
        e[3 * 8 + 4..3 * 8 + 6].copy_from_slice(&1u16.to_le_bytes());
        assert!(matches!(
            resolve(20, 20 * 4096, &e),
            Err(RequestError::BadSegment { index: 3, .. })
        ));
    }
}
