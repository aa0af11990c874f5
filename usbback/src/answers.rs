//! Answers: each queued with the copies that carry its data to the guest, then all of a flush
//! published together after one batch of copies ([`Backend::finish_answers`]), every grant
//! mapped for their transfers unmapped first.

use alloc::vec::Vec;
use core::ops::Range;

use log::{trace, warn};
use xen::abi::grant_table::GntStatus;
use xen::abi::usbif::*;
use xen::hypervisor::{CopyOp, EventChannels, GrantCopier, GrantMapper, LocalFrames};
use xen::page::SharedPage;
use xen::xenstore::XsTransport;

use crate::bounce::Frames;
use crate::{Backend, DeviceId};

impl<H, T> Backend<H, T>
where
    H: GrantMapper + GrantCopier + LocalFrames + EventChannels,
    H::Page: Clone + SharedPage,
    T: XsTransport,
{
    /// Queues the answer to a request that moved no data.
    pub(crate) fn respond(&mut self, id: DeviceId, rsp: UsbifUrbResponse) {
        self.answers.push(Answer {
            id,
            rsp,
            frames: Frames::new(),
            copies: 0..0,
            inbound: false,
        });
    }

    /// Runs the copies of every queued answer in one batch, then pushes the answers in the
    /// order they were queued (an unlink's right after the request it cancelled) and gives
    /// their frames back. An answer whose copy failed (the frontend revoked its grant) says
    /// so instead.
    pub(crate) fn finish_answers(&mut self) {
        if self.answers.is_empty() && self.unmaps.is_empty() {
            return;
        }
        let mut statuses = core::mem::take(&mut self.statuses);
        run_copies(&mut self.hv, &self.answer_copies, &mut statuses);
        // Drained from a local and put back, so its allocation serves the next flush too.
        let mut answers = core::mem::take(&mut self.answers);
        // Every grant mapped for these transfers is unmapped before any answer is out: a
        // frontend may reuse its pages the moment it sees the answer.
        for a in &mut answers {
            self.pool
                .release(core::mem::take(&mut a.frames), &mut self.unmaps);
        }
        self.unmap_released();
        self.unthrottle();
        for a in answers.drain(..) {
            let mut rsp = a.rsp;
            if let Some(status) = copy_failure(&statuses, a.copies.clone()) {
                self.warn_copy_failed(a.id, rsp.id, "to_frontend", status);
                rsp.status = USBIF_STATUS_IOERROR;
                rsp.actual_length = 0;
            }
            let Some(c) = self.devices.get_mut(&a.id).and_then(|d| d.conn.as_mut()) else {
                continue;
            };
            c.written
                .record(&self.answer_copies, &statuses, a.copies.clone());
            let bytes = u64::try_from(rsp.actual_length).unwrap_or(0);
            for s in [&mut c.stats, &mut self.moved] {
                if rsp.status == USBIF_STATUS_OK {
                    s.completed += 1;
                    s.bytes += bytes;
                    s.bytes_in += if a.inbound { bytes } else { 0 };
                } else {
                    s.errors += 1;
                }
            }
            trace!(
                "event=urb_answered domid={} devid={} id={} status={} bytes={}",
                a.id.frontend,
                a.id.devid,
                rsp.id,
                rsp.status,
                rsp.actual_length
            );
            // Cannot fail: every request is consumed before it is answered, once.
            if c.urb.push_response(&rsp).is_err() {
                warn!(
                    "event=urb_response_dropped domid={} devid={} id={}",
                    a.id.frontend, a.id.devid, rsp.id
                );
            }
        }
        self.answer_copies.clear();
        self.answers = answers;
        self.statuses = statuses;
    }

    /// Serves again, in their turn, the frontends with submissions parked for want of
    /// frames that now have room for the first of them.
    fn unthrottle(&mut self) {
        for (id, d) in &self.devices {
            let fits = d
                .conn
                .as_ref()
                .and_then(|c| c.parked.front())
                .is_some_and(|r| self.pool.has_room_for(*id, crate::bounce::pages_at_most(r)));
            if fits && !self.busy.contains(id) {
                self.busy.push_back(*id);
            }
        }
    }

    /// Unmaps, in one batch, the grants of transfers that are over.
    fn unmap_released(&mut self) {
        if self.unmaps.is_empty() {
            return;
        }
        let count = self.unmaps.len();
        if let Err(s) = self.hv.unmap(self.unmaps.drain(..)) {
            warn!(
                "event=grant_unmap_failed status={} what=transfers count={count}",
                s.name()
            );
        }
    }

    /// `event=urb_grant_copy_failed`, within the frontend's warning budget.
    pub(crate) fn warn_copy_failed(
        &mut self,
        id: DeviceId,
        rid: u16,
        direction: &str,
        status: GntStatus,
    ) {
        if self.may_warn(id) {
            warn!(
                "event=urb_grant_copy_failed domid={} devid={} id={rid} direction={direction} status={}",
                id.frontend,
                id.devid,
                status.name()
            );
        }
    }
}

/// An answer waiting for its copies out and its publication.
pub(crate) struct Answer {
    pub(crate) id: DeviceId,
    pub(crate) rsp: UsbifUrbResponse,
    /// Frames that go back to the pool once the copies are done.
    pub(crate) frames: Frames,
    /// Its copies in [`Backend::answer_copies`].
    pub(crate) copies: Range<usize>,
    /// It carries IN data (device to guest).
    pub(crate) inbound: bool,
}

/// Runs a batch of grant copies in one hypercall (none for an empty batch), their statuses
/// in `statuses`.
pub(crate) fn run_copies<C: GrantCopier + ?Sized>(
    hv: &mut C,
    copies: &[CopyOp],
    statuses: &mut Vec<GntStatus>,
) {
    statuses.clear();
    if !copies.is_empty() {
        hv.copy(copies, statuses);
    }
}

/// The first failed status among `statuses[range]` (a missing one counts as failed).
pub(crate) fn copy_failure(statuses: &[GntStatus], range: Range<usize>) -> Option<GntStatus> {
    range
        .map(|i| statuses.get(i).copied().unwrap_or(GntStatus::GeneralError))
        .find(|s| *s != GntStatus::Okay)
}
