//! What a backend needs from the hypervisor, as traits: grant mapping and copying, and event
//! channels; and what a frontend needs: granting its own pages ([`GrantTable`]). (The
//! xenstore transport is [`crate::xenstore::XsTransport`].)
//!
//! The driver domain implements them with hypercalls; [`crate::sim`] implements them in
//! process. Code above them never sees a hypercall.

use heapless::Vec;

use crate::abi::grant_table::GntStatus;
use crate::abi::{DomId, EvtchnPort, Gfn, GrantRef, GuestPhysAddr};
use crate::page::SharedPage;

/// The most grant operations in one batch: a PVUSB request's segments.
pub const MAX_GRANT_BATCH: usize = crate::abi::usbif::USBIF_MAX_SEGMENTS_PER_REQUEST;

/// A hypercall's negative errno.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Errno(pub i32);

impl Errno {
    /// Operation not permitted.
    pub const EPERM: Errno = Errno(1);
    /// No such domain.
    pub const ESRCH: Errno = Errno(3);
    /// Busy (a grant still mapped).
    pub const EBUSY: Errno = Errno(16);
    /// Invalid argument (bad port, wrong state).
    pub const EINVAL: Errno = Errno(22);
    /// No space left (ports, grant entries).
    pub const ENOSPC: Errno = Errno(28);
    /// Not implemented.
    pub const ENOSYS: Errno = Errno(38);

    /// The errno's name, for logs.
    pub fn name(self) -> &'static str {
        match self {
            Errno::EPERM => "EPERM",
            Errno::ESRCH => "ESRCH",
            Errno::EBUSY => "EBUSY",
            Errno::EINVAL => "EINVAL",
            Errno::ENOSPC => "ENOSPC",
            Errno::ENOSYS => "ENOSYS",
            _ => "errno",
        }
    }
}

impl core::fmt::Display for Errno {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "{}({})", self.name(), self.0)
    }
}

/// One grant to map.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MapRequest {
    /// The granting domain.
    pub dom: DomId,
    /// Its grant reference.
    pub gref: GrantRef,
    /// Map read-only (`GNTMAP_readonly`): required for a read-only grant.
    pub readonly: bool,
}

/// The handle Xen returns for a mapping; needed to unmap it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct GrantHandle(pub u32);

/// A mapped foreign page.
#[derive(Debug)]
pub struct GrantMapping<P> {
    /// What was mapped.
    pub request: MapRequest,
    /// Xen's handle for it.
    pub handle: GrantHandle,
    /// Where it sits in our guest-physical space (also its bus address for device DMA when
    /// Xen reports IOMMU mappings for grants).
    pub addr: GuestPhysAddr,
    /// Access to its bytes.
    pub page: P,
}

/// Results of one map batch, one per request, in order.
pub type MapResults<P> = Vec<Result<GrantMapping<P>, GntStatus>, MAX_GRANT_BATCH>;

/// A batch larger than [`MAX_GRANT_BATCH`]: refused before any hypercall.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BatchTooLarge(pub usize);

/// Mapping other domains' grants into our physical address space.
pub trait GrantMapper {
    /// Access to a mapped page.
    type Page: SharedPage;

    /// Maps every request in one batch (one hypercall). Each result is separate: a failed
    /// entry leaves the others mapped, and the caller unmaps those.
    fn map(&mut self, requests: &[MapRequest]) -> Result<MapResults<Self::Page>, BatchTooLarge>;

    /// Unmaps in one batch. Every mapping is attempted; the first failure is returned.
    fn unmap<I>(&mut self, mappings: I) -> Result<(), GntStatus>
    where
        I: IntoIterator<Item = GrantMapping<Self::Page>>;

    /// How many grants are mapped now, from every granter: what must come back to zero
    /// when the last frontend is gone.
    fn mapped(&self) -> usize;
}

/// The granting side of grant tables, as a frontend uses it: pages of our own memory offered
/// to another domain (`gnttab_grant_foreign_access` and friends).
pub trait GrantTable {
    /// Access to one of our pages.
    type Page: SharedPage + Clone;

    /// A fresh zeroed page of our memory, with its frame number.
    fn alloc_page(&mut self) -> Result<(Gfn, Self::Page), Errno>;
    /// Grants `to` access to our frame `gfn`; `readonly` forbids the grantee to write.
    fn grant_access(&mut self, to: DomId, gfn: Gfn, readonly: bool) -> Result<GrantRef, Errno>;
    /// Revokes a grant; refused (`EBUSY`) while the grantee still has it mapped, as Linux's
    /// `gnttab_try_end_foreign_access` fails on `GTF_reading`/`GTF_writing`.
    fn end_access(&mut self, gref: GrantRef) -> Result<(), Errno>;
    /// Whether the grantee has `gref` mapped (or is copying through it) right now.
    fn grant_in_use(&self, gref: GrantRef) -> bool;
}

/// One side of a grant copy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CopyPtr {
    /// Bytes in a page another domain granted us.
    Grant {
        /// The granting domain.
        dom: DomId,
        /// Its grant reference.
        gref: GrantRef,
        /// Offset within the page.
        offset: u16,
    },
    /// Bytes in one of our own frames.
    Local {
        /// Our frame.
        gfn: Gfn,
        /// Offset within the page.
        offset: u16,
    },
}

/// One `GNTTABOP_copy`: `len` bytes, within one page on each side.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CopyOp {
    /// Where to copy from.
    pub source: CopyPtr,
    /// Where to copy to.
    pub dest: CopyPtr,
    /// Bytes to copy.
    pub len: u16,
}

/// Copying to and from granted pages by the hypervisor, without mapping them.
pub trait GrantCopier {
    /// Runs every op, as few hypercalls as the implementation can (a backend hands it
    /// every copy of a pass at once: a hypercall costs far more than the bytes it moves).
    /// Puts one status per op in `statuses` (emptied first; the caller keeps it, so a
    /// stream of batches allocates nothing), in order; a failed op leaves the others done.
    fn copy(&mut self, ops: &[CopyOp], statuses: &mut alloc::vec::Vec<GntStatus>);
}

/// A frame of our own memory that a device may DMA into: a backend's bounce buffer, which
/// data reaches a guest from by [`GrantCopier::copy`]. A device then never DMAs into another
/// domain's page, so no mapping of one can be reached through a stale IOMMU entry.
#[derive(Clone, Debug)]
pub struct LocalFrame<P> {
    /// Its frame number, for grant copies.
    pub gfn: Gfn,
    /// The address a device reaches its first byte at.
    pub bus_addr: u64,
    /// Access to its bytes.
    pub page: P,
}

/// Frames of our own memory for bounce buffers, of the same page type as grant mappings
/// (the host controller's transfers take either).
pub trait LocalFrames: GrantMapper {
    /// A fresh frame, kept for good (a backend pools them).
    fn alloc_frame(&mut self) -> Result<LocalFrame<Self::Page>, Errno>;
}

/// Event channels (2-level ABI).
pub trait EventChannels {
    /// A new port that `remote` may bind to.
    fn alloc_unbound(&mut self, remote: DomId) -> Result<EvtchnPort, Errno>;
    /// Connects a new local port to `remote_port` of `remote`, which must be unbound and
    /// offered to us.
    fn bind_interdomain(
        &mut self,
        remote: DomId,
        remote_port: EvtchnPort,
    ) -> Result<EvtchnPort, Errno>;
    /// Notifies the other end.
    fn send(&mut self, port: EvtchnPort) -> Result<(), Errno>;
    /// Clears the port's mask; a pending event is then delivered.
    fn unmask(&mut self, port: EvtchnPort) -> Result<(), Errno>;
    /// Closes the port; the other end becomes unbound.
    fn close(&mut self, port: EvtchnPort) -> Result<(), Errno>;
    /// Calls `f` for each pending, unmasked port, lowest first, clearing its pending bit.
    fn take_pending(&mut self, f: &mut dyn FnMut(EvtchnPort));
}
