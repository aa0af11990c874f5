//! Transfers on the endpoints' Transfer Rings: TDs of bulk, interrupt, control and
//! isochronous transfers queued, their completions taken or waited for, a transfer
//! cancelled (xHCI 4.6.9), endpoints a transfer error halted (4.10.2.1) reset (4.6.8); and
//! the control requests the driver makes itself (USB 2.0 9.3).

use alloc::vec::Vec;

use log::{debug, info};
use usb::request::CLEAR_FEATURE;
use usb::{feature, request_type, Direction, IsoPacket, SetupPacket, Speed, TransferType};
use xhci::ring::trb::command;

use super::registers::MFINDEX;
use super::td::{PendingTd, TdKind};
use super::{alloc, Completed, Controller, Error, IsoOutcome, TransferId};
use crate::descriptor::Endpoint;
use crate::hal::{DmaBuffer, Hal};
use crate::ring::ProducerRing;
use crate::transfer::{
    control_trbs, interval, isoch_slot, isoch_trbs, max_esit_payload, normal_td, DmaSegment,
    TransferTrbs,
};

/// A control transfer to a device that answers.
pub const TRANSFER_TIMEOUT_US: u64 = 100_000;

/// An endpoint with its Transfer Ring: the Default Control Endpoint, or one a configuration
/// or alternate setting added.
pub(super) struct EndpointRing<D> {
    /// Device Context Index.
    pub(super) dci: u8,
    /// Its descriptor (EP0's is made up from the device descriptor).
    pub(super) endpoint: Endpoint,
    pub(super) ring: ProducerRing<D>,
    /// Transfers queued, oldest first.
    pub(super) pending: Vec<PendingTd>,
    /// A transfer ended in an error that halts the endpoint (4.10.2.1): it must be reset
    /// before the rest run.
    pub(super) halted: bool,
    /// Where a Stop Endpoint found a transfer in progress (its Stopped event).
    pub(super) stopped_at: Option<u64>,
    /// The microframe after the last isochronous transfer queued: where the next one
    /// starts while that one is still queued (`transfer::isoch_slot`).
    pub(super) isoch_next: u16,
}

impl<H: Hal> Controller<H> {
    /// DMA memory from the platform, for transfer buffers.
    pub fn dma_alloc(&mut self, bytes: usize, align: usize) -> Result<H::Dma, Error> {
        alloc(&mut self.hal, bytes, align)
    }

    /// Completes `td`, taken off its endpoint, with `result` (every isochronous packet too).
    pub(super) fn finish(&mut self, td: PendingTd, result: Result<usize, Error>) {
        let status = result.map(|_| ());
        let packets = td
            .packets
            .iter()
            .map(|p| {
                p.unwrap_or(IsoOutcome {
                    actual_length: 0,
                    status,
                })
            })
            .collect();
        self.completions.push((
            td.id,
            Completed {
                result,
                packets,
                start_frame: td.start_frame,
            },
        ));
    }

    /// A control request without a Data Stage on the device's Default Control Endpoint:
    /// class requests such as HID SET_PROTOCOL and SET_IDLE.
    pub fn control(
        &mut self,
        slot_id: u8,
        request_type: u8,
        request: u8,
        value: u16,
        w_index: u16,
    ) -> Result<(), Error> {
        self.control_no_data(slot_id, request_type, request, value, w_index)
    }

    /// The slot index and Device Context Index of endpoint `endpoint` (1..=15) in
    /// `direction`.
    fn endpoint_index(
        &self,
        slot_id: u8,
        endpoint: u8,
        direction: Direction,
    ) -> Result<(usize, usize), Error> {
        if endpoint == 0 || endpoint > 15 {
            return Err(Error::NoEndpoint);
        }
        let dci = 2 * endpoint + u8::from(direction == Direction::In);
        let index = self.slot_index(slot_id)?;
        let e = self.slots[index]
            .endpoints
            .iter()
            .position(|e| e.dci == dci)
            .ok_or(Error::NoEndpoint)?;
        Ok((index, e))
    }

    /// Queues a bulk or interrupt transfer over `segments` on endpoint `endpoint` (1..=15)
    /// in `direction`, and rings its doorbell. Its result is taken with
    /// [`Controller::take_completion`] or [`Controller::take_completed`] once
    /// [`Controller::poll_events`] (or a wait for another event) has seen it. The segments
    /// must stay untouched until then.
    pub fn queue_transfer(
        &mut self,
        slot_id: u8,
        endpoint: u8,
        direction: Direction,
        segments: &[DmaSegment],
    ) -> Result<TransferId, Error> {
        let (index, e) = self.endpoint_index(slot_id, endpoint, direction)?;
        let ep = &self.slots[index].endpoints[e];
        if !matches!(
            ep.endpoint.transfer_type,
            TransferType::Bulk | TransferType::Interrupt
        ) {
            return Err(Error::BadTransfer);
        }
        let trbs =
            normal_td(segments, ep.endpoint.max_packet_size).map_err(|_| Error::BadTransfer)?;
        self.queue_trbs(index, e, trbs, TdKind::Normal, 0)
    }

    /// Queues a control transfer on the Default Control Endpoint: `setup` is the SETUP
    /// packet, `segments` the Data Stage's buffer (empty for none) in `direction` (bit 7 of
    /// bmRequestType). Completes as [`Controller::queue_transfer`]'s transfers do; a STALL
    /// (a request the device refuses) resets the endpoint for the next one.
    pub fn queue_control(
        &mut self,
        slot_id: u8,
        setup: [u8; 8],
        direction: Direction,
        segments: &[DmaSegment],
    ) -> Result<TransferId, Error> {
        let index = self.slot_index(slot_id)?;
        let mps = self.slots[index].endpoints[0].endpoint.max_packet_size;
        let trbs = control_trbs(setup, direction, segments, mps).map_err(|_| Error::BadTransfer)?;
        self.queue_trbs(index, 0, trbs, TdKind::Control, 0)
    }

    /// Queues an isochronous transfer: `packets` name their bytes in the buffer `segments`,
    /// each its own TD with its own outcome ([`Completed::packets`]); the transfer starts
    /// as soon as the controller can schedule it.
    pub fn queue_isochronous(
        &mut self,
        slot_id: u8,
        endpoint: u8,
        direction: Direction,
        segments: &[DmaSegment],
        packets: &[IsoPacket],
    ) -> Result<TransferId, Error> {
        let (index, e) = self.endpoint_index(slot_id, endpoint, direction)?;
        let speed = self.slots[index].speed;
        let ep = &self.slots[index].endpoints[e].endpoint;
        if ep.transfer_type != TransferType::Isochronous {
            return Err(Error::BadTransfer);
        }
        let burst = if matches!(speed, Speed::Super | Speed::SuperPlus) {
            ep.max_burst
        } else {
            0
        };
        let trbs = isoch_trbs(
            segments,
            packets,
            direction,
            ep.max_packet_size,
            burst,
            max_esit_payload(ep, speed) as usize,
        )
        .map_err(|_| Error::BadTransfer)?;
        // Queued behind transfers still on the ring, it starts where they end; else at the
        // first interval the controller can still schedule after MFINDEX.
        let ring = &self.slots[index].endpoints[e];
        let behind = (!ring.pending.is_empty()).then_some(ring.isoch_next);
        let slot = isoch_slot(
            self.hal.read32(self.caps.rtsoff + MFINDEX) as u16,
            self.caps.ist,
            interval(ep, speed),
            packets.len(),
            behind,
        );
        let id = self.queue_trbs(index, e, trbs, TdKind::Isochronous, slot.start_frame(speed))?;
        self.slots[index].endpoints[e].isoch_next = slot.next;
        Ok(id)
    }

    /// Puts a transfer's TRBs on endpoint `e` of slot `index` and rings its doorbell (a
    /// halted endpoint's is rung once it is reset).
    fn queue_trbs(
        &mut self,
        index: usize,
        e: usize,
        trbs: TransferTrbs,
        kind: TdKind,
        start_frame: u16,
    ) -> Result<TransferId, Error> {
        let id = TransferId(self.next_transfer);
        let slot = &mut self.slots[index];
        let slot_id = slot.slot_id;
        let ep = &mut slot.endpoints[e];
        let packets = if kind == TdKind::Isochronous {
            trbs.info.last().map_or(0, |i| usize::from(i.packet) + 1)
        } else {
            0
        };
        let at = ep.ring.push_td(&trbs.trbs)?;
        ep.pending.push(PendingTd {
            id,
            trbs: at.into_iter().zip(trbs.info).collect(),
            kind,
            short: None,
            packets: alloc::vec![None; packets],
            start_frame,
        });
        self.next_transfer += 1;
        let (dci, halted) = (ep.dci, ep.halted);
        if !halted {
            self.ring_doorbell(slot_id, u32::from(dci));
        }
        Ok(id)
    }

    /// The result of a finished transfer: the bytes transferred (fewer than queued after a
    /// short packet), or why it failed. `None` while it runs.
    pub fn take_completion(&mut self, id: TransferId) -> Option<Result<usize, Error>> {
        let i = self.completions.iter().position(|c| c.0 == id)?;
        Some(self.completions.remove(i).1.result)
    }

    /// Transfer `id`'s outcome with its isochronous packets, once it finished.
    pub fn take_completed_of(&mut self, id: TransferId) -> Option<Completed> {
        let i = self.completions.iter().position(|c| c.0 == id)?;
        Some(self.completions.remove(i).1)
    }

    /// The oldest finished transfer not taken yet.
    pub fn take_completed(&mut self) -> Option<(TransferId, Completed)> {
        (!self.completions.is_empty()).then(|| self.completions.remove(0))
    }

    /// Waits up to `timeout_us` for transfer `id` (handling every other event meanwhile);
    /// one that does not finish in time is cancelled and [`Error::Timeout`] returned.
    pub fn wait(&mut self, id: TransferId, timeout_us: u64) -> Result<usize, Error> {
        let until = (self.hal.now_micros() + timeout_us).min(self.deadline.unwrap_or(u64::MAX));
        loop {
            if let Some(result) = self.take_completion(id) {
                return result;
            }
            match self.next_event(until, "transfer") {
                Ok(e) => {
                    self.keep_event(e);
                    self.recover_halted()?;
                }
                Err(Error::Timeout(what)) => {
                    self.cancel(id)?;
                    return match self.take_completion(id) {
                        // It finished while being cancelled.
                        Some(Ok(n)) => Ok(n),
                        _ => Err(Error::Timeout(what)),
                    };
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// A bulk or interrupt transfer, waited for up to `timeout_us`. After a STALL the
    /// endpoint is recovered on both sides (Reset Endpoint and Set TR Dequeue Pointer on the
    /// controller, CLEAR_FEATURE(ENDPOINT_HALT) on the device) and [`Error::Stall`]
    /// returned; after a timeout the transfer is cancelled so the controller no longer
    /// touches `segments`. When that fails too, its error is returned and the segments must
    /// never be reused.
    pub fn transfer(
        &mut self,
        slot_id: u8,
        endpoint: u8,
        direction: Direction,
        segments: &[DmaSegment],
        timeout_us: u64,
    ) -> Result<usize, Error> {
        let id = self.queue_transfer(slot_id, endpoint, direction, segments)?;
        let result = self.wait(id, timeout_us);
        if result == Err(Error::Stall) {
            let address = endpoint | if direction == Direction::In { 0x80 } else { 0 };
            self.control_no_data(
                slot_id,
                request_type::ENDPOINT,
                CLEAR_FEATURE,
                feature::ENDPOINT_HALT,
                u16::from(address),
            )?;
            info!(
                "event=usb_endpoint_recovered slot={slot_id} endpoint={address:#04x} after=stall"
            );
        }
        result
    }

    /// Where transfer `id` is queued: slot ID and endpoint index.
    fn find_pending(&self, id: TransferId) -> Option<(u8, usize)> {
        self.slots.iter().find_map(|s| {
            s.endpoints
                .iter()
                .position(|e| e.pending.iter().any(|td| td.id == id))
                .map(|e| (s.slot_id, e))
        })
    }

    /// Cancels transfer `id` (4.6.9): Stop Endpoint, its TRBs turned into No Ops, and when
    /// the endpoint stopped inside it, Set TR Dequeue Pointer past it; then the endpoint
    /// runs on with the other transfers. It completes with [`Error::Cancelled`], or with
    /// its real result if it finished before the endpoint stopped. A transfer the
    /// endpoint had in progress and whose TRBs the controller had already passed when it
    /// stopped (QEMU fetches a whole TD before it runs it) is started again from its first
    /// TRB. Returns false when `id` is neither queued nor finished untaken.
    pub fn cancel(&mut self, id: TransferId) -> Result<bool, Error> {
        let Some((slot_id, e)) = self.find_pending(id) else {
            return Ok(self.completions.iter().any(|c| c.0 == id));
        };
        let index = self.slot_index(slot_id)?;
        let (dci, halted) = {
            let ep = &mut self.slots[index].endpoints[e];
            ep.stopped_at = None;
            (ep.dci, ep.halted)
        };
        if !halted {
            let stop = command::StopEndpoint::new()
                .set_slot_id(slot_id)
                .set_endpoint_id(dci)
                .into_raw();
            match self.command(stop) {
                // Context State Error: it stopped or halted by itself meanwhile.
                Ok(_) | Err(Error::Command(19)) => {}
                Err(e) => return Err(e),
            }
        }
        let ctx = self.caps.context_size;
        let index = self.slot_index(slot_id)?;
        let slot = &mut self.slots[index];
        let at = usize::from(dci) * ctx + 8;
        let dequeue = (u64::from(slot.output_context.read32(at))
            | u64::from(slot.output_context.read32(at + 4)) << 32)
            & !0xf;
        let ep = &mut slot.endpoints[e];
        let halted = ep.halted;
        let Some(i) = ep.pending.iter().position(|td| td.id == id) else {
            // It finished while the endpoint stopped.
            if !ep.pending.is_empty() && !halted {
                self.ring_doorbell(slot_id, u32::from(dci));
            }
            return Ok(true);
        };
        let td = ep.pending.remove(i);
        for &(a, _) in &td.trbs {
            ep.ring.make_noop(a);
        }
        // Where the endpoint goes on from: a transfer it was running whose TRBs the
        // controller had passed is run again; otherwise past the cancelled one if it
        // stopped inside it; otherwise where it stopped.
        let stopped_live = ep
            .stopped_at
            .take()
            .and_then(|at| ep.pending.iter().find(|t| t.holds(at)));
        let target = match stopped_live {
            _ if halted => None,
            Some(live) if !live.holds(dequeue) => {
                let first = live.trbs[0].0;
                ep.ring.cycle_of(first).map(|c| (first, c))
            }
            _ if td.holds(dequeue) => ep.ring.after(td.last()),
            _ => None,
        };
        if i == 0 {
            ep.ring.complete(td.last());
        }
        let restart = !halted && !ep.pending.is_empty();
        self.finish(td, Err(Error::Cancelled));
        if let Some((to, cycle)) = target {
            self.set_dequeue(slot_id, dci, to, cycle)?;
        }
        if restart {
            self.ring_doorbell(slot_id, u32::from(dci));
        }
        Ok(true)
    }

    /// Set TR Dequeue Pointer (4.6.10).
    fn set_dequeue(&mut self, slot_id: u8, dci: u8, to: u64, cycle: bool) -> Result<(), Error> {
        let mut set = command::SetTrDequeuePointer::new();
        set.set_new_tr_dequeue_pointer(to)
            .set_endpoint_id(dci)
            .set_slot_id(slot_id);
        if cycle {
            set.set_dequeue_cycle_state();
        }
        self.command(set.into_raw()).map(|_| ())
    }

    /// Resets every endpoint a transfer error halted (4.6.8): Reset Endpoint, then Set TR
    /// Dequeue Pointer to the next transfer queued (or the enqueue pointer), whose doorbell
    /// is rung. The device's own halt after a STALL stays until CLEAR_FEATURE(ENDPOINT_HALT)
    /// (the class driver's or guest's to send); on EP0 the next SETUP ends it (USB 2.0
    /// 8.5.3.4).
    pub(super) fn recover_halted(&mut self) -> Result<(), Error> {
        loop {
            let Some((slot_id, e)) = self.slots.iter().find_map(|s| {
                s.endpoints
                    .iter()
                    .position(|e| e.halted)
                    .map(|e| (s.slot_id, e))
            }) else {
                return Ok(());
            };
            let index = self.slot_index(slot_id)?;
            let ep = &mut self.slots[index].endpoints[e];
            // Cleared first: a command that fails must not make this loop for ever.
            ep.halted = false;
            let dci = ep.dci;
            let reset = command::ResetEndpoint::new()
                .set_slot_id(slot_id)
                .set_endpoint_id(dci)
                .into_raw();
            match self.command(reset) {
                Ok(_) | Err(Error::Command(19)) => {}
                Err(e) => return Err(e),
            }
            let index = self.slot_index(slot_id)?;
            let ep = &mut self.slots[index].endpoints[e];
            let (to, cycle) = match ep.pending.first() {
                Some(td) => {
                    let first = td.trbs[0].0;
                    (
                        first,
                        ep.ring.cycle_of(first).unwrap_or(ep.ring.cycle_state()),
                    )
                }
                None => {
                    ep.ring.skip_to_enqueue();
                    (ep.ring.enqueue_pointer(), ep.ring.cycle_state())
                }
            };
            let queued = !ep.pending.is_empty();
            self.set_dequeue(slot_id, dci, to, cycle)?;
            debug!("event=usb_endpoint_reset slot={slot_id} dci={dci} queued={queued}");
            if queued {
                self.ring_doorbell(slot_id, u32::from(dci));
            }
        }
    }

    /// Waits for a control request the driver queued itself (up to [`TRANSFER_TIMEOUT_US`]).
    pub(super) fn wait_request(&mut self, id: TransferId) -> Result<(), Error> {
        self.wait(id, TRANSFER_TIMEOUT_US).map(|_| ())
    }

    /// A control transfer without a Data Stage the driver makes itself, waited for.
    pub(super) fn control_no_data(
        &mut self,
        slot_id: u8,
        request_type: u8,
        request: u8,
        value: u16,
        w_index: u16,
    ) -> Result<(), Error> {
        let id = self.queue_no_data(slot_id, request_type, request, value, w_index)?;
        self.wait_request(id)
    }

    /// A control transfer without a Data Stage the driver makes itself, queued.
    pub(super) fn queue_no_data(
        &mut self,
        slot_id: u8,
        request_type: u8,
        request: u8,
        value: u16,
        w_index: u16,
    ) -> Result<TransferId, Error> {
        let setup = SetupPacket {
            request_type,
            request,
            value,
            index: w_index,
            length: 0,
        }
        .encode();
        self.queue_control(slot_id, setup, Direction::Out, &[])
    }

    /// A control transfer with an IN Data Stage the driver makes itself, into the slot's
    /// own buffer (a page at most), waited for. Returns the bytes received (fewer than
    /// `length` after a short packet).
    pub(super) fn control_in(
        &mut self,
        slot_id: u8,
        request_type: u8,
        request: u8,
        value: u16,
        w_index: u16,
        length: u16,
    ) -> Result<Vec<u8>, Error> {
        let index = self.slot_index(slot_id)?;
        let data = &self.slots[index].data;
        let length = usize::from(length).min(data.len());
        let segment = [DmaSegment {
            phys: data.phys(),
            len: length,
        }];
        let setup = SetupPacket {
            request_type,
            request,
            value,
            index: w_index,
            length: length as u16,
        }
        .encode();
        let id = self.queue_control(slot_id, setup, Direction::In, &segment)?;
        let received = self.wait(id, TRANSFER_TIMEOUT_US)?.min(length);
        let index = self.slot_index(slot_id)?;
        let mut bytes = alloc::vec![0; received];
        self.slots[index].data.read_bytes(0, &mut bytes);
        Ok(bytes)
    }
}
