//! What the driver needs from its platform: the controller's registers, DMA memory and a
//! clock. The kernel implements it over the mapped BAR and identity-mapped frames; host tests
//! over plain memory.

/// Memory the controller reads and writes by bus-master DMA: physically contiguous, zeroed
/// when allocated. Accesses must not be merged, reordered or elided by the compiler (the
/// controller changes the memory behind the CPU's back), and writes become visible to the
/// device in program order.
pub trait DmaBuffer {
    /// The bus address the controller uses.
    fn phys(&self) -> u64;
    /// Length in bytes.
    fn len(&self) -> usize;
    /// Whether the buffer is empty.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Reads the little-endian dword at byte `offset` (4-aligned, inside the buffer).
    fn read32(&self, offset: usize) -> u32;
    /// Writes the little-endian dword at byte `offset` (4-aligned, inside the buffer).
    fn write32(&mut self, offset: usize, value: u32);
    /// Writes a 64-bit little-endian field as two dwords, low first.
    fn write64(&mut self, offset: usize, value: u64) {
        self.write32(offset, value as u32);
        self.write32(offset + 4, (value >> 32) as u32);
    }
    /// Copies `data` in at `offset` (4-aligned), a dword at a time; the bytes after
    /// `data` in its last dword become zero.
    fn write_bytes(&mut self, offset: usize, data: &[u8]) {
        for (i, chunk) in data.chunks(4).enumerate() {
            let mut dword = [0u8; 4];
            dword[..chunk.len()].copy_from_slice(chunk);
            self.write32(offset + 4 * i, u32::from_le_bytes(dword));
        }
    }
    /// Copies bytes out, starting at `offset`.
    fn read_bytes(&self, offset: usize, buf: &mut [u8]) {
        for (i, b) in buf.iter_mut().enumerate() {
            let at = offset + i;
            *b = (self.read32(at & !3) >> ((at & 3) * 8)) as u8;
        }
    }
}

/// The platform under the driver.
pub trait Hal {
    /// Its DMA memory.
    type Dma: DmaBuffer;
    /// Reads the 32-bit register at `offset` into BAR0.
    fn read32(&self, offset: usize) -> u32;
    /// Writes the 32-bit register at `offset` into BAR0.
    fn write32(&self, offset: usize, value: u32);
    /// Size of the register space (BAR0).
    fn mmio_len(&self) -> usize;
    /// Writes a 64-bit register as two dword writes, low dword first (xHCI 5.1 allows it
    /// and it works whether or not the bus does 64-bit accesses).
    fn write64(&self, offset: usize, value: u64) {
        self.write32(offset, value as u32);
        self.write32(offset + 4, (value >> 32) as u32);
    }
    /// Allocates zeroed DMA memory of at least `bytes`, aligned to `align` (a power of two),
    /// not crossing a page boundary when `bytes` fits in a page.
    fn dma_alloc(&mut self, bytes: usize, align: usize) -> Option<Self::Dma>;
    /// Monotonic microseconds.
    fn now_micros(&self) -> u64;
}
