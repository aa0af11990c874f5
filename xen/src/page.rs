//! Access to a page shared with another domain (or with Xen).
//!
//! Ring and protocol code reads and writes shared memory only through [`SharedPage`], so the
//! same code runs on a grant-mapped page in the unikernel (whose implementation, with its raw
//! pointer, lives in `driver-domain`) and on [`LocalPage`], plain memory, in host tests and in
//! `xen::sim`. The other side may change the page at any time: callers copy what they read
//! before they check it.

use alloc::boxed::Box;
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicU32, Ordering};

use crate::abi::PAGE_SIZE;

/// A 4 KiB page that another party may read and write concurrently.
///
/// Offsets are in bytes from the page start and are chosen by our own code (ring slots are
/// masked indices), never taken from the other side. Each access is a single load or store of
/// its width; ordering between accesses is the caller's job (`core::sync::atomic::fence`).
pub trait SharedPage {
    /// Loads the 32-bit little-endian word at `offset` (4-byte aligned) in one access.
    fn load_u32(&self, offset: usize) -> u32;
    /// Stores a 32-bit word at `offset` (4-byte aligned) in one access.
    fn store_u32(&self, offset: usize, value: u32);
    /// Copies `buf.len()` bytes starting at `offset` out of the page.
    fn read(&self, offset: usize, buf: &mut [u8]);
    /// Copies `data` into the page starting at `offset`.
    fn write(&self, offset: usize, data: &[u8]);
    /// Copies `len` bytes at `src_offset` of `src` to `offset` of this page: through a small
    /// buffer unless the page type has a faster way (a page of words copies word by word).
    fn copy_bytes_from(&self, offset: usize, src: &Self, src_offset: usize, len: usize)
    where
        Self: Sized,
    {
        let mut buf = [0u8; 64];
        for at in (0..len).step_by(buf.len()) {
            let n = (len - at).min(buf.len());
            src.read(src_offset + at, &mut buf[..n]);
            self.write(offset + at, &buf[..n]);
        }
    }
}

/// How a copy of `len` bytes from address `src` to address `dst` goes through shared memory:
/// `(head, words)`, that is `head` bytes one at a time, then `words` 8-byte words (both
/// addresses 8-aligned from there), then the rest one byte at a time. Addresses that differ
/// in alignment share no word: all bytes. A page reached through a raw pointer (the
/// unikernel's grant mappings and frames) copies by this plan with one atomic access each:
/// a byte at a time, a 4 KiB copy took 8,192 accesses.
pub fn word_copy_plan(dst: usize, src: usize, len: usize) -> (usize, usize) {
    if (dst ^ src) % 8 != 0 {
        return (len, 0);
    }
    let head = ((8 - dst % 8) % 8).min(len);
    (head, (len - head) / 8)
}

impl<P: SharedPage + ?Sized> SharedPage for &P {
    fn load_u32(&self, offset: usize) -> u32 {
        (**self).load_u32(offset)
    }
    fn store_u32(&self, offset: usize, value: u32) {
        (**self).store_u32(offset, value)
    }
    fn read(&self, offset: usize, buf: &mut [u8]) {
        (**self).read(offset, buf)
    }
    fn write(&self, offset: usize, data: &[u8]) {
        (**self).write(offset, data)
    }
}

/// The shared memory a ring lives in: one page, or the pages of a multi-page ring in ring
/// order ([`PageSpan`]). Offsets run across the pages.
pub trait RingMemory {
    /// Its bytes.
    fn len(&self) -> usize;
    /// Whether it has no bytes (never, for a ring).
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Loads the 32-bit word at `offset` (4-byte aligned) in one access.
    fn load_word(&self, offset: usize) -> u32;
    /// Stores a 32-bit word at `offset` (4-byte aligned) in one access.
    fn store_word(&self, offset: usize, value: u32);
    /// Copies `buf.len()` bytes starting at `offset` out.
    fn read_bytes(&self, offset: usize, buf: &mut [u8]);
    /// Copies `data` in starting at `offset`.
    fn write_bytes(&self, offset: usize, data: &[u8]);
}

impl<P: SharedPage> RingMemory for P {
    fn len(&self) -> usize {
        PAGE_SIZE
    }
    fn load_word(&self, offset: usize) -> u32 {
        SharedPage::load_u32(self, offset)
    }
    fn store_word(&self, offset: usize, value: u32) {
        SharedPage::store_u32(self, offset, value)
    }
    fn read_bytes(&self, offset: usize, buf: &mut [u8]) {
        SharedPage::read(self, offset, buf)
    }
    fn write_bytes(&self, offset: usize, data: &[u8]) {
        SharedPage::write(self, offset, data)
    }
}

/// Pages that one ring spans, in order: a multi-page ring's memory. The pages need not be
/// contiguous anywhere; an entry that crosses from one page to the next is read and written
/// in two pieces.
#[derive(Clone, Debug)]
pub struct PageSpan<P> {
    pages: Vec<P>,
}

impl<P: SharedPage> PageSpan<P> {
    /// The span of `pages`, at least one.
    pub fn new(pages: Vec<P>) -> PageSpan<P> {
        assert!(!pages.is_empty(), "a ring spans at least one page");
        PageSpan { pages }
    }

    /// Its pages, in order.
    pub fn pages(&self) -> &[P] {
        &self.pages
    }

    /// Calls `f` with each page's piece of `len` bytes at `offset`: (page, offset in the page,
    /// range of the bytes).
    fn pieces(
        &self,
        offset: usize,
        len: usize,
        mut f: impl FnMut(&P, usize, core::ops::Range<usize>),
    ) {
        assert!(
            offset + len <= self.pages.len() * PAGE_SIZE,
            "past the ring's pages"
        );
        let mut done = 0;
        while done < len {
            let at = offset + done;
            let n = (PAGE_SIZE - at % PAGE_SIZE).min(len - done);
            f(&self.pages[at / PAGE_SIZE], at % PAGE_SIZE, done..done + n);
            done += n;
        }
    }
}

impl<P: SharedPage> RingMemory for PageSpan<P> {
    fn len(&self) -> usize {
        self.pages.len() * PAGE_SIZE
    }
    fn load_word(&self, offset: usize) -> u32 {
        // Aligned words never cross a page.
        SharedPage::load_u32(&self.pages[offset / PAGE_SIZE], offset % PAGE_SIZE)
    }
    fn store_word(&self, offset: usize, value: u32) {
        SharedPage::store_u32(&self.pages[offset / PAGE_SIZE], offset % PAGE_SIZE, value)
    }
    fn read_bytes(&self, offset: usize, buf: &mut [u8]) {
        self.pieces(offset, buf.len(), |page, at, range| {
            SharedPage::read(page, at, &mut buf[range])
        });
    }
    fn write_bytes(&self, offset: usize, data: &[u8]) {
        self.pieces(offset, data.len(), |page, at, range| {
            SharedPage::write(page, at, &data[range])
        });
    }
}

/// A page of ordinary memory, shareable between in-process parties by cloning the handle.
///
/// Built from atomic words so that two parties touching it concurrently is defined behaviour
/// without `unsafe`. The words are a page-aligned page of their own ([`LocalPage::addr`]), so
/// a kernel hosting `xen::sim` can give a device the page to DMA into, as a grant-mapped page
/// would be given.
#[derive(Clone)]
pub struct LocalPage(Arc<Storage>);

/// The page's words, page-aligned.
#[repr(C, align(4096))]
struct Words([AtomicU32; PAGE_SIZE / 4]);

/// Boxed apart from the `Arc`'s counters: inside the `Arc` the alignment would cost a
/// second page per page.
struct Storage(Box<Words>);

impl core::ops::Deref for Storage {
    type Target = [AtomicU32; PAGE_SIZE / 4];

    fn deref(&self) -> &Self::Target {
        &self.0 .0
    }
}

impl LocalPage {
    /// A zero-filled page.
    pub fn new() -> LocalPage {
        LocalPage(Arc::new(Storage(Box::new(Words(core::array::from_fn(
            |_| AtomicU32::new(0),
        ))))))
    }

    /// Whether two handles name the same page.
    pub fn same_page(&self, other: &LocalPage) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }

    /// The address of the page's first byte in this address space (a multiple of 4096):
    /// where a device may read and write it, in a kernel whose memory is identity-mapped.
    pub fn addr(&self) -> usize {
        core::ptr::from_ref::<Words>(&self.0 .0) as usize
    }

    fn byte(&self, offset: usize) -> u8 {
        let word = self.0[offset / 4].load(Ordering::Relaxed);
        (word >> ((offset % 4) * 8)) as u8
    }

    fn set_byte(&self, offset: usize, value: u8) {
        let shift = (offset % 4) * 8;
        // A single atomic read-modify-write, so a neighbour byte written concurrently by the
        // other party is never lost.
        let _ = self.0[offset / 4].fetch_update(Ordering::Relaxed, Ordering::Relaxed, |w| {
            Some((w & !(0xff << shift)) | (u32::from(value) << shift))
        });
    }
}

impl LocalPage {
    /// Copies `len` bytes at `src_offset` of `src` to `offset` of this page: `xen::sim`'s
    /// grant copy. Word by word when both offsets are equally aligned (a grant copy of
    /// page-aligned buffers, the usual case), else through a small buffer; no page-sized
    /// temporary either way.
    pub fn copy_from(&self, offset: usize, src: &LocalPage, src_offset: usize, len: usize) {
        assert!(
            offset + len <= PAGE_SIZE && src_offset + len <= PAGE_SIZE,
            "copy past the page"
        );
        if offset % 4 != src_offset % 4 {
            let mut buf = [0u8; 64];
            for at in (0..len).step_by(buf.len()) {
                let n = (len - at).min(buf.len());
                src.read(src_offset + at, &mut buf[..n]);
                self.write(offset + at, &buf[..n]);
            }
            return;
        }
        let head = ((4 - offset % 4) % 4).min(len);
        for i in 0..head {
            self.set_byte(offset + i, src.byte(src_offset + i));
        }
        let words = (len - head) / 4;
        let (to, from) = ((offset + head) / 4, (src_offset + head) / 4);
        for (d, s) in self.0[to..to + words]
            .iter()
            .zip(&src.0[from..from + words])
        {
            d.store(s.load(Ordering::Relaxed), Ordering::Relaxed);
        }
        for i in head + words * 4..len {
            self.set_byte(offset + i, src.byte(src_offset + i));
        }
    }
}

impl Default for LocalPage {
    fn default() -> Self {
        Self::new()
    }
}

impl core::fmt::Debug for LocalPage {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "LocalPage({:#x})", self.addr())
    }
}

impl SharedPage for LocalPage {
    fn load_u32(&self, offset: usize) -> u32 {
        debug_assert_eq!(offset % 4, 0);
        self.0[offset / 4].load(Ordering::Relaxed)
    }

    fn store_u32(&self, offset: usize, value: u32) {
        debug_assert_eq!(offset % 4, 0);
        self.0[offset / 4].store(value, Ordering::Relaxed)
    }

    fn read(&self, offset: usize, buf: &mut [u8]) {
        assert!(offset + buf.len() <= PAGE_SIZE, "read past the page");
        // Bytes up to the first whole word, whole words, then the bytes after the last: the
        // middle is one load per word (bulk data goes through here).
        let head = ((4 - offset % 4) % 4).min(buf.len());
        let (first, rest) = buf.split_at_mut(head);
        for (i, b) in first.iter_mut().enumerate() {
            *b = self.byte(offset + i);
        }
        let at = offset + head;
        let whole = rest.len() / 4 * 4;
        let (middle, tail) = rest.split_at_mut(whole);
        for (dst, w) in middle.chunks_exact_mut(4).zip(&self.0[at / 4..]) {
            dst.copy_from_slice(&w.load(Ordering::Relaxed).to_le_bytes());
        }
        let tail_at = at + whole;
        for (i, b) in tail.iter_mut().enumerate() {
            *b = self.byte(tail_at + i);
        }
    }

    fn write(&self, offset: usize, data: &[u8]) {
        assert!(offset + data.len() <= PAGE_SIZE, "write past the page");
        let head = ((4 - offset % 4) % 4).min(data.len());
        let (first, rest) = data.split_at(head);
        for (i, b) in first.iter().enumerate() {
            self.set_byte(offset + i, *b);
        }
        let at = offset + head;
        let whole = rest.len() / 4 * 4;
        let (middle, tail) = rest.split_at(whole);
        for (src, w) in middle.chunks_exact(4).zip(&self.0[at / 4..]) {
            w.store(
                u32::from_le_bytes([src[0], src[1], src[2], src[3]]),
                Ordering::Relaxed,
            );
        }
        let tail_at = at + whole;
        for (i, b) in tail.iter().enumerate() {
            self.set_byte(tail_at + i, *b);
        }
    }

    fn copy_bytes_from(&self, offset: usize, src: &Self, src_offset: usize, len: usize) {
        self.copy_from(offset, src, src_offset, len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_copy_goes_by_words_where_both_sides_share_their_alignment() {
        // Same alignment: bytes up to the first word boundary, the words, the rest.
        assert_eq!(word_copy_plan(0x1000, 0x2000, 4096), (0, 512));
        assert_eq!(word_copy_plan(0x1003, 0x2003, 200), (5, 24));
        assert_eq!(word_copy_plan(0x1007, 0x7, 1), (1, 0));
        assert_eq!(word_copy_plan(0x1001, 0x2001, 3), (3, 0));
        // Different alignment: bytes only.
        assert_eq!(word_copy_plan(0x1005, 0x2001, 77), (77, 0));
        for (d, s, len) in [(3usize, 3usize, 200usize), (0, 8, 9), (6, 14, 0)] {
            let (head, words) = word_copy_plan(d, s, len);
            assert!(head + words * 8 <= len);
            assert!(words == 0 || ((d + head) % 8 == 0 && (s + head) % 8 == 0));
        }
    }

    #[test]
    fn bytes_and_words_agree_little_endian() {
        let p = LocalPage::new();
        p.write(6, &[1, 2, 3, 4, 5, 6, 7]);
        assert_eq!(p.load_u32(4), 0x0201_0000);
        assert_eq!(p.load_u32(8), 0x0605_0403);
        let mut b = [0u8; 9];
        p.read(5, &mut b);
        assert_eq!(b, [0, 1, 2, 3, 4, 5, 6, 7, 0]);
        let q = p.clone();
        q.store_u32(4092, 0xdead_beef);
        assert_eq!(p.load_u32(4092), 0xdead_beef);
        assert!(p.same_page(&q) && !p.same_page(&LocalPage::new()));
        assert_eq!(p.addr() % PAGE_SIZE, 0, "page-aligned");
        assert_eq!(p.addr(), q.addr());
    }

    #[test]
    fn copies_of_every_alignment_agree_with_a_byte_model() {
        let src = LocalPage::new();
        let bytes: Vec<u8> = (0..PAGE_SIZE).map(|i| (i * 13 + 5) as u8).collect();
        src.write(0, &bytes);
        for (from, to, len) in [
            (0, 0, PAGE_SIZE),
            (1, 5, 70),
            (3, 2, 200),
            (4092, 0, 4),
            (7, 4090, 6),
            (0, 1, 0),
        ] {
            let dst = LocalPage::new();
            dst.write(0, &[0xee; PAGE_SIZE]);
            dst.copy_from(to, &src, from, len);
            let mut model = [0xeeu8; PAGE_SIZE];
            model[to..to + len].copy_from_slice(&bytes[from..from + len]);
            let mut back = [0u8; PAGE_SIZE];
            dst.read(0, &mut back);
            assert!(back == model, "from {from} to {to} len {len}");
        }
    }

    #[test]
    fn reads_and_writes_of_every_alignment_agree_with_a_byte_model() {
        let mut model = [0u8; 64];
        for offset in 0..24 {
            for len in 0..24 {
                let data: Vec<u8> = (0..len).map(|i| (offset * 31 + i * 7 + 1) as u8).collect();
                let q = LocalPage::new();
                q.write(offset, &data);
                model.fill(0);
                model[offset..offset + len].copy_from_slice(&data);
                let mut back = [0u8; 64];
                q.read(0, &mut back);
                assert_eq!(back, model, "offset {offset} len {len}");
                let mut part = vec![0u8; len];
                q.read(offset, &mut part);
                assert_eq!(part, data);
            }
        }
    }

    #[test]
    fn a_copy_between_pages_moves_exactly_its_bytes_whatever_the_alignment() {
        let src = LocalPage::new();
        let data: Vec<u8> = (0..300u32).map(|i| (i * 7 + 1) as u8).collect();
        src.write(1000, &data);
        for (offset, src_offset, len) in [
            (1000, 1000, 300),
            (1001, 1000, 299),
            (3, 1002, 1),
            (0, 1000, 0),
        ] {
            // LocalPage's own word copy, and the trait's default (a reference to a page
            // takes the default).
            for default in [false, true] {
                let dst = LocalPage::new();
                if default {
                    SharedPage::copy_bytes_from(&&dst, offset, &&src, src_offset, len);
                } else {
                    dst.copy_bytes_from(offset, &src, src_offset, len);
                }
                let mut got = alloc::vec![0u8; PAGE_SIZE];
                dst.read(0, &mut got);
                let mut want = alloc::vec![0u8; PAGE_SIZE];
                let from = src_offset - 1000;
                want[offset..offset + len].copy_from_slice(&data[from..from + len]);
                assert_eq!(
                    got, want,
                    "offset {offset} from {src_offset} len {len} default {default}"
                );
            }
        }
    }
}
