//! Physical frame bookkeeping: which 4 KiB frames of RAM are free, from the start-info memory
//! map minus what is in use (the image, the first MiB).
//!
//! Allocations are physically contiguous runs of frames with a chosen alignment and an
//! optional highest address (DMA structures for a controller without 64-bit addressing must
//! sit below 4 GiB). Only bookkeeping: nothing here touches the memory.

use heapless::Vec;

/// Frame size.
pub const FRAME: u64 = 4096;
/// Most disjoint free ranges tracked.
pub const MAX_RANGES: usize = 64;

/// A half-open physical range `[start, end)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Range {
    /// First byte.
    pub start: u64,
    /// One past the last byte.
    pub end: u64,
}

impl Range {
    /// Bytes in the range.
    pub fn len(&self) -> u64 {
        self.end - self.start
    }

    /// Whether the range is empty.
    pub fn is_empty(&self) -> bool {
        self.end <= self.start
    }
}

/// Free physical memory.
#[derive(Debug)]
pub struct FrameAllocator {
    free: Vec<Range, MAX_RANGES>,
}

fn align_up(v: u64, a: u64) -> u64 {
    v.div_ceil(a) * a
}

fn align_down(v: u64, a: u64) -> u64 {
    v / a * a
}

impl FrameAllocator {
    /// Free memory = `ram` (usable ranges, any alignment) minus `reserved`, cut to whole
    /// frames. Ranges beyond [`MAX_RANGES`] are dropped; the second value is how many bytes.
    pub fn new(ram: impl IntoIterator<Item = Range>, reserved: &[Range]) -> (FrameAllocator, u64) {
        let mut free: Vec<Range, MAX_RANGES> = Vec::new();
        let mut dropped = 0;
        for r in ram {
            let mut pieces: Vec<Range, MAX_RANGES> = Vec::new();
            let _ = pieces.push(r);
            for cut in reserved {
                let mut next: Vec<Range, MAX_RANGES> = Vec::new();
                for p in &pieces {
                    for part in subtract(*p, *cut) {
                        let _ = next.push(part);
                    }
                }
                pieces = next;
            }
            let whole_frames = pieces.into_iter().map(|p| Range {
                start: align_up(p.start, FRAME),
                end: align_down(p.end, FRAME),
            });
            for p in whole_frames.filter(|p| !p.is_empty()) {
                if free.push(p).is_err() {
                    dropped += p.len();
                }
            }
        }
        (FrameAllocator { free }, dropped)
    }

    /// Free bytes.
    pub fn free_bytes(&self) -> u64 {
        self.free.iter().map(Range::len).sum()
    }

    /// The free ranges.
    pub fn ranges(&self) -> &[Range] {
        &self.free
    }

    /// Allocates `frames` contiguous frames aligned to `align` bytes (a power of two, at least
    /// [`FRAME`]) lying entirely below `limit` (exclusive). Takes from the highest fitting
    /// address, keeping low memory for allocations that need it.
    pub fn alloc(&mut self, frames: u64, align: u64, limit: u64) -> Option<u64> {
        let size = frames.checked_mul(FRAME)?;
        let align = align.max(FRAME);
        if size == 0 || !align.is_power_of_two() {
            return None;
        }
        let (i, at) = self
            .free
            .iter()
            .enumerate()
            .filter_map(|(i, r)| {
                let top = r.end.min(limit);
                let at = align_down(top.checked_sub(size)?, align);
                (at >= r.start).then_some((i, at))
            })
            .max_by_key(|(_, at)| *at)?;
        let r = self.free[i];
        let taken = Range {
            start: at,
            end: at + size,
        };
        self.free.swap_remove(i);
        for part in subtract(r, taken) {
            // Splitting one range makes at most one more; if the table is full the piece is
            // lost to allocation rather than corrupting the table.
            let _ = self.free.push(part);
        }
        Some(at)
    }

    /// Returns frames to the free pool.
    pub fn free(&mut self, start: u64, frames: u64) {
        let _ = self.free.push(Range {
            start,
            end: start + frames * FRAME,
        });
    }
}

/// The guest-physical window for foreign grant mappings: the lowest 1 GiB-aligned range of
/// `size` bytes at or above 4 GiB that overlaps nothing in `occupied` (every memory-map entry,
/// whatever its type, and every device BAR). Xen crashes a domain that maps a grant over an
/// existing foreign or MMIO mapping and silently drops RAM under one, so the window must be
/// empty guest-physical space. `None` if no such range exists below 2^52.
pub fn grant_window(occupied: &[Range], size: u64) -> Option<u64> {
    const GIB: u64 = 1 << 30;
    let mut base = 4 * GIB;
    while base.checked_add(size)? <= 1 << 52 {
        let end = base + size;
        match occupied
            .iter()
            .filter(|r| r.start < end && base < r.end)
            .map(|r| r.end)
            .max()
        {
            Some(blocker_end) => base = blocker_end.div_ceil(GIB).checked_mul(GIB)?,
            None => return Some(base),
        }
    }
    None
}

/// `r` minus `cut`: up to two pieces.
fn subtract(r: Range, cut: Range) -> impl Iterator<Item = Range> {
    let left = Range {
        start: r.start,
        end: r.end.min(cut.start),
    };
    let right = Range {
        start: r.start.max(cut.end),
        end: r.end,
    };
    [left, right].into_iter().filter(|p| !p.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    fn q35_like() -> FrameAllocator {
        // Low RAM, then RAM from 1 MiB to 256 MiB with the image at 2 MiB.
        let ram = [
            Range {
                start: 0,
                end: 0x9fc00,
            },
            Range {
                start: MIB,
                end: 256 * MIB,
            },
        ];
        let reserved = [
            Range { start: 0, end: MIB },
            Range {
                start: 2 * MIB,
                end: 2 * MIB + 0x5_1234,
            },
        ];
        FrameAllocator::new(ram, &reserved).0
    }

    #[test]
    fn reserved_memory_is_never_handed_out() {
        let mut f = q35_like();
        assert_eq!(f.free_bytes(), 255 * MIB - 0x5_2000);
        let mut got = std::vec::Vec::new();
        while let Some(a) = f.alloc(1, FRAME, u64::MAX) {
            got.push(a);
        }
        assert_eq!(got.len() as u64 * FRAME, 255 * MIB - 0x5_2000);
        assert!(got
            .iter()
            .all(|&a| a >= MIB && !(2 * MIB..2 * MIB + 0x5_2000).contains(&a)));
        got.sort();
        got.dedup();
        assert_eq!(
            got.len() as u64 * FRAME,
            255 * MIB - 0x5_2000,
            "no frame twice"
        );
    }

    #[test]
    fn alignment_and_limit_are_honoured() {
        let mut f = q35_like();
        let a = f.alloc(16, 64 * 1024, 16 * MIB).unwrap();
        assert_eq!(a % (64 * 1024), 0);
        assert!(a + 16 * FRAME <= 16 * MIB);
        let b = f.alloc(1, FRAME, u64::MAX).unwrap();
        assert_eq!(
            b,
            256 * MIB - FRAME,
            "unrestricted allocations come from the top"
        );
        assert_eq!(f.alloc(1, FRAME, MIB), None, "nothing free below 1 MiB");
        assert_eq!(f.alloc(0, FRAME, u64::MAX), None);
        assert_eq!(f.alloc(1, 3 * FRAME, u64::MAX), None);
        assert_eq!(f.alloc(u64::MAX, FRAME, u64::MAX), None);
    }

    #[test]
    fn the_grant_window_avoids_ram_reserved_ranges_and_bars() {
        const GIB: u64 = 1 << 30;
        // q35 with 256 MiB: nothing above 4 GiB but AMD's HyperTransport hole at 1012 GiB.
        let ht = Range {
            start: 0xfd_0000_0000,
            end: 0x100_0000_0000,
        };
        assert_eq!(
            grant_window(
                &[
                    Range {
                        start: MIB,
                        end: 256 * MIB
                    },
                    ht
                ],
                GIB
            ),
            Some(4 * GIB)
        );
        // RAM above 4 GiB and a 64-bit BAR right after it push the window up.
        let ram_hi = Range {
            start: 4 * GIB,
            end: 6 * GIB + 5,
        };
        let bar = Range {
            start: 7 * GIB,
            end: 7 * GIB + 0x4000,
        };
        assert_eq!(grant_window(&[ram_hi, bar, ht], GIB), Some(8 * GIB));
        assert_eq!(
            grant_window(
                &[Range {
                    start: 0,
                    end: u64::MAX
                }],
                GIB
            ),
            None
        );
    }

    #[test]
    fn freed_frames_come_back() {
        let mut f = q35_like();
        let before = f.free_bytes();
        let a = f.alloc(4, FRAME, u64::MAX).unwrap();
        f.free(a, 4);
        assert_eq!(f.free_bytes(), before);
    }
}
