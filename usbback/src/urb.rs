//! The URB path of [`Backend`]: requests taken from a frontend's ring a budget at a time,
//! their buffers in our frames ([`crate::bounce`]), OUT data copied in and the transfers
//! queued to the host in one batch per pass ([`Backend::launch`]), completions answered
//! with what the device wrote copied out in one batch per flush
//! ([`Backend::finish_answers`]).

use alloc::format;
use alloc::vec::Vec;
use core::ops::Range;

use log::{debug, warn};
use usb::{descriptor, Direction, IsoPacket, TransferType};
use xen::abi::grant_table::GntStatus;
use xen::abi::usbif::*;
use xen::abi::GrantRef;
use xen::hypervisor::{
    CopyOp, EventChannels, GrantCopier, GrantMapper, LocalFrames, MapRequest, MAX_GRANT_BATCH,
};
use xen::page::SharedPage;
use xen::pvusb::{self, Submit, UrbRequest, UsbIsoPacketDescriptor};
use xen::xenstore::XsTransport;

use crate::answers::{copy_failure, run_copies, Answer};
use crate::bounce::{self, Buffer, FrameId, Frames};
use crate::host::{self, Completion, UsbHost};
use crate::persistent::kept_grants;
use crate::superspeed::Rewrite;
use crate::{
    control, response, status_of, superspeed, Backend, DataPath, DeviceId, InFlight, BUDGET,
    ISO_DESCRIPTOR_SIZE, USBIF_STATUS_NOMEM, WARNINGS_PER_INTERVAL,
};

impl<H, T> Backend<H, T>
where
    H: GrantMapper + GrantCopier + LocalFrames + EventChannels,
    H::Page: Clone + SharedPage,
    T: XsTransport,
{
    /// Takes up to [`BUDGET`] waiting URB requests of `id`, copies in the OUT data of all of
    /// them in one batch, queues them to the host, then pushes the answers. A frontend with
    /// requests left waits in [`Backend::serve_busy`]'s queue behind the others.
    pub(crate) fn service<U: UsbHost<H::Page> + ?Sized>(&mut self, id: DeviceId, host: &mut U) {
        enum Next {
            Request(UsbifUrbRequest),
            Again,
            Idle,
        }
        if let Some(c) = self.devices.get_mut(&id).and_then(|d| d.conn.as_mut()) {
            let waiting = c.urb.unconsumed_requests().unwrap_or(0);
            if waiting + c.urb.outstanding() >= c.urb.size() {
                c.stats.ring_full += 1;
                self.moved.ring_full += 1;
            }
        }
        // The pass's buffers are the backend's, kept from pass to pass.
        let mut stage = core::mem::take(&mut self.stage);
        let mut taken = 0;
        let more = loop {
            let Some(c) = self.devices.get_mut(&id).and_then(|d| d.conn.as_mut()) else {
                break false;
            };
            if taken == BUDGET {
                break true;
            }
            // Submissions parked for want of frames go first, in ring order, once there is
            // room (`finish_answers` serves the frontend again when its pages come back).
            let parked_fits = c
                .parked
                .front()
                .is_some_and(|r| self.pool.has_room_for(id, bounce::pages_at_most(r)));
            if parked_fits {
                if let Some(raw) = c.parked.pop_front() {
                    taken += 1;
                    if !self.request(id, raw, host, &mut stage) {
                        break false;
                    }
                }
                continue;
            }
            let next = match c.urb.next_request() {
                Ok(Some(raw)) => Ok(Next::Request(raw)),
                // None now: ask to be notified, and look once more (the race with the
                // frontend's next push).
                Ok(None) => c.urb.final_check_for_requests().map(|more| {
                    if more {
                        Next::Again
                    } else {
                        Next::Idle
                    }
                }),
                Err(e) => Err(e),
            };
            match next {
                Ok(Next::Request(raw)) => {
                    taken += 1;
                    // A submission that finds the frontend at its share of the pool, or
                    // others parked before it, waits off the ring; an unlink is served at
                    // once (it may cancel one of those).
                    let submit = raw.pipe & USBIF_PIPE_UNLINK == 0;
                    let fits = self.pool.has_room_for(id, bounce::pages_at_most(&raw));
                    if submit && (!c.parked.is_empty() || !fits) {
                        c.parked.push_back(raw);
                        c.stats.throttled += 1;
                        continue;
                    }
                    if !self.request(id, raw, host, &mut stage) {
                        break false;
                    }
                }
                Ok(Next::Again) => {}
                Ok(Next::Idle) => break false,
                Err(e) => {
                    self.misbehaving(id, &format!("{e}"), host);
                    break false;
                }
            }
        };
        self.launch(&mut stage, host);
        self.stage = stage;
        if !self.connected(id) {
            return;
        }
        if more && !self.busy.contains(&id) {
            self.busy.push_back(id);
        }
        if !self.flush(id) {
            self.misbehaving(id, "reason=conn_ring_overrun", host);
        }
    }

    /// Whether a warning about a request of `id` may be logged now ([`WARNINGS_PER_INTERVAL`]);
    /// one that may not is counted for `event=log_suppressed`.
    pub(crate) fn may_warn(&mut self, id: DeviceId) -> bool {
        let Some(d) = self.devices.get_mut(&id) else {
            return false;
        };
        if d.warned < WARNINGS_PER_INTERVAL {
            d.warned += 1;
            true
        } else {
            d.suppressed = d.suppressed.saturating_add(1);
            false
        }
    }

    /// Whether `id` has a connection (rings mapped, channel bound).
    pub(crate) fn connected(&self, id: DeviceId) -> bool {
        self.devices.get(&id).is_some_and(|d| d.conn.is_some())
    }

    /// Whether a frontend still has requests after its last budget: the main loop then calls
    /// [`Backend::serve_busy`] instead of sleeping.
    pub fn has_work(&self) -> bool {
        !self.busy.is_empty()
    }

    /// Serves once more, one budget each and in turn, every frontend left with requests.
    pub fn serve_busy<U: UsbHost<H::Page> + ?Sized>(&mut self, host: &mut U) {
        for _ in 0..self.busy.len() {
            if let Some(id) = self.busy.pop_front() {
                self.service(id, host);
            }
        }
    }

    /// Whether request id `rid` of `id` is taken: in flight, staged in this pass, or an
    /// unlink waiting to be answered.
    fn id_in_use(&self, id: DeviceId, rid: u16, stage: &Stage) -> bool {
        stage.requests.iter().any(|r| r.id == id && r.rid == rid)
            || self
                .devices
                .get(&id)
                .and_then(|d| d.conn.as_ref())
                .is_some_and(|c| {
                    c.inflight.contains(rid)
                        || c.inflight.values().any(|f| f.unlinked_by == Some(rid))
                        || c.parked.iter().any(|r| r.id == rid)
                })
    }

    /// One request copied out of the ring. False when it made the backend disconnect the
    /// frontend.
    fn request<U: UsbHost<H::Page> + ?Sized>(
        &mut self,
        id: DeviceId,
        raw: UsbifUrbRequest,
        host: &mut U,
        stage: &mut Stage,
    ) -> bool {
        let Some(num_ports) = self.devices.get(&id).map(|d| d.num_ports) else {
            return false;
        };
        match UrbRequest::decode(&raw, num_ports) {
            Err(e) => {
                if self.may_warn(id) {
                    warn!(
                        "event=urb_invalid domid={} devid={} id={} {e}",
                        id.frontend, id.devid, raw.id
                    );
                }
                self.respond(id, response(raw.id, USBIF_STATUS_INVAL, 0));
                true
            }
            Ok(UrbRequest::Unlink {
                id: rid, unlink_id, ..
            }) => {
                if self.id_in_use(id, rid, stage) {
                    self.misbehaving(id, &format!("reason=id_reused id={rid}"), host);
                    return false;
                }
                // The request to cancel may be among those staged in this pass.
                self.launch(stage, host);
                let Some(c) = self.devices.get_mut(&id).and_then(|d| d.conn.as_mut()) else {
                    return false;
                };
                // A parked submission is answered as cancelled, then the unlink.
                if let Some(at) = c.parked.iter().position(|r| r.id == unlink_id) {
                    c.parked.remove(at);
                    c.stats.unlinked += 1;
                    self.respond(id, response(unlink_id, USBIF_STATUS_SHUTDOWN, 0));
                    self.respond(id, response(rid, USBIF_STATUS_OK, 0));
                    return true;
                }
                match c.inflight.get_mut(unlink_id) {
                    // Answered once the cancelled request is, right after it.
                    Some(f) if f.unlinked_by.is_none() => {
                        f.unlinked_by = Some(rid);
                        c.stats.unlinked += 1;
                        let (device, token) = (f.device, f.token);
                        host.cancel(device, token);
                    }
                    _ => self.respond(id, response(rid, USBIF_STATUS_INVAL, 0)),
                }
                true
            }
            Ok(UrbRequest::Submit(mut s)) => {
                if s.indirect.is_some() {
                    if let Err(reason) = self.read_indirect(id, &mut s, stage) {
                        if self.may_warn(id) {
                            warn!(
                                "event=urb_invalid domid={} devid={} id={} {reason}",
                                id.frontend, id.devid, s.id
                            );
                        }
                        self.respond(id, response(s.id, USBIF_STATUS_INVAL, 0));
                        return true;
                    }
                }
                self.submit(id, s, host, stage)
            }
        }
    }

    /// Checks a submission, answers the requests the backend handles itself, and stages the
    /// rest with their buffers in our frames and their OUT data's copies in `stage`.
    fn submit<U: UsbHost<H::Page> + ?Sized>(
        &mut self,
        id: DeviceId,
        s: Submit,
        host: &mut U,
        stage: &mut Stage,
    ) -> bool {
        if self.id_in_use(id, s.id, stage) {
            self.misbehaving(id, &format!("reason=id_reused id={}", s.id), host);
            return false;
        }
        let Some(dev) = self.devices.get_mut(&id) else {
            return false;
        };
        let Some(port) = usize::from(s.pipe.port)
            .checked_sub(1)
            .and_then(|i| dev.ports.get_mut(i))
        else {
            self.respond(id, response(s.id, USBIF_STATUS_INVAL, 0));
            return true;
        };
        let Some(device) = port.device else {
            self.respond(id, response(s.id, USBIF_STATUS_NODEV, 0));
            return true;
        };
        // Address 0 is the default address a device answers after a reset.
        if s.pipe.device != 0 && s.pipe.device != port.address {
            self.respond(id, response(s.id, USBIF_STATUS_NODEV, 0));
            return true;
        }
        let superspeed = port.superspeed;
        let port_number = s.pipe.port;
        let (direction, setup) = match s.transfer {
            pvusb::Transfer::Control { setup } => {
                let d = if setup[0] & 0x80 != 0 {
                    Direction::In
                } else {
                    Direction::Out
                };
                (d, Some(setup))
            }
            _ => (s.pipe.direction, None),
        };
        let mut rewrite = None;
        if let Some(setup) = setup {
            // Transfers staged before an intercepted request reach the device before it.
            if control::intercept(&setup).is_some() {
                self.launch(stage, host);
            }
            if self.standard_request(id, s.id, port_number, device, setup, host) {
                return true;
            }
            if superspeed {
                rewrite = Rewrite::of(&setup);
            }
        }

        // One page per segment, data first, then isochronous descriptors: our frames, or
        // the guest's grants mapped when the pass is launched.
        let segments: bounce::Segments = s
            .buffer
            .iter()
            .chain(s.iso_descriptors.iter())
            .copied()
            .collect();
        // A configuration read whole before is answered as it was then.
        let cached = match rewrite {
            Some(Rewrite {
                kind: descriptor::CONFIGURATION,
                index,
                ..
            }) => self.devices.get(&id).and_then(|d| {
                let p = d.ports.get(usize::from(port_number) - 1)?;
                p.configs.get(index).map(<[u8]>::to_vec)
            }),
            _ => None,
        };
        let map = self.data_path == DataPath::Map && cached.is_none();
        // Bulk data of a frontend that promised `feature-persistent`, every page of it kept
        // mapped already: the device reaches those pages directly and nothing is copied
        // (`persistent.rs` says why that is safe).
        let direct = !map
            && cached.is_none()
            && s.pipe.transfer_type == TransferType::Bulk
            && !segments.is_empty()
            && kept_grants(&self.devices, id)
                .is_some_and(|k| segments.iter().all(|g| k.page(g.gref).is_some()));
        let taken = if map {
            Some(Frames::new())
        } else if direct {
            Some(segments.iter().map(|_| FrameId::KEPT).collect())
        } else {
            self.pool.take(&mut self.hv, segments.len(), id)
        };
        let Some(frames) = taken else {
            if self.may_warn(id) {
                warn!(
                    "event=bounce_frames_exhausted domid={} devid={} id={} held={} max={}",
                    id.frontend,
                    id.devid,
                    s.id,
                    self.pool.held(),
                    self.pool.limit()
                );
            }
            self.respond(id, response(s.id, USBIF_STATUS_NOMEM, 0));
            return true;
        };
        let buffer = Buffer {
            dom: id.frontend,
            frames,
            segments,
            data: s.buffer.len(),
        };
        let conn = self.devices.get(&id).and_then(|d| d.conn.as_ref());
        let kept = kept_grants(&self.devices, id);
        if let Some(config) = cached {
            let n = buffer.data_len().min(config.len());
            buffer.write_data(&self.pool, 0, &config[..n]);
            let start = self.answer_copies.len();
            buffer.copy_out_data(&self.pool, kept, 0, n, &mut self.answer_copies);
            self.answers.push(Answer {
                id,
                rsp: response(s.id, USBIF_STATUS_OK, n),
                frames: buffer.frames,
                copies: start..self.answer_copies.len(),
                inbound: true,
            });
            return true;
        }
        // A configuration read in part is asked of the device whole, into our frame.
        let mut setup = setup;
        if let (Some(w), Some(s)) = (rewrite.as_mut(), setup.as_mut()) {
            w.read_whole(s, !map && buffer.segments.len() == 1 && buffer.data == 1);
        }
        let (start, maps_start) = (stage.copies.len(), stage.maps.len());
        if map {
            // The device reads an OUT buffer and writes an IN one; it writes every
            // isochronous descriptor (the packets' results).
            for (i, g) in buffer.segments.iter().enumerate() {
                stage.maps.push(MapRequest {
                    dom: id.frontend,
                    gref: g.gref,
                    readonly: i < buffer.data && direction == Direction::Out,
                });
            }
        } else if !direct {
            if direction == Direction::Out {
                buffer.copy_in_data(&self.pool, kept, &mut stage.copies);
            } else {
                let Some(c) = conn else {
                    self.pool.release(buffer.frames, &mut self.unmaps);
                    return false;
                };
                buffer.probe_data(&self.pool, kept, &mut stage.copies, &c.written);
            }
            buffer.copy_in_descriptors(&self.pool, kept, &mut stage.copies);
            // Its grants not kept yet are mapped to keep once the pass's copies are done.
            if let Some(k) = kept {
                let fresh = buffer.segments.iter().filter(|g| k.wants(g.gref));
                stage.keep.extend(fresh.map(|g| (id, g.gref)));
            }
        }
        let copies = start..stage.copies.len();
        let maps = maps_start..stage.maps.len();
        let number_of_packets = match s.transfer {
            pvusb::Transfer::Isochronous {
                number_of_packets, ..
            } => number_of_packets,
            _ => 0,
        };
        let transfer = TransferShape {
            endpoint: if setup.is_some() { 0 } else { s.pipe.endpoint },
            direction,
            transfer_type: s.pipe.transfer_type,
            setup,
        };
        stage.requests.push(Staged {
            id,
            rid: s.id,
            device,
            port: port_number,
            buffer,
            copies,
            maps,
            transfer,
            number_of_packets,
            buffer_length: s.buffer_length,
            rewrite,
        });
        true
    }

    /// Queues the staged requests to the host, in ring order, once their copies are done
    /// (all in one batch). A request whose copy failed is answered with an error and never
    /// reaches the device.
    fn launch<U: UsbHost<H::Page> + ?Sized>(&mut self, stage: &mut Stage, host: &mut U) {
        if stage.requests.is_empty() {
            return;
        }
        let mut statuses = core::mem::take(&mut self.statuses);
        run_copies(&mut self.hv, &stage.copies, &mut statuses);
        self.keep_grants(&mut stage.keep);
        // The pass's grants to map, in batches of what one hypercall takes.
        let mut mapped = core::mem::take(&mut self.map_results);
        for batch in stage.maps.chunks(MAX_GRANT_BATCH) {
            match self.hv.map(batch) {
                Ok(results) => mapped.extend(results),
                Err(_) => mapped.extend(batch.iter().map(|_| Err(GntStatus::GeneralError))),
            }
        }
        let mut mapped_in_order = mapped.drain(..);
        for mut r in stage.requests.drain(..) {
            let id = r.id;
            // Its grants, mapped or not, are the next of the pass's results.
            let mut map_failure = None;
            for result in mapped_in_order.by_ref().take(r.maps.len()) {
                let held = match result {
                    Ok(m) => self.pool.hold_mapping(m, id).map_err(|m| {
                        self.unmaps.push(m);
                        GntStatus::NoSpace
                    }),
                    Err(status) => Err(status),
                };
                match held {
                    // Cannot overflow: a request has at most as many segments as Frames holds.
                    Ok(f) => r.buffer.frames.push(f),
                    Err(status) => {
                        map_failure.get_or_insert(status);
                    }
                }
            }
            // Its frontend was disconnected in this pass: nothing reached the device.
            let Some(c) = self.devices.get_mut(&id).and_then(|d| d.conn.as_mut()) else {
                self.pool.release(r.buffer.frames, &mut self.unmaps);
                continue;
            };
            c.written.record(&stage.copies, &statuses, r.copies.clone());
            let failure = copy_failure(&statuses, r.copies.clone())
                .map(|s| ("from_frontend", s))
                .or(map_failure.map(|s| ("map", s)));
            if let Some((what, status)) = failure {
                self.warn_copy_failed(id, r.rid, what, status);
                self.pool.release(r.buffer.frames, &mut self.unmaps);
                self.respond(id, response(r.rid, USBIF_STATUS_INVAL, 0));
                continue;
            }
            let mut iso_packets = Vec::new();
            for i in 0..usize::from(r.number_of_packets) {
                let mut d = [0u8; ISO_DESCRIPTOR_SIZE];
                r.buffer
                    .read_descriptors(&self.pool, i * ISO_DESCRIPTOR_SIZE, &mut d);
                let offset = u32::from_le_bytes([d[0], d[1], d[2], d[3]]);
                let length = u32::from_le_bytes([d[4], d[5], d[6], d[7]]);
                if u64::from(offset) + u64::from(length) > u64::from(r.buffer_length) {
                    if self.may_warn(id) {
                        warn!(
                        "event=urb_invalid domid={} devid={} id={} reason=iso_packet_outside_buffer packet={i} offset={offset} length={length}",
                        id.frontend, id.devid, r.rid
                    );
                    }
                    iso_packets.clear();
                    break;
                }
                iso_packets.push(IsoPacket { offset, length });
            }
            if iso_packets.len() != usize::from(r.number_of_packets) {
                self.pool.release(r.buffer.frames, &mut self.unmaps);
                self.respond(id, response(r.rid, USBIF_STATUS_INVAL, 0));
                continue;
            }
            let shape = r.transfer;
            let buffer = &r.buffer;
            let kept = kept_grants(&self.devices, id);
            // Each id was handed out for this request above: each names a page, ours or a
            // kept mapping of the frontend's.
            let segments: host::TransferSegments<H::Page> = buffer.frames[..buffer.data]
                .iter()
                .zip(&buffer.segments)
                .filter_map(|(&f, g)| {
                    let (page, phys) = if f == FrameId::KEPT {
                        kept?.dma(g.gref)?
                    } else {
                        self.pool.page(f)?
                    };
                    Some(host::PageSegment {
                        page: page.clone(),
                        phys,
                        offset: g.offset,
                        len: g.length,
                    })
                })
                .collect();
            let mut segments = segments;
            if r.rewrite.is_some_and(|w| w.whole_read) {
                if let Some(first) = segments.first_mut() {
                    first.offset = 0;
                    first.len = superspeed::WHOLE_READ_BYTES;
                }
            }
            if segments.len() != buffer.data {
                self.pool.release(r.buffer.frames, &mut self.unmaps);
                self.respond(id, response(r.rid, USBIF_STATUS_IOERROR, 0));
                continue;
            }
            if buffer.reaches_kept_pages() {
                if let Some(c) = self.devices.get_mut(&id).and_then(|d| d.conn.as_mut()) {
                    c.stats.zero_copy += 1;
                }
            }
            let periodic = matches!(
                shape.transfer_type,
                TransferType::Interrupt | TransferType::Isochronous
            );
            let token = self.tokens.issue(id, r.rid, periodic);
            let transfer = host::Transfer {
                token,
                endpoint: shape.endpoint,
                direction: shape.direction,
                transfer_type: shape.transfer_type,
                setup: shape.setup,
                segments,
                iso_packets: iso_packets.clone(),
                start_frame: None,
            };
            let direction = shape.direction;
            if !iso_packets.is_empty() {
                debug!(
                    "event=urb_iso_queued domid={} devid={} id={} port={} endpoint={} direction={} packets={} bytes={}",
                    id.frontend,
                    id.devid,
                    r.rid,
                    r.port,
                    shape.endpoint,
                    direction.name(),
                    iso_packets.len(),
                    buffer.data_len()
                );
            }
            match host.submit(r.device, transfer) {
                Err(e) => {
                    self.tokens.take(token);
                    self.pool.release(r.buffer.frames, &mut self.unmaps);
                    self.respond(id, response(r.rid, status_of(e), 0));
                }
                Ok(()) => {
                    if let Some(c) = self.devices.get_mut(&id).and_then(|d| d.conn.as_mut()) {
                        c.inflight.insert(
                            r.rid,
                            InFlight {
                                token,
                                device: r.device,
                                buffer: r.buffer,
                                direction,
                                iso_packets,
                                rewrite: r.rewrite,
                                port: r.port,
                                unlinked_by: None,
                            },
                        );
                    }
                }
            }
        }
        drop(mapped_in_order);
        self.map_results = mapped;
        stage.copies.clear();
        stage.maps.clear();
        self.statuses = statuses;
    }

    /// Answers the request a host transfer finished: a SuperSpeed descriptor rewritten,
    /// isochronous packet results written to the descriptors, and what the device wrote
    /// queued to be copied to the frontend with the answer (and the unlink's, if one waits).
    /// A transfer of a frontend that is gone gives its frames back. Returns the frontend
    /// touched.
    pub(crate) fn complete(&mut self, c: Completion) -> Option<DeviceId> {
        if let Some(frames) = self.quarantine.remove(&c.token) {
            self.pool.release(frames, &mut self.unmaps);
            for (tokens, mappings) in &mut self.deferred_unmaps {
                tokens.retain(|&t| t != c.token);
                if tokens.is_empty() {
                    self.unmaps.append(mappings);
                }
            }
            self.deferred_unmaps
                .retain(|(tokens, _)| !tokens.is_empty());
            return None;
        }
        let (id, rid) = self.tokens.take(c.token)?;
        let conn = self.devices.get_mut(&id)?.conn.as_mut()?;
        let f = conn.inflight.remove(rid)?;
        let total = f.buffer.data_len();
        let asked = f.rewrite.map_or(total, |w| w.device_bytes(total));
        let (status, mut actual) = match c.result {
            Ok(n) => (USBIF_STATUS_OK, n.min(asked)),
            Err(e) => (status_of(e), 0),
        };
        let mut whole_config = None;
        if let (Some(w), USBIF_STATUS_OK) = (f.rewrite, status) {
            let mut bytes = alloc::vec![0u8; actual];
            if w.whole_read {
                // At the start of its one frame (`submit` asked only then).
                if let Some((page, _)) = f.buffer.frames.first().and_then(|&i| self.pool.page(i)) {
                    page.read(0, &mut bytes);
                }
            } else {
                f.buffer.read_data(&self.pool, 0, &mut bytes);
            }
            let (rewritten, whole) = w.answer(bytes);
            whole_config = whole;
            f.buffer.write_data(&self.pool, 0, &rewritten);
            actual = rewritten.len().min(total);
        }
        let mut error_count = 0;
        for (i, r) in c.iso.iter().enumerate() {
            let packet_status = match r.status {
                Ok(()) => 0,
                Err(e) => {
                    error_count += 1;
                    status_of(e)
                }
            };
            // actual_length and status of the i-th `usb_iso_packet_descriptor`.
            let mut result = [0u8; 8];
            result[..4].copy_from_slice(&r.actual_length.to_le_bytes());
            result[4..].copy_from_slice(&packet_status.to_le_bytes());
            let at = i * ISO_DESCRIPTOR_SIZE
                + core::mem::offset_of!(UsbIsoPacketDescriptor, actual_length);
            f.buffer.write_descriptors(&self.pool, at, &result);
        }
        // Only bytes the device wrote go back: the frames held other requests' data before.
        let start = self.answer_copies.len();
        let kept = kept_grants(&self.devices, id);
        if f.direction == Direction::In {
            if f.iso_packets.is_empty() {
                f.buffer
                    .copy_out_data(&self.pool, kept, 0, actual, &mut self.answer_copies);
            } else {
                for (p, r) in f.iso_packets.iter().zip(&c.iso) {
                    let n = r.actual_length.min(p.length) as usize;
                    f.buffer.copy_out_data(
                        &self.pool,
                        kept,
                        p.offset as usize,
                        n,
                        &mut self.answer_copies,
                    );
                }
            }
        }
        f.buffer
            .copy_out_descriptors(&self.pool, kept, &mut self.answer_copies);
        let copies = start..self.answer_copies.len();
        if let Some((index, config)) = whole_config {
            if let Some(p) = self
                .devices
                .get_mut(&id)
                .and_then(|d| d.ports.get_mut(usize::from(f.port).wrapping_sub(1)))
            {
                if let Some(full) = p.configs.insert(index, config) {
                    warn!(
                        "event=superspeed_cache_full domid={} devid={} port={} index={index} cap={} entries={} bytes={}",
                        id.frontend,
                        id.devid,
                        f.port,
                        full.name(),
                        p.configs.len(),
                        p.configs.bytes()
                    );
                }
            }
        }
        if !f.iso_packets.is_empty() {
            // Per URB, so only at debug: an audio stream answers a thousand a second.
            debug!(
                "event=urb_iso_done domid={} devid={} id={rid} port={} direction={} packets={} start_frame={} error_count={error_count} bytes={actual} status={status}",
                id.frontend,
                id.devid,
                f.port,
                f.direction.name(),
                f.iso_packets.len(),
                c.start_frame
            );
        }
        self.answers.push(Answer {
            id,
            rsp: UsbifUrbResponse {
                id: rid,
                start_frame: c.start_frame,
                status,
                actual_length: i32::try_from(actual).unwrap_or(i32::MAX),
                error_count,
            },
            frames: f.buffer.frames,
            copies,
            inbound: f.direction == Direction::In,
        });
        if let Some(unlink) = f.unlinked_by {
            self.respond(id, response(unlink, USBIF_STATUS_OK, 0));
        }
        Some(id)
    }
}

/// Requests of one pass waiting for their copies in: queued to the host in ring order once
/// the batch is done.
#[derive(Default)]
pub(crate) struct Stage {
    copies: Vec<CopyOp>,
    /// Grants to map ([`DataPath::Map`]), in request order.
    maps: Vec<MapRequest>,
    /// Grants of frontends that promised `feature-persistent`, to map and keep
    /// ([`crate::persistent`]).
    pub(crate) keep: Vec<(DeviceId, GrantRef)>,
    requests: Vec<Staged>,
}

/// A checked submission with its buffer in our frames.
struct Staged {
    id: DeviceId,
    rid: u16,
    device: u32,
    port: u8,
    buffer: Buffer,
    /// Its copies in the stage's batch.
    copies: Range<usize>,
    /// Its grants to map in the stage's batch.
    maps: Range<usize>,
    /// What the transfer will be; its buffer and isochronous packets (read from the copied
    /// descriptors) are added when it is queued.
    transfer: TransferShape,
    number_of_packets: u16,
    buffer_length: u32,
    rewrite: Option<Rewrite>,
}

/// A transfer's kind, endpoint and flags: what [`host::Transfer`] has besides its buffer.
#[derive(Clone, Copy)]
struct TransferShape {
    endpoint: u8,
    direction: Direction,
    transfer_type: TransferType,
    setup: Option<[u8; 8]>,
}
