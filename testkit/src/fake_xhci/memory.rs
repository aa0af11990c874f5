//! DMA memory for the fake: plain bytes at made-up bus addresses.

use alloc::rc::Rc;
use alloc::vec;
use alloc::vec::Vec;
use core::cell::{Cell, RefCell};

use xhci_driver::hal::DmaBuffer;

/// Bytes at a made-up bus address, shared by the buffers carved out of them.
pub struct Arena {
    base: u64,
    bytes: RefCell<Vec<u8>>,
    next: Cell<usize>,
}

impl Arena {
    pub(super) fn new(base: u64, len: usize) -> Rc<Arena> {
        Rc::new(Arena {
            base,
            bytes: RefCell::new(vec![0; len]),
            next: Cell::new(0),
        })
    }

    pub(super) fn alloc(self: &Rc<Self>, len: usize, align: usize) -> Option<Memory> {
        let start = self.next.get().next_multiple_of(align);
        if start + len > self.bytes.borrow().len() {
            return None;
        }
        self.next.set(start + len);
        Some(Memory {
            arena: self.clone(),
            phys: self.base + start as u64,
            len,
        })
    }

    /// The dword at bus address `phys`.
    pub fn read32(&self, phys: u64) -> u32 {
        let at = (phys - self.base) as usize;
        u32::from_le_bytes(self.bytes.borrow()[at..at + 4].try_into().unwrap())
    }

    /// Writes the dword at bus address `phys`.
    pub fn write32(&self, phys: u64, value: u32) {
        let at = (phys - self.base) as usize;
        self.bytes.borrow_mut()[at..at + 4].copy_from_slice(&value.to_le_bytes());
    }

    pub(super) fn read64(&self, phys: u64) -> u64 {
        u64::from(self.read32(phys)) | u64::from(self.read32(phys + 4)) << 32
    }

    pub(super) fn read_bytes(&self, phys: u64, len: usize) -> Vec<u8> {
        let at = (phys - self.base) as usize;
        self.bytes.borrow()[at..at + len].to_vec()
    }

    pub(super) fn write_bytes(&self, phys: u64, data: &[u8]) {
        let at = (phys - self.base) as usize;
        self.bytes.borrow_mut()[at..at + data.len()].copy_from_slice(data);
    }
}

/// A DMA buffer in an [`Arena`].
pub struct Memory {
    arena: Rc<Arena>,
    phys: u64,
    len: usize,
}

impl Memory {
    /// `len` zeroed bytes of their own at bus address `phys`.
    pub fn new(phys: u64, len: usize) -> Memory {
        let arena = Arena::new(phys, len);
        arena.alloc(len, 1).unwrap()
    }
}

impl DmaBuffer for Memory {
    fn phys(&self) -> u64 {
        self.phys
    }

    fn len(&self) -> usize {
        self.len
    }

    fn read32(&self, offset: usize) -> u32 {
        assert!(offset + 4 <= self.len);
        self.arena.read32(self.phys + offset as u64)
    }

    fn write32(&mut self, offset: usize, value: u32) {
        assert!(offset + 4 <= self.len);
        self.arena.write32(self.phys + offset as u64, value)
    }
}
