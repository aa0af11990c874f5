//! The data path's buffers: with [`crate::DataPath::Copy`], the default, a guest's data never
//! sits in the guest's own pages while a device works on it. (With [`crate::DataPath::Map`]
//! the pool also holds the guest's grants mapped for a transfer, named like our frames, and
//! hands them back for unmapping when it is over.)
//!
//! Each segment of a request's buffer gets one of our own frames ([`LocalFrame`]) and lies in
//! it at the same offset, so the frames together form the same scatter-gather list the guest
//! described. OUT data and isochronous descriptors are copied in by the hypervisor
//! ([`GrantCopier`]) before the transfer is queued; IN data (only the bytes the device wrote)
//! and isochronous results are copied out before the answer is published. Every copy of a
//! pass goes in one batch.
//!
//! Why copy is the default rather than mapping the guest's grants for the device: a mapping
//! reaches the device through the IOMMU, and an IOTLB entry that outlives the unmap (seen
//! under QEMU's emulated VT-d) lets a late DMA land in a page its owner has since reused —
//! another domain's memory. Our own frames never change owner (and under nested Xen the
//! copies cost an eighth of the maps' time per MiB). A frame goes back to the pool only
//! once the transfer using it has completed: a frontend that disconnects leaves its
//! transfers' frames in quarantine until the host reports them finished. (A frontend's
//! grants kept for `feature-persistent` are the exception: mapped once for the connection,
//! a bulk transfer reaches them directly, [`FrameId::KEPT`]; see [`crate::persistent`].)
//!
//! An IN request's grants are checked before the device is asked for data: a zero-length
//! copy into each, in the pass's batch, unless a copy into that grant of this frontend's
//! succeeded lately ([`WrittenGrants`]): Linux's frontend takes its grant references from a
//! free list and uses the same few again and again, so a stream of reads needs no checks
//! (each cost a hypercall per pass). A grant revoked since is still caught, when the data
//! is copied out: the request is answered with an error and only that frontend's own device
//! did the work.
//!
//! [`GrantCopier`]: xen::hypervisor::GrantCopier

use alloc::collections::BTreeMap;
use alloc::vec::Vec;
use core::ops::Range;

use xen::abi::grant_table::GntStatus;
use xen::abi::usbif::{UsbifUrbRequest, USBIF_MAX_SEGMENTS_PER_REQUEST};
use xen::abi::Gfn;
use xen::abi::{DomId, GrantRef};
use xen::hypervisor::{CopyOp, CopyPtr, GrantMapping, LocalFrame, LocalFrames};
use xen::page::SharedPage;
use xen::pvusb::{RequestSegment, SegList, MAX_INDIRECT_SEGMENTS, USBIF_F_INDIRECT};

use crate::persistent::{copy_page_bytes, PersistentGrants};
use crate::DeviceId;

/// A page of a request's buffer, by its place in the pool: one of our frames, or (with
/// [`crate::DataPath::Map`]) a guest's grant mapped for the transfer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameId(u16);

/// Ids from here on name mapped grants, below it our frames.
const MAPPED: u16 = 0x8000;

impl FrameId {
    /// Not in the pool: the segment's own grant, kept mapped for a frontend that promised
    /// `feature-persistent`, which the device reaches directly ([`crate::persistent`]).
    pub const KEPT: FrameId = FrameId(u16::MAX);
}

/// A request's pages, one per segment: names, not the pages, inline for a stock request, so
/// taking them allocates nothing and moving a request along the path copies little.
pub type Frames = SegList<FrameId>;

/// A request's segments, data then isochronous descriptors.
pub type Segments = SegList<RequestSegment>;

/// Pages of one request, at most: an indirect request's data, or a stock request's data and
/// isochronous descriptors.
pub const MAX_REQUEST_PAGES: usize = {
    let indirect = MAX_INDIRECT_SEGMENTS as usize;
    if indirect > USBIF_MAX_SEGMENTS_PER_REQUEST {
        indirect
    } else {
        USBIF_MAX_SEGMENTS_PER_REQUEST
    }
};

/// The most pages of the pool `raw` can take, from its header alone (decoding checks it
/// against what the request holds): an indirect request's data segments, a stock request's
/// most. A frontend's submission waits while this would take it past its share: with the
/// most any request can take instead, a small pool's share is one such request, and a
/// frontend holding one page (a keyboard's poll, waiting for a key) could send nothing more.
pub fn pages_at_most(raw: &UsbifUrbRequest) -> usize {
    if raw.transfer_flags & USBIF_F_INDIRECT != 0 {
        usize::from(raw.nr_buffer_segs).min(MAX_REQUEST_PAGES)
    } else {
        USBIF_MAX_SEGMENTS_PER_REQUEST
    }
}

/// How many grant references of a frontend [`WrittenGrants`] remembers: a ring's worth of
/// requests of 16 segments.
const WRITTEN_GRANTS: usize = 256;

/// Grant references of one frontend that a copy into lately succeeded, direct-mapped by
/// reference (a newer one takes an older one's place): what [`Buffer::probe_data`] need
/// not check again.
pub struct WrittenGrants {
    slots: [Option<GrantRef>; WRITTEN_GRANTS],
}

impl Default for WrittenGrants {
    fn default() -> Self {
        WrittenGrants {
            slots: [None; WRITTEN_GRANTS],
        }
    }
}

impl WrittenGrants {
    fn slot(gref: GrantRef) -> usize {
        gref.0 as usize % WRITTEN_GRANTS
    }

    /// Whether a copy into `gref` succeeded lately.
    pub fn contains(&self, gref: GrantRef) -> bool {
        self.slots[Self::slot(gref)] == Some(gref)
    }

    /// Records what a batch did to the grants written by `ops[range]`, whose outcomes are
    /// `statuses[range]` (a missing one counts as failed).
    pub fn record(&mut self, ops: &[CopyOp], statuses: &[GntStatus], range: Range<usize>) {
        for i in range {
            if let Some(CopyOp {
                dest: CopyPtr::Grant { gref, .. },
                ..
            }) = ops.get(i)
            {
                let gref = *gref;
                let slot = &mut self.slots[Self::slot(gref)];
                if statuses.get(i) == Some(&GntStatus::Okay) {
                    *slot = Some(gref);
                } else if *slot == Some(gref) {
                    *slot = None;
                }
            }
        }
    }
}

/// The most frames the pool grows to (16 MiB): a ring's worth of 16-page requests for each of
/// 16 frontends at once. Past it a request is answered with an error rather than the
/// driver domain running out of memory. A driver domain with less memory sets a lower
/// limit ([`FramePool::set_limit`]), so the pool never takes the frames the controller
/// driver needs for the next device plugged in.
pub const MAX_POOL_FRAMES: usize = 4096;

/// Pages one frontend may hold at once, frames and mappings together (4 MiB with the full
/// pool): a quarter of the pool's limit, so a frontend that keeps its ring full of megabyte
/// requests leaves the pool to three more doing the same, and never less than one request's
/// [`MAX_REQUEST_PAGES`]. Past it the frontend's submissions wait, taken off its ring
/// ([`FramePool::has_room_for`]), until its transfers give pages back; its unlinks
/// are served meanwhile.
pub const FRONTEND_PAGE_SHARE: usize = MAX_POOL_FRAMES / 4;

/// Frames for bounce buffers: taken from the hypervisor layer on demand, up to
/// [`MAX_POOL_FRAMES`], and reused after; and the grants mapped for transfers that go
/// straight to a guest's pages ([`crate::DataPath::Map`]), until they are unmapped. Each page
/// handed out is counted against the frontend it was taken for.
pub struct FramePool<P> {
    frames: Vec<LocalFrame<P>>,
    free: Vec<FrameId>,
    mapped: Vec<Option<GrantMapping<P>>>,
    mapped_free: Vec<u16>,
    /// Who holds each frame, and each mapping, handed out.
    frame_owner: Vec<Option<DeviceId>>,
    mapped_owner: Vec<Option<DeviceId>>,
    /// Pages held, by frontend (none held: no entry).
    held_by: BTreeMap<DeviceId, usize>,
    /// The most frames it takes from the hypervisor layer.
    limit: usize,
}

impl<P> Default for FramePool<P> {
    fn default() -> Self {
        FramePool {
            limit: MAX_POOL_FRAMES,
            frames: Vec::new(),
            free: Vec::new(),
            mapped: Vec::new(),
            mapped_free: Vec::new(),
            frame_owner: Vec::new(),
            mapped_owner: Vec::new(),
            held_by: BTreeMap::new(),
        }
    }
}

impl<P> FramePool<P> {
    /// Grows to at most `frames` frames from now on, within [`MAX_REQUEST_PAGES`] (one
    /// request fits) and [`MAX_POOL_FRAMES`]; returns the limit taken. Frames taken already
    /// stay.
    pub fn set_limit(&mut self, frames: usize) -> usize {
        self.limit = frames.clamp(MAX_REQUEST_PAGES, MAX_POOL_FRAMES);
        self.limit
    }

    /// The most frames it grows to.
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Pages one frontend may hold at once: [`FRONTEND_PAGE_SHARE`] of the full pool, a
    /// quarter of a smaller one, never less than one request.
    pub fn share(&self) -> usize {
        (self.limit / 4).max(MAX_REQUEST_PAGES)
    }

    /// `n` frames (at most [`MAX_REQUEST_PAGES`]) for `owner`, all or none.
    pub fn take<H: LocalFrames<Page = P>>(
        &mut self,
        hv: &mut H,
        n: usize,
        owner: DeviceId,
    ) -> Option<Frames> {
        if n > MAX_REQUEST_PAGES {
            return None;
        }
        while self.free.len() < n {
            if self.frames.len() >= self.limit {
                return None;
            }
            let frame = hv.alloc_frame().ok()?;
            // Below MAX_POOL_FRAMES, which fits.
            self.free.push(FrameId(self.frames.len() as u16));
            self.frames.push(frame);
            self.frame_owner.push(None);
        }
        let at = self.free.len() - n;
        let frames: Frames = self.free.drain(at..).collect();
        for id in &frames {
            self.frame_owner[usize::from(id.0)] = Some(owner);
        }
        self.count(owner, n, true);
        Some(frames)
    }

    /// Holds a mapped grant for `owner`'s transfer; its id names it until
    /// [`FramePool::release`]. None when [`MAX_POOL_FRAMES`] are held already (the caller
    /// unmaps it).
    pub fn hold_mapping(
        &mut self,
        m: GrantMapping<P>,
        owner: DeviceId,
    ) -> Result<FrameId, GrantMapping<P>> {
        let i = if let Some(i) = self.mapped_free.pop() {
            self.mapped[usize::from(i)] = Some(m);
            self.mapped_owner[usize::from(i)] = Some(owner);
            i
        } else {
            if self.mapped.len() >= MAX_POOL_FRAMES {
                return Err(m);
            }
            // Below MAX_POOL_FRAMES, which fits beside the MAPPED bit.
            let i = self.mapped.len() as u16;
            self.mapped.push(Some(m));
            self.mapped_owner.push(Some(owner));
            i
        };
        self.count(owner, 1, true);
        Ok(FrameId(MAPPED | i))
    }

    /// Pages whose transfer is over: our frames go back to the pool, mapped grants into
    /// `unmap`, for the caller to unmap (in one batch with others).
    pub fn release(&mut self, frames: Frames, unmap: &mut Vec<GrantMapping<P>>) {
        for id in frames {
            if id == FrameId::KEPT {
                continue;
            }
            let index = usize::from(id.0 & !MAPPED);
            let owner = if id.0 & MAPPED == 0 {
                let Some(owner) = self.frame_owner.get_mut(index).and_then(Option::take) else {
                    continue;
                };
                self.free.push(id);
                owner
            } else {
                let Some(m) = self.mapped.get_mut(index).and_then(Option::take) else {
                    continue;
                };
                self.mapped_free.push(id.0 & !MAPPED);
                unmap.push(m);
                let Some(owner) = self.mapped_owner.get_mut(index).and_then(Option::take) else {
                    continue;
                };
                owner
            };
            self.count(owner, 1, false);
        }
    }

    fn count(&mut self, owner: DeviceId, n: usize, taken: bool) {
        let held = self.held_by.entry(owner).or_insert(0);
        *held = if taken {
            *held + n
        } else {
            held.saturating_sub(n)
        };
        if *held == 0 {
            self.held_by.remove(&owner);
        }
    }

    /// Pages `owner` holds (in flight, waiting to be answered, or quarantined).
    pub fn held_by(&self, owner: DeviceId) -> usize {
        self.held_by.get(&owner).copied().unwrap_or(0)
    }

    /// Whether `owner` may take `pages` more without going past its [`FramePool::share`].
    pub fn has_room_for(&self, owner: DeviceId, pages: usize) -> bool {
        self.held_by(owner) + pages <= self.share()
    }

    /// The page `id` names and the address a device reaches it at; None for an id that
    /// names nothing (never handed out, or released).
    pub fn page(&self, id: FrameId) -> Option<(&P, u64)> {
        if id.0 & MAPPED == 0 {
            let f = self.frames.get(usize::from(id.0))?;
            Some((&f.page, f.bus_addr))
        } else {
            let m = self.mapped.get(usize::from(id.0 & !MAPPED))?.as_ref()?;
            Some((&m.page, m.addr.0))
        }
    }

    /// The frame number of our frame `id`, for a grant copy; None for a mapped grant.
    pub(crate) fn gfn(&self, id: FrameId) -> Option<Gfn> {
        (id.0 & MAPPED == 0)
            .then(|| self.frames.get(usize::from(id.0)).map(|f| f.gfn))
            .flatten()
    }

    /// Frames and mappings handed out and not given back (in flight or quarantined).
    pub fn held(&self) -> usize {
        self.frames.len() - self.free.len() + self.mapped.len() - self.mapped_free.len()
    }
}

/// Which way a copy goes.
#[derive(Clone, Copy)]
enum Toward {
    /// From the guest's grant into our frame.
    Frame,
    /// From our frame into the guest's grant.
    Guest,
}

/// A request's buffer in our frames: data segments first, then isochronous descriptor
/// segments, each in its own frame at the guest's offset.
pub struct Buffer {
    /// The guest's granting domain.
    pub dom: DomId,
    /// One frame per segment.
    pub frames: Frames,
    /// The guest's segments, in the same order.
    pub segments: Segments,
    /// How many of them are data (the rest are isochronous descriptors).
    pub data: usize,
}

impl Buffer {
    /// Whether the device reaches the frontend's kept pages directly (every page of a
    /// zero-copy transfer is [`FrameId::KEPT`], and no other's is).
    pub fn reaches_kept_pages(&self) -> bool {
        self.frames.first() == Some(&FrameId::KEPT)
    }

    /// Total data bytes.
    pub fn data_len(&self) -> usize {
        self.segments[..self.data]
            .iter()
            .map(|s| usize::from(s.length))
            .sum()
    }

    /// Copies of every data segment into its frame (OUT data). A segment whose grant is
    /// kept mapped (`kept`) is copied at once, by the CPU.
    pub fn copy_in_data<P: SharedPage>(
        &self,
        pool: &FramePool<P>,
        kept: Option<&PersistentGrants<P>>,
        ops: &mut Vec<CopyOp>,
    ) {
        self.copy_in(pool, kept, 0..self.data, ops);
    }

    /// Copies of every descriptor segment into its frame.
    pub fn copy_in_descriptors<P: SharedPage>(
        &self,
        pool: &FramePool<P>,
        kept: Option<&PersistentGrants<P>>,
        ops: &mut Vec<CopyOp>,
    ) {
        self.copy_in(pool, kept, self.data..self.segments.len(), ops);
    }

    fn copy_in<P: SharedPage>(
        &self,
        pool: &FramePool<P>,
        kept: Option<&PersistentGrants<P>>,
        which: Range<usize>,
        ops: &mut Vec<CopyOp>,
    ) {
        for i in which {
            let s = self.segments[i];
            ops.extend(self.copy(pool, kept, i, s.offset, s.length, Toward::Frame));
        }
    }

    /// Zero-length copies into every data segment whose grant is not among `written`: the
    /// hypervisor checks each grant is writable (and the frontend's) without moving a byte,
    /// in the same batch as the pass's other copies, so an IN transfer with a grant never
    /// written to never reaches the device. A grant kept mapped writable needs no probe.
    pub fn probe_data<P: SharedPage>(
        &self,
        pool: &FramePool<P>,
        kept: Option<&PersistentGrants<P>>,
        ops: &mut Vec<CopyOp>,
        written: &WrittenGrants,
    ) {
        for i in 0..self.data {
            let s = self.segments[i];
            let mapped = kept.is_some_and(|k| k.page(s.gref).is_some());
            if !written.contains(s.gref) && !mapped {
                ops.extend(self.copy(pool, None, i, s.offset, 0, Toward::Guest));
            }
        }
    }

    /// Copies of data bytes `at..at + len` back to the guest (what a device wrote).
    pub fn copy_out_data<P: SharedPage>(
        &self,
        pool: &FramePool<P>,
        kept: Option<&PersistentGrants<P>>,
        at: usize,
        len: usize,
        ops: &mut Vec<CopyOp>,
    ) {
        self.for_range(0..self.data, at, len, |i, offset, range| {
            // Within one page: both fit in 16 bits.
            let (offset, len) = (offset as u16, range.len() as u16);
            ops.extend(self.copy(pool, kept, i, offset, len, Toward::Guest));
        });
    }

    /// Copies of every descriptor segment back to the guest (isochronous results).
    pub fn copy_out_descriptors<P: SharedPage>(
        &self,
        pool: &FramePool<P>,
        kept: Option<&PersistentGrants<P>>,
        ops: &mut Vec<CopyOp>,
    ) {
        for i in self.data..self.segments.len() {
            let s = self.segments[i];
            ops.extend(self.copy(pool, kept, i, s.offset, s.length, Toward::Guest));
        }
    }

    /// The copy of `len` bytes at `offset` of segment `i` between the guest's grant and our
    /// frame; none for a segment whose page is a mapped grant (nothing to copy), or whose
    /// grant is kept mapped (copied here, by the CPU).
    fn copy<P: SharedPage>(
        &self,
        pool: &FramePool<P>,
        kept: Option<&PersistentGrants<P>>,
        i: usize,
        offset: u16,
        len: u16,
        toward: Toward,
    ) -> Option<CopyOp> {
        let gfn = pool.gfn(self.frames[i])?;
        let kept = kept.and_then(|k| k.page(self.segments[i].gref));
        if let (Some(guest), Some((frame, _))) = (kept, pool.page(self.frames[i])) {
            let (from, to) = match toward {
                Toward::Frame => (guest, frame),
                Toward::Guest => (frame, guest),
            };
            copy_page_bytes(from, to, usize::from(offset), usize::from(len));
            return None;
        }
        let frame = CopyPtr::Local { gfn, offset };
        let grant = CopyPtr::Grant {
            dom: self.dom,
            gref: self.segments[i].gref,
            offset,
        };
        let (source, dest) = match toward {
            Toward::Frame => (grant, frame),
            Toward::Guest => (frame, grant),
        };
        Some(CopyOp { source, dest, len })
    }

    /// Reads data bytes from `at` into `buf` (what lies past the end is left as it was).
    pub fn read_data<P: SharedPage>(&self, pool: &FramePool<P>, at: usize, buf: &mut [u8]) {
        let len = buf.len();
        self.for_range(0..self.data, at, len, |i, offset, range| {
            if let Some((page, _)) = pool.page(self.frames[i]) {
                page.read(offset, &mut buf[range]);
            }
        });
    }

    /// Writes data bytes from `at` (what would run past the end is not written).
    pub fn write_data<P: SharedPage>(&self, pool: &FramePool<P>, at: usize, data: &[u8]) {
        self.for_range(0..self.data, at, data.len(), |i, offset, range| {
            if let Some((page, _)) = pool.page(self.frames[i]) {
                page.write(offset, &data[range]);
            }
        });
    }

    /// Reads descriptor bytes from `at`.
    pub fn read_descriptors<P: SharedPage>(&self, pool: &FramePool<P>, at: usize, buf: &mut [u8]) {
        let len = buf.len();
        let all = self.data..self.segments.len();
        self.for_range(all, at, len, |i, offset, range| {
            if let Some((page, _)) = pool.page(self.frames[i]) {
                page.read(offset, &mut buf[range]);
            }
        });
    }

    /// Writes descriptor bytes from `at`.
    pub fn write_descriptors<P: SharedPage>(&self, pool: &FramePool<P>, at: usize, data: &[u8]) {
        let all = self.data..self.segments.len();
        self.for_range(all, at, data.len(), |i, offset, range| {
            if let Some((page, _)) = pool.page(self.frames[i]) {
                page.write(offset, &data[range]);
            }
        });
    }

    /// Calls `f` with (segment index, offset in its page, range of `0..len`) for each piece
    /// of bytes `at..at + len` of the buffer made of segments `which`.
    fn for_range(
        &self,
        which: Range<usize>,
        at: usize,
        len: usize,
        mut f: impl FnMut(usize, usize, Range<usize>),
    ) {
        let mut skip = at;
        let mut done = 0;
        for i in which {
            if done == len {
                break;
            }
            let s = self.segments[i];
            let length = usize::from(s.length);
            if skip >= length {
                skip -= length;
                continue;
            }
            let n = (length - skip).min(len - done);
            f(i, usize::from(s.offset) + skip, done..done + n);
            done += n;
            skip = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use xen::abi::GrantRef;
    use xen::page::LocalPage;
    use xen::sim::Xen;

    fn buffer() -> (FramePool<LocalPage>, Buffer) {
        let mut pool = FramePool::default();
        let frames = pool.take(&mut Xen::new().create_domain(), 3, A).unwrap();
        let seg = |gref, offset, length| RequestSegment {
            gref: GrantRef(gref),
            offset,
            length,
        };
        let b = Buffer {
            dom: DomId(5),
            frames,
            // 96 bytes at the end of one page, then 10 at the start of the next; one
            // descriptor segment.
            segments: [seg(10, 4000, 96), seg(11, 0, 10), seg(12, 64, 32)]
                .into_iter()
                .collect(),
            data: 2,
        };
        (pool, b)
    }

    #[test]
    fn data_crosses_segments_at_their_offsets() {
        let (pool, b) = buffer();
        assert_eq!(b.data_len(), 106);
        let bytes: Vec<u8> = (0..106).collect();
        b.write_data(&pool, 0, &bytes);
        let mut back = [0u8; 20];
        b.read_data(&pool, 90, &mut back);
        assert_eq!(back[..16], bytes[90..106]);
        let mut tail = [0u8; 10];
        pool.page(b.frames[1]).unwrap().0.read(0, &mut tail);
        assert_eq!(tail[..], bytes[96..106]);
    }

    #[test]
    fn copy_out_takes_only_the_bytes_asked_for() {
        let (pool, b) = buffer();
        let mut ops = Vec::new();
        b.copy_out_data(&pool, None, 90, 10, &mut ops);
        assert_eq!(ops.len(), 2);
        assert_eq!(
            ops[0].dest,
            CopyPtr::Grant {
                dom: DomId(5),
                gref: GrantRef(10),
                offset: 4090
            }
        );
        assert_eq!(ops[0].len, 6);
        assert_eq!(
            ops[1].source,
            CopyPtr::Local {
                gfn: pool.gfn(b.frames[1]).unwrap(),
                offset: 0
            }
        );
        assert_eq!(ops[1].len, 4);
        let mut ops = Vec::new();
        b.copy_in_descriptors(&pool, None, &mut ops);
        assert_eq!(ops.len(), 1);
        assert_eq!(
            ops[0].dest,
            CopyPtr::Local {
                gfn: pool.gfn(b.frames[2]).unwrap(),
                offset: 64
            }
        );
    }

    const A: DeviceId = DeviceId {
        frontend: DomId(5),
        devid: 0,
    };
    const B: DeviceId = DeviceId {
        frontend: DomId(6),
        devid: 0,
    };

    #[test]
    fn frames_given_back_are_taken_again_and_the_pool_stops_at_its_cap() {
        let mut dom = Xen::new().create_domain();
        let mut pool: FramePool<LocalPage> = FramePool::default();
        let a = pool.take(&mut dom, 16, A).unwrap();
        assert_eq!(pool.held(), 16);
        assert!(
            pool.take(&mut dom, MAX_REQUEST_PAGES + 1, A).is_none(),
            "more than a request's pages"
        );
        let mut unmap = Vec::new();
        pool.release(a.clone(), &mut unmap);
        assert!(unmap.is_empty(), "our frames are not unmapped");
        let b = pool.take(&mut dom, 16, A).unwrap();
        let sorted = |f: &Frames| {
            let mut v: Vec<u16> = f.iter().map(|id| id.0).collect();
            v.sort_unstable();
            v
        };
        assert_eq!(sorted(&a), sorted(&b), "the same frames, no new ones");
        let owners = [A, B, DeviceId { devid: 1, ..A }, DeviceId { devid: 1, ..B }];
        for owner in owners.iter().cycle() {
            if pool.held() + 16 > MAX_POOL_FRAMES {
                break;
            }
            pool.take(&mut dom, 16, *owner).unwrap();
        }
        assert!(
            pool.take(&mut dom, 16, A).is_none(),
            "capped at MAX_POOL_FRAMES"
        );
    }

    #[test]
    fn a_smaller_limit_caps_the_frames_taken_and_each_frontends_share() {
        let mut dom = Xen::new().create_domain();
        let mut pool: FramePool<LocalPage> = FramePool::default();
        assert_eq!(pool.share(), FRONTEND_PAGE_SHARE);
        assert_eq!(
            pool.set_limit(1),
            MAX_REQUEST_PAGES,
            "one request always fits"
        );
        assert_eq!(pool.set_limit(usize::MAX), MAX_POOL_FRAMES);
        assert_eq!(pool.set_limit(2048), 2048);
        assert_eq!(pool.share(), 512);
        let mut held = Vec::new();
        while pool.has_room_for(A, MAX_REQUEST_PAGES) {
            held.push(pool.take(&mut dom, MAX_REQUEST_PAGES, A).unwrap());
        }
        assert_eq!(pool.held_by(A), 512);
        let owners = [B, DeviceId { devid: 1, ..A }, DeviceId { devid: 1, ..B }];
        for owner in owners {
            while pool.has_room_for(owner, MAX_REQUEST_PAGES) {
                held.push(pool.take(&mut dom, MAX_REQUEST_PAGES, owner).unwrap());
            }
        }
        assert_eq!(pool.held(), 2048);
        let late = DeviceId { devid: 2, ..A };
        assert!(pool.has_room_for(late, MAX_REQUEST_PAGES));
        assert!(
            pool.take(&mut dom, 1, late).is_none(),
            "no frame past the limit, though within its share"
        );
    }

    #[test]
    fn each_frontend_is_held_to_its_share_and_gets_it_back() {
        let mut dom = Xen::new().create_domain();
        let mut pool: FramePool<LocalPage> = FramePool::default();
        let mut held = Vec::new();
        while pool.has_room_for(A, MAX_REQUEST_PAGES) {
            held.push(pool.take(&mut dom, MAX_REQUEST_PAGES, A).unwrap());
        }
        assert!(pool.held_by(A) <= FRONTEND_PAGE_SHARE);
        assert!(pool.held_by(A) + MAX_REQUEST_PAGES > FRONTEND_PAGE_SHARE);
        assert_eq!(pool.held_by(B), 0, "another frontend's count is its own");
        assert!(pool.has_room_for(B, MAX_REQUEST_PAGES));
        let mut unmap = Vec::new();
        let first = held.remove(0);
        // Given back twice: counted once.
        pool.release(first.clone(), &mut unmap);
        pool.release(first, &mut unmap);
        assert!(pool.has_room_for(A, MAX_REQUEST_PAGES));
        for f in held {
            pool.release(f, &mut unmap);
        }
        assert_eq!(pool.held_by(A), 0);
        assert_eq!(pool.held(), 0);
    }
}
