//! Persistent grants (`feature-persistent`, `docs/pvusb-features.md`), after blkif's. A
//! frontend that promises to keep each grant reference bound to one page, granted writable,
//! for as long as it is connected lets usbdom map its data pages once and keep them: no
//! grant hypercall per URB.
//!
//! A bulk transfer whose every page is kept goes straight to those pages: the device reads
//! and writes the guest's kept pages and nothing is copied (`zero_copy=` in `event=stats`).
//! The reason the copy path bounces through usbdom's own frames, a late DMA through an IOTLB
//! entry that outlives an unmap, does not reach them: a kept mapping is unmapped only when
//! the frontend disconnects, and then only once the host has reported every transfer that
//! reaches it finished (cancelled ones included: `Backend::complete` releases them, from
//! `deferred_unmaps`). Until then the guest cannot hand the page to anyone else, as a page
//! with a live grant mapping stays its own. Other transfers (control, whose answers usbdom
//! reads and rewrites; interrupt; isochronous) and pages not kept yet still go through
//! usbdom's frames, copied by the CPU from and to the kept mapping.
//!
//! Only a frontend's promise makes this safe: Linux hands a freed grant reference out again
//! for another page, so a mapping kept for a frontend that did not promise could show an old
//! page under a reference that now names a new one.

use alloc::collections::{BTreeMap, BTreeSet};
use alloc::vec::Vec;

use xen::abi::GrantRef;
use xen::hypervisor::{EventChannels, GrantMapper, GrantMapping, MapRequest, MAX_GRANT_BATCH};
use xen::page::SharedPage;
use xen::xenstore::XsTransport;

use crate::{Backend, Device, DeviceId};

/// Grants of one frontend kept mapped, at most (4 MiB of its pages); past them its
/// transfers are copied by grant as a stock frontend's are.
pub const MAX_PERSISTENT_GRANTS: usize = 1024;

/// One frontend's kept mappings, by grant reference.
pub struct PersistentGrants<P> {
    mapped: BTreeMap<GrantRef, GrantMapping<P>>,
    /// Grants that would not map writable (the frontend broke its promise, or granted a
    /// page read-only): they are copied, and never asked for again.
    refused: BTreeSet<GrantRef>,
}

impl<P> Default for PersistentGrants<P> {
    fn default() -> Self {
        PersistentGrants {
            mapped: BTreeMap::new(),
            refused: BTreeSet::new(),
        }
    }
}

impl<P> PersistentGrants<P> {
    /// The kept mapping of `gref`, if there is one.
    pub fn page(&self, gref: GrantRef) -> Option<&P> {
        self.mapped.get(&gref).map(|m| &m.page)
    }

    /// The kept mapping of `gref` and the bus address a device reaches it at.
    pub fn dma(&self, gref: GrantRef) -> Option<(&P, u64)> {
        self.mapped.get(&gref).map(|m| (&m.page, m.addr.0))
    }

    /// Whether `gref` is worth mapping to keep: not kept or refused yet, and room left.
    pub fn wants(&self, gref: GrantRef) -> bool {
        !self.mapped.contains_key(&gref)
            && !self.refused.contains(&gref)
            && self.mapped.len() + self.refused.len() < MAX_PERSISTENT_GRANTS
    }

    /// Keeps `m`; one already kept for its reference stays, and past the share nothing more
    /// is kept: `m` then comes back to unmap.
    pub fn keep(&mut self, m: GrantMapping<P>) -> Option<GrantMapping<P>> {
        let gref = m.request.gref;
        if !self.wants(gref) {
            return Some(m);
        }
        self.mapped.insert(gref, m);
        None
    }

    /// Remembers that `gref` would not map.
    pub fn refuse(&mut self, gref: GrantRef) {
        self.refused.insert(gref);
    }

    /// Mappings kept.
    pub fn len(&self) -> usize {
        self.mapped.len()
    }

    /// Whether none is kept.
    pub fn is_empty(&self) -> bool {
        self.mapped.is_empty()
    }

    /// Every kept mapping, to unmap.
    pub fn into_mappings(self) -> Vec<GrantMapping<P>> {
        self.mapped.into_values().collect()
    }
}

/// The grants `id`'s frontend keeps mapped, if it is connected and promised
/// `feature-persistent` (the devices alone are borrowed: the pool and the copy batches stay
/// free beside it).
pub(crate) fn kept_grants<P>(
    devices: &BTreeMap<DeviceId, Device<P>>,
    id: DeviceId,
) -> Option<&PersistentGrants<P>> {
    devices.get(&id)?.conn.as_ref()?.persistent.as_ref()
}

impl<H, T> Backend<H, T>
where
    H: GrantMapper + EventChannels,
    T: XsTransport,
{
    /// Maps, to keep, the grants a pass's copied requests named (`wanted`, emptied) for
    /// frontends that promised `feature-persistent`: from their next request on, their bytes
    /// are copied by the CPU. A grant that will not map writable is copied by grant from then
    /// on.
    pub(crate) fn keep_grants(&mut self, wanted: &mut Vec<(DeviceId, GrantRef)>) {
        if wanted.is_empty() {
            return;
        }
        // A page named twice in a pass is mapped once.
        wanted.sort_unstable();
        wanted.dedup();
        let mut batch = core::mem::take(&mut self.keep_batch);
        for chunk in wanted.chunks(MAX_GRANT_BATCH) {
            batch.clear();
            batch.extend(chunk.iter().map(|&(id, gref)| MapRequest {
                dom: id.frontend,
                gref,
                readonly: false,
            }));
            let Ok(results) = self.hv.map(&batch) else {
                continue;
            };
            for (&(id, gref), result) in chunk.iter().zip(results) {
                let kept = self
                    .devices
                    .get_mut(&id)
                    .and_then(|d| d.conn.as_mut())
                    .and_then(|c| c.persistent.as_mut());
                match (kept, result) {
                    (Some(kept), Ok(m)) => self.unmaps.extend(kept.keep(m)),
                    (None, Ok(m)) => self.unmaps.push(m),
                    (Some(kept), Err(_)) => kept.refuse(gref),
                    (None, Err(_)) => {}
                }
            }
        }
        wanted.clear();
        self.keep_batch = batch;
    }
}

/// Copies `len` bytes at `offset` of `from` to the same place in `to`.
pub fn copy_page_bytes<P: SharedPage>(from: &P, to: &P, offset: usize, len: usize) {
    to.copy_bytes_from(offset, from, offset, len);
}

#[cfg(test)]
mod tests {
    use super::*;
    use xen::abi::{DomId, GuestPhysAddr};
    use xen::hypervisor::{GrantHandle, MapRequest};
    use xen::page::LocalPage;

    fn mapping(gref: u32) -> GrantMapping<LocalPage> {
        GrantMapping {
            request: MapRequest {
                dom: DomId(3),
                gref: GrantRef(gref),
                readonly: false,
            },
            handle: GrantHandle(gref),
            addr: GuestPhysAddr(u64::from(gref) << 12),
            page: LocalPage::new(),
        }
    }

    #[test]
    fn a_frontend_keeps_at_most_its_share_and_nothing_twice() {
        let mut kept = PersistentGrants::default();
        assert!(kept.wants(GrantRef(8)));
        assert!(kept.keep(mapping(8)).is_none());
        assert!(!kept.wants(GrantRef(8)), "kept already");
        assert!(kept.page(GrantRef(8)).is_some());
        // A second mapping of the same reference comes back to be unmapped.
        assert!(kept.keep(mapping(8)).is_some());
        kept.refuse(GrantRef(9));
        assert!(!kept.wants(GrantRef(9)), "refused once, never asked again");
        assert!(kept.page(GrantRef(9)).is_none());
        // Kept and refused together fill the share.
        let mut g = 10;
        while kept.wants(GrantRef(g)) {
            assert!(kept.keep(mapping(g)).is_none());
            g += 1;
        }
        assert_eq!(
            kept.len() + 1,
            MAX_PERSISTENT_GRANTS,
            "no room past the share"
        );
        assert_eq!(kept.into_mappings().len(), MAX_PERSISTENT_GRANTS - 1);
    }

    #[test]
    fn bytes_are_copied_within_the_same_place_of_two_pages() {
        let (a, b) = (LocalPage::new(), LocalPage::new());
        a.write(100, &[1, 2, 3, 4, 5]);
        copy_page_bytes(&a, &b, 101, 3);
        let mut got = [0u8; 6];
        b.read(100, &mut got);
        assert_eq!(got, [0, 2, 3, 4, 0, 0]);
    }
}
