//! Physical memory: the start info, the frame allocator, the heap, DMA buffers, uncached
//! MMIO mappings, and the guest-physical window reserved for foreign grant mappings.

use driver_domain::frames::{FrameAllocator, Range, FRAME};
use driver_domain::{Mmio32, PhysRead};
use linked_list_allocator::LockedHeap;

use super::cpu;

const GIB: u64 = 1 << 30;
const TWO_MIB: u64 = 2 << 20;
/// The identity map the boot code builds.
pub const IDENTITY_MAPPED: u64 = 4 * GIB;
const PTE_PRESENT_WRITABLE: u64 = 0x3;
const PTE_LARGE: u64 = 0x80;
const PTE_UNCACHED: u64 = 0x18; // PCD | PWT

#[global_allocator]
static HEAP: LockedHeap = LockedHeap::empty();

static FRAMES: spin::Mutex<Option<FrameAllocator>> = spin::Mutex::new(None);

extern "C" {
    static __image_start: u8;
    static __image_end: u8;
    static mut boot_pdpt: [u64; 512];
    static mut boot_pd: [u64; 2048];
}

/// Physical memory read through the identity map.
pub struct PhysMem;

impl PhysRead for PhysMem {
    fn read(&self, phys: u64, buf: &mut [u8]) -> bool {
        let Some(end) = phys.checked_add(buf.len() as u64) else {
            return false;
        };
        if end > IDENTITY_MAPPED {
            return false;
        }
        // SAFETY: [phys, end) lies in the identity map built at boot, so it is mapped; it is
        // read as plain bytes, so any content is valid.
        unsafe { core::ptr::copy_nonoverlapping(phys as *const u8, buf.as_mut_ptr(), buf.len()) };
        true
    }
}

/// The loaded image's physical range.
pub fn image() -> Range {
    // SAFETY: only the addresses of the linker's symbols are taken.
    unsafe {
        Range {
            start: &__image_start as *const u8 as u64,
            end: &__image_end as *const u8 as u64,
        }
    }
}

/// Sets up the frame allocator (RAM minus `reserved`) and carves the heap out of it.
/// Returns (free bytes after the heap, heap bytes, bytes dropped for want of table space).
pub fn init(ram: impl IntoIterator<Item = Range>, reserved: &[Range]) -> (u64, u64, u64) {
    let (mut frames, dropped) = FrameAllocator::new(ram, reserved);
    // A quarter of RAM, at most 16 MiB: control data only; DMA buffers come from frames.
    let heap_bytes = (frames.free_bytes() / 4).min(16 << 20) / FRAME * FRAME;
    let heap = frames
        .alloc(heap_bytes / FRAME, FRAME, IDENTITY_MAPPED)
        .expect("RAM for the heap");
    // SAFETY: the range came from the allocator, so it is unused RAM inside the identity map,
    // and it is never handed out again.
    unsafe { HEAP.lock().init(heap as *mut u8, heap_bytes as usize) };
    let free = frames.free_bytes();
    *FRAMES.lock() = Some(frames);
    (free, heap_bytes, dropped)
}

/// Physically contiguous, zeroed, page-aligned memory a device may DMA to.
#[derive(Debug)]
pub struct DmaRegion {
    /// Physical (and, identity-mapped, virtual) address.
    pub phys: u64,
    /// Length in bytes, a multiple of the page size.
    pub len: u64,
}

/// Allocates a DMA region of at least `bytes`, aligned to `align`, below 4 GiB if
/// `below_4g` (else anywhere in the identity map).
pub fn dma_alloc(bytes: u64, align: u64, below_4g: bool) -> Option<DmaRegion> {
    let frames = bytes.div_ceil(FRAME).max(1);
    // Everything we hand out must be reachable through the identity map as well.
    let limit = if below_4g { 4 * GIB } else { IDENTITY_MAPPED };
    let phys = FRAMES.lock().as_mut()?.alloc(frames, align, limit)?;
    // SAFETY: fresh frames from the allocator, identity-mapped and owned by nobody else.
    unsafe { core::ptr::write_bytes(phys as *mut u8, 0, (frames * FRAME) as usize) };
    Some(DmaRegion {
        phys,
        len: frames * FRAME,
    })
}

/// Free frame memory, in bytes.
pub fn free_bytes() -> u64 {
    FRAMES.lock().as_ref().map_or(0, FrameAllocator::free_bytes)
}

/// Returns a DMA region's frames.
pub fn dma_free(region: DmaRegion) {
    if let Some(f) = FRAMES.lock().as_mut() {
        f.free(region.phys, region.len / FRAME);
    }
}

/// Maps `[phys, phys + len)` uncached (identity), for device registers. Works up to
/// 512 GiB; above 4 GiB the page directories come from the frame allocator.
pub fn map_mmio(phys: u64, len: u64) -> Option<Mmio> {
    map_range(phys, len, true)?;
    Some(Mmio { base: phys, len })
}

/// Maps `[phys, phys + len)` write-back (identity): memory that is not ours but behaves as
/// RAM, such as foreign pages granted to us.
pub fn map_identity(phys: u64, len: u64) -> Option<()> {
    map_range(phys, len, false)
}

fn map_range(phys: u64, len: u64, uncached: bool) -> Option<()> {
    let end = phys.checked_add(len)?;
    if end > 512 * GIB || len == 0 {
        return None;
    }
    let mut page = phys / TWO_MIB * TWO_MIB;
    while page < end {
        set_entry(page, uncached)?;
        cpu::invlpg(page);
        page += TWO_MIB;
    }
    Some(())
}

fn set_entry(page: u64, uncached: bool) -> Option<()> {
    let gib = (page / GIB) as usize;
    let index = ((page % GIB) / TWO_MIB) as usize;
    let caching = if uncached { PTE_UNCACHED } else { 0 };
    // SAFETY: the boot page tables are only changed here and in the boot code, with one CPU
    // running; the entries written keep the identity mapping and only change caching, or add
    // a directory for a GiB that was unmapped.
    unsafe {
        let pdpt = &mut *core::ptr::addr_of_mut!(boot_pdpt);
        let table: &mut [u64] = if gib < 4 {
            let pd = &mut *core::ptr::addr_of_mut!(boot_pd);
            &mut pd[gib * 512..(gib + 1) * 512]
        } else {
            if pdpt[gib] == 0 {
                let frame = FRAMES.lock().as_mut()?.alloc(1, FRAME, IDENTITY_MAPPED)?;
                let table = &mut *(frame as *mut [u64; 512]);
                for (i, e) in table.iter_mut().enumerate() {
                    *e = (gib as u64 * GIB + i as u64 * TWO_MIB) | PTE_PRESENT_WRITABLE | PTE_LARGE;
                }
                pdpt[gib] = frame | PTE_PRESENT_WRITABLE;
            }
            &mut *((pdpt[gib] & !0xfff) as *mut [u64; 512])
        };
        table[index] = (table[index] & !PTE_UNCACHED) | caching;
    }
    Some(())
}

/// A mapped MMIO region.
#[derive(Clone, Copy, Debug)]
pub struct Mmio {
    base: u64,
    len: u64,
}

impl Mmio {
    /// Its length in bytes.
    pub fn len(&self) -> u64 {
        self.len
    }

    fn check(&self, offset: usize) -> u64 {
        assert!(
            offset % 4 == 0 && offset as u64 + 4 <= self.len,
            "MMIO access outside its region"
        );
        self.base + offset as u64
    }
}

impl Mmio32 for Mmio {
    fn read32(&self, offset: usize) -> u32 {
        let addr = self.check(offset);
        // SAFETY: `map_mmio` mapped the region uncached and `check` keeps the access inside.
        unsafe { core::ptr::read_volatile(addr as *const u32) }
    }

    fn write32(&self, offset: usize, value: u32) {
        let addr = self.check(offset);
        // SAFETY: as in `read32`.
        unsafe { core::ptr::write_volatile(addr as *mut u32, value) }
    }
}
