//! The submission path, as `xenhcd_urb_enqueue` and `xenhcd_urb_dequeue` walk it: an URB's
//! pages granted (read-only for OUT) and its request pushed under a free shadow id, or queued
//! while the ring is full; unlinks as requests of their own.

use super::*;

impl<G, T> Frontend<G, T>
where
    G: GrantTable + EventChannels,
    T: XsTransport,
{
    /// Submits an URB (`xenhcd_urb_enqueue`): sent at once if the ring has a slot and nothing
    /// waits before it, otherwise queued for [`poll`](Self::poll).
    pub fn submit(&mut self, urb: Urb) -> Result<UrbHandle, Error> {
        if let Some(e) = self.error {
            return Err(Error::Failed(e));
        }
        if self.state != XenbusState::Connected || self.conn.is_none() {
            return Err(Error::NotConnected);
        }
        if urb.pipe.unlink || usize::from(urb.page_offset) >= PAGE_SIZE {
            return Err(Error::Invalid);
        }
        let fits = if self.sends_indirect(&urb) {
            segments_needed(&urb) <= usize::from(self.max_indirect)
        } else {
            u16::try_from(urb.buffer.len()).is_ok()
                && segments_needed(&urb) <= USBIF_MAX_SEGMENTS_PER_REQUEST
        };
        if !fits {
            return Err(Error::TooBig);
        }
        let handle = UrbHandle(self.next_handle);
        self.next_handle += 1;
        if self.ring_full() || !self.pending_submit.is_empty() {
            if self.ring_full() {
                self.stats.ring_full += 1;
            }
            self.pending_submit.push_back(Queued { handle, urb });
            return Ok(handle);
        }
        self.do_submit(handle, &urb)?;
        Ok(handle)
    }

    /// Whether `urb` goes as an indirect request: a bulk URB of more than a stock request's
    /// pages, on a connection where the backend offered indirect segments.
    fn sends_indirect(&self, urb: &Urb) -> bool {
        self.max_indirect > 0
            && urb.pipe.transfer_type == TransferType::Bulk
            && segments_needed(urb) > USBIF_MAX_SEGMENTS_PER_REQUEST
    }

    fn ring_full(&self) -> bool {
        self.conn
            .as_ref()
            .is_none_or(|c| c.urb.free_requests() == 0)
            || self.free_ids.is_empty()
    }

    /// Cancels an URB (`xenhcd_urb_dequeue`). One still queued here is given back at once
    /// with `-ECONNRESET`; one in flight gets an unlink request, and is given back with
    /// `-ECONNRESET` when the backend answers its original id.
    pub fn unlink(&mut self, handle: UrbHandle) -> Result<(), Error> {
        if let Some(e) = self.error {
            return Err(Error::Failed(e));
        }
        if let Some(i) = self.pending_submit.iter().position(|q| q.handle == handle) {
            self.pending_submit.remove(i);
            self.give_back(Completion::without_data(handle, -errno::ECONNRESET));
            return Ok(());
        }
        let f = self
            .shadow
            .iter_mut()
            .find_map(|s| match s {
                Shadow::Submit(f) if f.handle == handle => Some(f),
                _ => None,
            })
            .ok_or(Error::UnknownUrb)?;
        if f.unlinked {
            return Err(Error::Busy);
        }
        f.unlinked = true;
        if self.ring_full() || !self.pending_unlink.is_empty() {
            if self.ring_full() {
                self.stats.ring_full += 1;
            }
            self.pending_unlink.push_back(handle);
            return Ok(());
        }
        self.do_unlink(handle);
        Ok(())
    }

    /// Sends the unlink request for an in-flight URB on a free id.
    fn do_unlink(&mut self, handle: UrbHandle) {
        let Some((target, pipe)) = self.shadow.iter().enumerate().find_map(|(i, s)| match s {
            Shadow::Submit(f) if f.handle == handle => Some((i as u16, f.req.pipe)),
            _ => None,
        }) else {
            return;
        };
        let id = self
            .free_ids
            .pop()
            .expect("caller checked the ring has a slot");
        let mut req = UsbifUrbRequest::new_zeroed();
        req.id = id;
        req.pipe = pipe | USBIF_PIPE_UNLINK;
        req.u[..2].copy_from_slice(&target.to_le_bytes());
        self.shadow[usize::from(id)] = Shadow::Unlink;
        self.push(&req);
        log::debug!("event=xenhcd_unlink id={id} unlink_id={target} urb={handle}");
    }

    /// `xenhcd_do_request` for a submit: grants, the request, the shadow, push and notify.
    fn do_submit(&mut self, handle: UrbHandle, urb: &Urb) -> Result<(), Error> {
        let id = self
            .free_ids
            .pop()
            .expect("caller checked the ring has a slot");
        match self.map_urb_for_request(handle, urb, id) {
            Ok(f) => {
                let req = f.req;
                self.shadow[usize::from(id)] = Shadow::Submit(Box::new(f));
                self.push(&req);
                Ok(())
            }
            Err(e) => {
                self.free_ids.push(id);
                Err(e)
            }
        }
    }

    fn push(&mut self, req: &UsbifUrbRequest) {
        let c = self.conn.as_mut().expect("connected");
        c.urb
            .push_request(req)
            .expect("caller checked the ring has a slot");
        if c.urb.push_requests_and_check_notify() {
            let port = c.port;
            let _ = self.platform.send(port);
        }
    }

    /// `xenhcd_map_urb_for_request`: pages filled and granted, the request built.
    fn map_urb_for_request(
        &mut self,
        handle: UrbHandle,
        urb: &Urb,
        id: u16,
    ) -> Result<InFlight<G::Page>, Error> {
        let len = urb.buffer.len();
        let offset = usize::from(urb.page_offset);
        let buffer_pages = if len == 0 {
            0
        } else {
            count_pages(offset, len)
        };
        let iso_pages = if len == 0 || urb.pipe.transfer_type != TransferType::Isochronous {
            0
        } else {
            count_pages(0, urb.iso_packets.len() * ISO_DESCRIPTOR_SIZE)
        };
        // An indirect request's segments are listed in a page of their own, after the rest.
        let indirect = self.sends_indirect(urb);
        let list_pages = usize::from(indirect);
        let mut pages = Vec::with_capacity(buffer_pages + iso_pages + list_pages);
        for _ in 0..buffer_pages + iso_pages + list_pages {
            match self
                .page_pool
                .pop()
                .map(Ok)
                .unwrap_or_else(|| self.platform.alloc_page())
            {
                Ok(p) => pages.push(p),
                Err(e) => {
                    self.page_pool.extend(pages);
                    return Err(e.into());
                }
            }
        }
        let mut req = UsbifUrbRequest::new_zeroed();
        req.id = id;
        req.pipe = urb.pipe.encode();
        req.transfer_flags = if urb.short_not_ok {
            USBIF_SHORT_NOT_OK
        } else {
            0
        };
        req.buffer_length = len as u16;
        req.nr_buffer_segs = buffer_pages as u16;
        let out = urb.pipe.direction == Direction::Out;
        let be = self.backend_id;
        let mut grants = Vec::with_capacity(pages.len());
        let mut data_segments = Vec::with_capacity(buffer_pages);
        let mut fail = None;
        // The buffer: one segment per page, only the first with an offset.
        let (mut at, mut left) = (offset, len);
        for (gfn, page) in &pages[..buffer_pages] {
            let in_page = at % PAGE_SIZE;
            let bytes = (PAGE_SIZE - in_page).min(left);
            if out {
                let done = len - left;
                page.write(in_page, &urb.buffer[done..done + bytes]);
            }
            match self.grant_page(be, *gfn, out) {
                Ok(gref) => {
                    data_segments.push(UsbifRequestSegment {
                        gref,
                        offset: in_page as u16,
                        length: bytes as u16,
                    });
                    grants.push(gref);
                }
                Err(e) => {
                    fail = Some(e);
                    break;
                }
            }
            at += bytes;
            left -= bytes;
        }
        match urb.pipe.transfer_type {
            TransferType::Isochronous => {
                put_u16(&mut req.u, 0, urb.interval);
                put_u16(&mut req.u, 2, urb.start_frame);
                put_u16(&mut req.u, 4, urb.iso_packets.len() as u16);
                put_u16(&mut req.u, 6, iso_pages as u16);
                let descriptors: Vec<u8> = urb
                    .iso_packets
                    .iter()
                    .flat_map(|p| {
                        let d = UsbIsoPacketDescriptor {
                            offset: p.offset,
                            length: p.length,
                            actual_length: 0,
                            status: 0,
                        };
                        d.as_bytes().to_vec()
                    })
                    .collect();
                for (k, (gfn, page)) in pages[buffer_pages..].iter().enumerate() {
                    if fail.is_some() {
                        break;
                    }
                    let chunk =
                        &descriptors[k * PAGE_SIZE..descriptors.len().min((k + 1) * PAGE_SIZE)];
                    page.write(0, chunk);
                    match self.grant_page(be, *gfn, false) {
                        Ok(gref) => {
                            req.seg[buffer_pages + k] = UsbifRequestSegment {
                                gref,
                                offset: 0,
                                length: chunk.len() as u16,
                            };
                            grants.push(gref);
                        }
                        Err(e) => fail = Some(e),
                    }
                }
            }
            TransferType::Interrupt => put_u16(&mut req.u, 0, urb.interval),
            TransferType::Control => req.u = urb.setup,
            TransferType::Bulk => {}
        }
        if fail.is_none() && indirect {
            let (gfn, page) = &pages[buffer_pages + iso_pages];
            page.write(0, data_segments.as_bytes());
            match self.grant_page(be, *gfn, true) {
                Ok(gref) => {
                    pvusb::encode_indirect(&mut req, &[gref], buffer_pages as u16, len as u32);
                    grants.push(gref);
                    self.stats.indirect += 1;
                }
                Err(e) => fail = Some(e),
            }
        } else {
            req.seg[..data_segments.len()].copy_from_slice(&data_segments);
        }
        if let Some(e) = fail {
            // Kept grants stay kept; the others end.
            if !self.persistent {
                for &gref in &grants {
                    let _ = self.platform.end_access(gref);
                }
            }
            self.page_pool.extend(pages);
            return Err(e.into());
        }
        Ok(InFlight {
            handle,
            req,
            grants,
            pages,
            direction: urb.pipe.direction,
            buffer_length: len,
            page_offset: offset,
            iso_packets: if iso_pages > 0 {
                urb.iso_packets.len()
            } else {
                0
            },
            unlinked: false,
            discard_in_data: urb.discard_in_data,
        })
    }

    /// A grant of data page `gfn` to the backend: its kept grant, made (writable) the first
    /// time, when this connection promised persistent grants; else a fresh one, read-only
    /// when the backend only reads the page, as xen-hcd grants.
    fn grant_page(&mut self, be: DomId, gfn: Gfn, readonly: bool) -> Result<GrantRef, Errno> {
        if !self.persistent {
            return self.platform.grant_access(be, gfn, readonly);
        }
        if let Some(gref) = self.kept_grants.get(&gfn) {
            return Ok(*gref);
        }
        let gref = self.platform.grant_access(be, gfn, false)?;
        self.kept_grants.insert(gfn, gref);
        Ok(gref)
    }

    /// `xenhcd_kick_pending_urbs`: queued unlinks, then queued submits, while slots are free.
    pub(crate) fn kick_pending(&mut self) {
        if self.error.is_some() || self.conn.is_none() {
            return;
        }
        while !self.ring_full() {
            let Some(handle) = self.pending_unlink.pop_front() else {
                break;
            };
            self.do_unlink(handle);
        }
        while !self.ring_full() {
            let Some(q) = self.pending_submit.pop_front() else {
                break;
            };
            if let Err(e) = self.do_submit(q.handle, &q.urb) {
                warn!("event=xenhcd_submit_failed urb={} {e}", q.handle);
                self.give_back(Completion::without_data(q.handle, -errno::ESHUTDOWN));
            }
        }
    }
}

/// Segments an URB needs: buffer pages plus, for ISO with data, descriptor pages.
fn segments_needed(urb: &Urb) -> usize {
    let len = urb.buffer.len();
    if len == 0 {
        return 0;
    }
    let iso = if urb.pipe.transfer_type == TransferType::Isochronous {
        count_pages(0, urb.iso_packets.len() * ISO_DESCRIPTOR_SIZE)
    } else {
        0
    };
    count_pages(usize::from(urb.page_offset), len) + iso
}

fn put_u16(u: &mut [u8; 8], at: usize, v: u16) {
    u[at..at + 2].copy_from_slice(&v.to_le_bytes());
}
