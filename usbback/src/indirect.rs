//! Indirect requests (`feature-max-indirect-segments`, `docs/pvusb-features.md`): the
//! backend's half of their second decoding step. An indirect request's pages are guest
//! memory, read once into ours before [`Submit::resolve_indirect`] checks what they list, so
//! the frontend cannot change a segment between its check and its use.

use alloc::format;
use alloc::string::String;

use xen::abi::grant_table::GntStatus;
use xen::abi::{GrantRef, PAGE_SIZE};
use xen::hypervisor::{CopyOp, CopyPtr, EventChannels, GrantCopier, GrantMapper, LocalFrames};
use xen::page::SharedPage;
use xen::pvusb::{self, Submit};
use xen::xenstore::XsTransport;

use crate::answers::{copy_failure, run_copies};
use crate::persistent::kept_grants;
use crate::urb::Stage;
use crate::{Backend, DeviceId};

impl<H, T> Backend<H, T>
where
    H: GrantMapper + GrantCopier + LocalFrames + EventChannels,
    H::Page: Clone + SharedPage,
    T: XsTransport,
{
    /// Reads an indirect request's pages (from the kept mapping of a frontend that promised
    /// `feature-persistent`, else by one grant copy into our frame), once, into our memory,
    /// and checks the segments they list ([`Submit::resolve_indirect`]).
    pub(crate) fn read_indirect(
        &mut self,
        id: DeviceId,
        s: &mut Submit,
        stage: &mut Stage,
    ) -> Result<(), String> {
        let Some(pages) = s.indirect.clone() else {
            return Ok(());
        };
        let mut entries = [0u8; pvusb::MAX_INDIRECT_PAGES * PAGE_SIZE];
        for (i, &gref) in pages.pages.iter().enumerate() {
            let at = i * PAGE_SIZE;
            let into = &mut entries[at..at + pages.page_bytes(i)];
            let kept = kept_grants(&self.devices, id);
            if let Some(page) = kept.and_then(|k| k.page(gref)) {
                page.read(0, into);
                continue;
            }
            if kept.is_some_and(|k| k.wants(gref)) {
                stage.keep.push((id, gref));
            }
            self.copy_from_grant(id, gref, into).map_err(|status| {
                format!("reason=indirect_page_copy_failed status={}", status.name())
            })?;
        }
        // Every page but the last is full, so the entries lie end to end.
        let listed = &entries[..pages.entry_bytes()];
        s.resolve_indirect(listed).map_err(|e| format!("{e}"))?;
        if let Some(c) = self.devices.get_mut(&id).and_then(|d| d.conn.as_mut()) {
            c.stats.indirect += 1;
        }
        Ok(())
    }

    /// Copies `into.len()` bytes from the start of `id`'s page `gref` into `into`, through
    /// one of our frames (one grant copy).
    fn copy_from_grant(
        &mut self,
        id: DeviceId,
        gref: GrantRef,
        into: &mut [u8],
    ) -> Result<(), GntStatus> {
        let frames = self
            .pool
            .take(&mut self.hv, 1, id)
            .ok_or(GntStatus::NoSpace)?;
        let result = (|| {
            let gfn = self.pool.gfn(frames[0]).ok_or(GntStatus::GeneralError)?;
            let op = CopyOp {
                source: CopyPtr::Grant {
                    dom: id.frontend,
                    gref,
                    offset: 0,
                },
                dest: CopyPtr::Local { gfn, offset: 0 },
                // At most a page.
                len: into.len() as u16,
            };
            run_copies(&mut self.hv, &[op], &mut self.statuses);
            if let Some(status) = copy_failure(&self.statuses, 0..1) {
                return Err(status);
            }
            let (page, _) = self.pool.page(frames[0]).ok_or(GntStatus::GeneralError)?;
            page.read(0, into);
            Ok(())
        })();
        self.pool.release(frames, &mut self.unmaps);
        result
    }
}
