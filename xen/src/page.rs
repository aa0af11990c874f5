//! Access to a page shared with another domain (or with Xen).
//!
//! Ring and protocol code reads and writes shared memory only through [`SharedPage`], so the
//! same code runs on a grant-mapped page in the unikernel (whose implementation, with its raw
//! pointer, lives in `driver-domain`) and on [`LocalPage`], plain memory, in host tests and in
//! `xen::sim`. The other side may change the page at any time: callers copy what they read
//! before they check it.

use alloc::boxed::Box;
use alloc::sync::Arc;
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
        let mut i = 0;
        while i < buf.len() {
            let at = offset + i;
            if at % 4 == 0 && i + 4 <= buf.len() {
                let w = self.0[at / 4].load(Ordering::Relaxed);
                buf[i..i + 4].copy_from_slice(&w.to_le_bytes());
                i += 4;
            } else {
                buf[i] = self.byte(at);
                i += 1;
            }
        }
    }

    fn write(&self, offset: usize, data: &[u8]) {
        assert!(offset + data.len() <= PAGE_SIZE, "write past the page");
        let mut i = 0;
        while i < data.len() {
            let at = offset + i;
            if at % 4 == 0 && i + 4 <= data.len() {
                let w = u32::from_le_bytes([data[i], data[i + 1], data[i + 2], data[i + 3]]);
                self.0[at / 4].store(w, Ordering::Relaxed);
                i += 4;
            } else {
                self.set_byte(at, data[i]);
                i += 1;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
