//! Plain memory standing in for DMA buffers in host tests.

use alloc::vec;
use alloc::vec::Vec;

use crate::hal::DmaBuffer;

/// A DMA buffer that is a byte vector at a made-up bus address.
pub struct Memory {
    phys: u64,
    bytes: Vec<u8>,
}

impl Memory {
    /// `len` zeroed bytes at bus address `phys`.
    pub fn new(phys: u64, len: usize) -> Memory {
        Memory {
            phys,
            bytes: vec![0; len],
        }
    }
}

impl DmaBuffer for Memory {
    fn phys(&self) -> u64 {
        self.phys
    }

    fn len(&self) -> usize {
        self.bytes.len()
    }

    fn read32(&self, offset: usize) -> u32 {
        u32::from_le_bytes(self.bytes[offset..offset + 4].try_into().unwrap())
    }

    fn write32(&mut self, offset: usize, value: u32) {
        self.bytes[offset..offset + 4].copy_from_slice(&value.to_le_bytes());
    }
}
