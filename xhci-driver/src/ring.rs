//! TRB rings (xHCI 4.9): the producer side of the Command Ring and Transfer Rings, and the
//! consumer side of an Event Ring with its Event Ring Segment Table.
//!
//! Each ring here is one segment. A producer ring ends in a Link TRB with Toggle Cycle set that
//! points back to its start, so the Producer Cycle State flips at every wrap (4.9.2). The
//! Cycle bit of a TRB is written last: the controller owns the TRB from that write on.

use xhci::ring::trb::Link;

use alloc::vec::Vec;

use crate::hal::DmaBuffer;

/// Bytes per TRB.
pub const TRB_SIZE: usize = 16;
/// Cycle bit, dword 3 bit 0.
const CYCLE: u32 = 1 << 0;
/// Chain bit, dword 3 bit 4 (Normal, Data Stage and Link TRBs).
const CHAIN: u32 = 1 << 4;
/// TRB Type No Op (Transfer Ring).
const TRB_NOOP: u32 = 8;

/// Why a TRB was not queued.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RingError {
    /// Every usable TRB is owned by the controller.
    Full,
}

/// A Command Ring or Transfer Ring, as its producer sees it.
pub struct ProducerRing<D> {
    buf: D,
    /// TRBs in the segment, the Link TRB included.
    trbs: usize,
    /// Index of the next TRB to write.
    enqueue: usize,
    /// Index of the oldest TRB the controller has not reported complete.
    dequeue: usize,
    /// Producer Cycle State.
    cycle: bool,
}

impl<D: DmaBuffer> ProducerRing<D> {
    /// Lays out a ring over `buf` (zeroed, at least two TRBs, 64-byte aligned).
    pub fn new(mut buf: D) -> Self {
        let trbs = buf.len() / TRB_SIZE;
        assert!(trbs >= 2, "a ring needs room for a TRB and its Link TRB");
        let link = *Link::new()
            .set_ring_segment_pointer(buf.phys())
            .set_toggle_cycle();
        // Cycle 0 with the initial Producer Cycle State 1: the controller does not follow
        // the Link TRB until the producer hands it over at the first wrap.
        write_trb(&mut buf, trbs - 1, link.into_raw(), false);
        ProducerRing {
            buf,
            trbs,
            enqueue: 0,
            dequeue: 0,
            cycle: true,
        }
    }

    /// Address of the segment, for CRCR or a TR Dequeue Pointer.
    pub fn phys(&self) -> u64 {
        self.buf.phys()
    }

    /// The Producer Cycle State (RCS for CRCR, DCS for an endpoint context).
    pub fn cycle_state(&self) -> bool {
        self.cycle
    }

    fn next(&self, i: usize) -> usize {
        if i + 1 == self.trbs - 1 {
            0
        } else {
            i + 1
        }
    }

    /// How many TRBs can be pushed before the ring is full.
    pub fn room(&self) -> usize {
        let usable = self.trbs - 1;
        let used = (self.enqueue + usable - self.dequeue) % usable;
        usable - 1 - used
    }

    /// Hands `trb` to the controller (its Cycle bit is replaced) and returns its address,
    /// which completion events report.
    pub fn push(&mut self, trb: [u32; 4]) -> Result<u64, RingError> {
        self.place(trb, true)
    }

    /// Writes `trb` at the enqueue pointer, owned by the controller or (`owned` false) with
    /// the Cycle bit it does not expect yet, and moves on.
    fn place(&mut self, trb: [u32; 4], owned: bool) -> Result<u64, RingError> {
        let after = self.next(self.enqueue);
        if after == self.dequeue {
            return Err(RingError::Full);
        }
        let at = self.buf.phys() + (self.enqueue * TRB_SIZE) as u64;
        write_trb(&mut self.buf, self.enqueue, trb, self.cycle == owned);
        if after == 0 {
            // Hand the Link TRB over with the current cycle, then flip it (Toggle Cycle). A
            // Link TRB inside a TD carries the Chain bit of the TRB before it (4.11.5.1).
            let mut link = read_trb(&self.buf, self.trbs - 1);
            link[3] = (link[3] & !CHAIN) | (trb[3] & CHAIN);
            write_trb(&mut self.buf, self.trbs - 1, link, self.cycle);
            self.cycle = !self.cycle;
        }
        self.enqueue = after;
        Ok(at)
    }

    /// Queues the TRBs of one TD and returns their addresses, or queues nothing when they
    /// do not all fit. The first TRB's Cycle bit is written last, so a running controller
    /// never starts a TD whose later TRBs it does not own yet.
    pub fn push_td(&mut self, trbs: &[[u32; 4]]) -> Result<Vec<u64>, RingError> {
        let Some(first) = trbs.first() else {
            return Ok(Vec::new());
        };
        if self.room() < trbs.len() {
            return Err(RingError::Full);
        }
        let (first_index, first_cycle) = (self.enqueue, self.cycle);
        let mut at = Vec::with_capacity(trbs.len());
        at.push(self.place(*first, false)?);
        for trb in &trbs[1..] {
            at.push(self.push(*trb)?);
        }
        write_trb(&mut self.buf, first_index, *first, first_cycle);
        Ok(at)
    }

    /// Where the next TRB goes: the New TR Dequeue Pointer that skips everything queued.
    pub fn enqueue_pointer(&self) -> u64 {
        self.buf.phys() + (self.enqueue * TRB_SIZE) as u64
    }

    /// Forgets every TRB queued (after Set TR Dequeue Pointer moved the controller past
    /// them).
    pub fn skip_to_enqueue(&mut self) {
        self.dequeue = self.enqueue;
    }

    /// The index of the TRB at `phys`, when it is one of this ring's (the Link TRB is not).
    fn index_of(&self, phys: u64) -> Option<usize> {
        let off = phys.checked_sub(self.buf.phys())?;
        let index = (off / TRB_SIZE as u64) as usize;
        (off % TRB_SIZE as u64 == 0 && index < self.trbs - 1).then_some(index)
    }

    /// The TRB after the one at `phys` (past the Link TRB) and the Cycle bit the controller
    /// will expect there: a New TR Dequeue Pointer that skips everything up to `phys`.
    pub fn after(&self, phys: u64) -> Option<(u64, bool)> {
        let next = self.next(self.index_of(phys)?);
        let at = self.buf.phys() + (next * TRB_SIZE) as u64;
        Some((at, self.cycle_of(at)?))
    }

    /// The Cycle bit the controller expects at `phys`: that of the TRB written there, or the
    /// Producer Cycle State at the enqueue pointer.
    pub fn cycle_of(&self, phys: u64) -> Option<bool> {
        let index = self.index_of(phys)?;
        if index == self.enqueue {
            return Some(self.cycle);
        }
        Some(read_trb(&self.buf, index)[3] & CYCLE != 0)
    }

    /// Turns the TRB at `phys` into a No Op TRB (6.4.1.4) that keeps its Cycle and Chain bits:
    /// the controller passes over it without transferring or reporting anything.
    pub fn make_noop(&mut self, phys: u64) {
        let Some(index) = self.index_of(phys) else {
            return;
        };
        let old = read_trb(&self.buf, index);
        let cycle = old[3] & CYCLE != 0;
        let noop = [0, 0, 0, (TRB_NOOP << 10) | (old[3] & CHAIN)];
        write_trb(&mut self.buf, index, noop, cycle);
    }

    /// The controller has completed the TRB at `phys` and all TRBs queued before it.
    /// Returns false when `phys` is not a TRB of this ring.
    pub fn complete(&mut self, phys: u64) -> bool {
        let Some(off) = phys.checked_sub(self.buf.phys()) else {
            return false;
        };
        let index = (off / TRB_SIZE as u64) as usize;
        if off % TRB_SIZE as u64 != 0 || index >= self.trbs - 1 {
            return false;
        }
        self.dequeue = self.next(index);
        true
    }
}

fn write_trb<D: DmaBuffer>(buf: &mut D, index: usize, trb: [u32; 4], cycle: bool) {
    let base = index * TRB_SIZE;
    buf.write32(base, trb[0]);
    buf.write32(base + 4, trb[1]);
    buf.write32(base + 8, trb[2]);
    let d3 = (trb[3] & !CYCLE) | if cycle { CYCLE } else { 0 };
    buf.write32(base + 12, d3);
}

fn read_trb<D: DmaBuffer>(buf: &D, index: usize) -> [u32; 4] {
    let base = index * TRB_SIZE;
    [0, 4, 8, 12].map(|o| buf.read32(base + o))
}

/// Bytes of one Event Ring Segment Table entry (xHCI 6.5).
pub const ERST_ENTRY_SIZE: usize = 16;

/// An Event Ring of one segment, as its consumer (software) sees it.
pub struct EventRing<D> {
    segment: D,
    erst: D,
    trbs: usize,
    dequeue: usize,
    /// Consumer Cycle State: events with this Cycle bit are new.
    cycle: bool,
}

impl<D: DmaBuffer> EventRing<D> {
    /// Lays out the ring over `segment` (zeroed, 64-byte aligned, at least 16 TRBs) and
    /// writes its one-entry Event Ring Segment Table into `erst`.
    pub fn new(segment: D, mut erst: D) -> Self {
        let trbs = segment.len() / TRB_SIZE;
        assert!(trbs >= 16 && erst.len() >= ERST_ENTRY_SIZE);
        erst.write64(0, segment.phys());
        erst.write32(8, trbs as u32);
        erst.write32(12, 0);
        EventRing {
            segment,
            erst,
            trbs,
            dequeue: 0,
            cycle: true,
        }
    }

    /// For ERSTBA.
    pub fn erst_phys(&self) -> u64 {
        self.erst.phys()
    }

    /// For ERSTSZ.
    pub fn erst_size(&self) -> u32 {
        1
    }

    /// The Event Ring Dequeue Pointer to write to ERDP (segment index 0).
    pub fn dequeue_pointer(&self) -> u64 {
        self.segment.phys() + (self.dequeue * TRB_SIZE) as u64
    }

    /// Whether the controller has written an event not taken yet.
    pub fn has_next(&self) -> bool {
        let d3 = self.segment.read32(self.dequeue * TRB_SIZE + 12);
        (d3 & CYCLE != 0) == self.cycle
    }

    /// Takes the next event the controller has written, if any.
    pub fn pop(&mut self) -> Option<[u32; 4]> {
        let base = self.dequeue * TRB_SIZE;
        let d3 = self.segment.read32(base + 12);
        if (d3 & CYCLE != 0) != self.cycle {
            return None;
        }
        let trb = [
            self.segment.read32(base),
            self.segment.read32(base + 4),
            self.segment.read32(base + 8),
            d3,
        ];
        self.dequeue += 1;
        if self.dequeue == self.trbs {
            self.dequeue = 0;
            self.cycle = !self.cycle;
        }
        Some(trb)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;
    use xhci::ring::trb::command::Noop;

    /// Zeroed dwords at a made-up bus address: what a ring needs of DMA memory.
    struct Memory {
        phys: u64,
        words: Vec<u32>,
    }

    impl Memory {
        fn new(phys: u64, len: usize) -> Memory {
            Memory {
                phys,
                words: vec![0; len / 4],
            }
        }
    }

    impl DmaBuffer for Memory {
        fn phys(&self) -> u64 {
            self.phys
        }

        fn len(&self) -> usize {
            self.words.len() * 4
        }

        fn read32(&self, offset: usize) -> u32 {
            self.words[offset / 4]
        }

        fn write32(&mut self, offset: usize, value: u32) {
            self.words[offset / 4] = value;
        }
    }

    fn noop() -> [u32; 4] {
        Noop::new().into_raw()
    }

    #[test]
    fn the_link_trb_points_home_with_toggle_cycle_and_is_not_yet_handed_over() {
        let ring = ProducerRing::new(Memory::new(0x10000, 4 * TRB_SIZE));
        let link = read_trb(&ring.buf, 3);
        assert_eq!(link[0], 0x10000);
        assert_eq!(link[1], 0);
        assert_eq!((link[3] >> 10) & 0x3f, 6, "TRB Type Link");
        assert_eq!(link[3] & 2, 2, "Toggle Cycle");
        assert_eq!(link[3] & CYCLE, 0);
        assert!(ring.cycle_state());
    }

    #[test]
    fn pushes_set_the_cycle_bit_and_wrap_through_the_link_trb() {
        let mut ring = ProducerRing::new(Memory::new(0x10000, 4 * TRB_SIZE));
        assert_eq!(ring.push(noop()), Ok(0x10000));
        assert_eq!(ring.push(noop()), Ok(0x10010));
        assert_eq!(read_trb(&ring.buf, 0)[3] & CYCLE, 1);
        assert!(ring.complete(0x10010));
        // The third TRB is the last before the Link TRB: the Link TRB is handed over with
        // cycle 1 and the Producer Cycle State flips.
        assert_eq!(ring.push(noop()), Ok(0x10020));
        assert_eq!(read_trb(&ring.buf, 3)[3] & CYCLE, 1);
        assert!(!ring.cycle_state());
        assert_eq!(ring.push(noop()), Ok(0x10000));
        assert_eq!(read_trb(&ring.buf, 0)[3] & CYCLE, 0, "second lap: cycle 0");
        assert_eq!(
            (read_trb(&ring.buf, 0)[3] >> 10) & 0x3f,
            23,
            "TRB Type No Op Command"
        );
    }

    #[test]
    fn a_td_that_wraps_chains_through_the_link_trb() {
        let mut ring = ProducerRing::new(Memory::new(0x10000, 4 * TRB_SIZE));
        ring.push(noop()).unwrap();
        assert!(ring.complete(0x10000));
        ring.push(noop()).unwrap();
        ring.push([0, 0, 0, (1 << 10) | CHAIN]).unwrap();
        assert_eq!(read_trb(&ring.buf, 3)[3] & CHAIN, CHAIN);
        assert_eq!(ring.enqueue_pointer(), 0x10000);
        assert!(ring.complete(0x10010));
        ring.push([0, 0, 0, 1 << 10]).unwrap();
        ring.skip_to_enqueue();
        assert_eq!(ring.room(), 2);
    }

    #[test]
    fn a_td_is_queued_whole_with_its_first_cycle_bit_last_or_not_at_all() {
        let mut ring = ProducerRing::new(Memory::new(0x10000, 4 * TRB_SIZE));
        assert_eq!(
            ring.push_td(&[noop(), noop(), noop()]),
            Err(RingError::Full)
        );
        assert_eq!(ring.room(), 2, "nothing queued");
        assert_eq!(ring.push_td(&[noop(), noop()]), Ok(vec![0x10000, 0x10010]));
        assert_eq!(read_trb(&ring.buf, 0)[3] & CYCLE, CYCLE);
        assert_eq!(read_trb(&ring.buf, 1)[3] & CYCLE, CYCLE);
    }

    #[test]
    fn a_ring_the_controller_has_not_drained_is_full() {
        let mut ring = ProducerRing::new(Memory::new(0x10000, 4 * TRB_SIZE));
        assert_eq!(ring.room(), 2);
        ring.push(noop()).unwrap();
        ring.push(noop()).unwrap();
        assert_eq!(ring.room(), 0);
        assert_eq!(ring.push(noop()), Err(RingError::Full));
        assert!(ring.complete(0x10000));
        assert_eq!(ring.room(), 1);
        assert_eq!(ring.push(noop()), Ok(0x10020));
        assert_eq!(ring.room(), 0);
        assert_eq!(ring.push(noop()), Err(RingError::Full));
    }

    #[test]
    fn completions_outside_the_ring_are_refused() {
        let mut ring = ProducerRing::new(Memory::new(0x10000, 4 * TRB_SIZE));
        assert!(!ring.complete(0xfff0));
        assert!(!ring.complete(0x10008));
        assert!(!ring.complete(0x10030), "the Link TRB is never completed");
        assert!(!ring.complete(0x20000));
    }

    fn post(mem: &mut Memory, index: usize, kind: u32, cycle: bool) {
        let base = index * TRB_SIZE;
        mem.write32(base, index as u32);
        mem.write32(base + 12, (kind << 10) | u32::from(cycle));
    }

    #[test]
    fn the_segment_table_describes_the_segment() {
        let ring = EventRing::new(
            Memory::new(0x20000, 16 * TRB_SIZE),
            Memory::new(0x30000, 64),
        );
        assert_eq!(ring.erst_phys(), 0x30000);
        assert_eq!(ring.erst.read32(0), 0x20000);
        assert_eq!(ring.erst.read32(4), 0);
        assert_eq!(ring.erst.read32(8), 16);
        assert_eq!(ring.dequeue_pointer(), 0x20000);
    }

    #[test]
    fn events_are_taken_while_their_cycle_matches_and_the_cycle_flips_at_the_wrap() {
        let mut ring = EventRing::new(
            Memory::new(0x20000, 16 * TRB_SIZE),
            Memory::new(0x30000, 64),
        );
        assert_eq!(ring.pop(), None, "a zeroed ring holds no events");
        for i in 0..16 {
            post(&mut ring.segment, i, 34, true);
        }
        for i in 0..16 {
            assert_eq!(ring.pop().unwrap()[0], i as u32);
        }
        assert_eq!(ring.dequeue_pointer(), 0x20000);
        assert_eq!(ring.pop(), None, "old events of the first lap are stale");
        post(&mut ring.segment, 0, 33, false);
        let e = ring.pop().unwrap();
        assert_eq!((e[3] >> 10) & 0x3f, 33);
        assert_eq!(ring.dequeue_pointer(), 0x20010);
        assert_eq!(ring.pop(), None);
    }

    #[test]
    fn after_cycle_of_and_noop_follow_the_ring_across_its_link() {
        let mut ring = ProducerRing::new(Memory::new(0x1000, 4 * TRB_SIZE));
        let a = ring.push([1, 0, 0, (1 << 10) | CHAIN]).unwrap();
        let b = ring.push([2, 0, 0, 1 << 10]).unwrap();
        assert_eq!(ring.cycle_of(a), Some(true));
        assert_eq!(ring.after(a), Some((b, true)));
        // After the last usable TRB comes the first, past the Link TRB; it is the enqueue
        // pointer, whose Cycle bit is the Producer Cycle State.
        ring.complete(b);
        let c = ring.push([3, 0, 0, 1 << 10]).unwrap();
        assert_eq!(ring.after(c), Some((0x1000, false)));
        assert_eq!(
            ring.after(0x1000 + 3 * TRB_SIZE as u64),
            None,
            "the Link TRB"
        );
        assert_eq!(ring.after(0x1004), None, "not a TRB");
        ring.make_noop(a);
        let t = read_trb(&ring.buf, 0);
        assert_eq!((t[3] >> 10) & 0x3f, TRB_NOOP);
        assert_eq!(t[3] & (CHAIN | CYCLE), CHAIN | CYCLE);
        assert_eq!(t[0], 0);
    }
}
