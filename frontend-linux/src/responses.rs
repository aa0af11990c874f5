//! The rings' responses, as `xenhcd_urb_request_done` and `xenhcd_conn_notify` take them:
//! each checked (a bad one is a [`ProtocolError`] for good), its grants ended, its URB given
//! back with the status Linux would give it.

use super::*;

impl<G, T> Frontend<G, T>
where
    G: GrantTable + EventChannels,
    T: XsTransport,
{
    /// `xenhcd_urb_request_done`: consumes URB responses; true if more arrived meanwhile.
    pub(crate) fn urb_request_done(&mut self) -> bool {
        loop {
            let Some(c) = self.conn.as_mut() else {
                return false;
            };
            let rsp = match c.urb.next_response() {
                Ok(Some(rsp)) => rsp,
                Ok(None) => break,
                Err(e) => {
                    self.set_error(overrun(e, true));
                    return false;
                }
            };
            let id = rsp.id;
            if usize::from(id) >= self.shadow.len() {
                self.set_error(ProtocolError::UrbRingData { id });
                return false;
            }
            let slot = &mut self.shadow[usize::from(id)];
            match core::mem::replace(slot, Shadow::Free { last_unlink: false }) {
                Shadow::Submit(f) => {
                    if !self.gnttab_done(id, &f) {
                        return false;
                    }
                    self.res_to_urb(&rsp, *f);
                }
                Shadow::Unlink => self.shadow[usize::from(id)] = Shadow::Free { last_unlink: true },
                Shadow::Free { last_unlink: true } => {
                    self.shadow[usize::from(id)] = Shadow::Free { last_unlink: true };
                    warn!(
                        "event=xenhcd_duplicate_unlink_response nodename={} id={id}",
                        self.nodename
                    );
                    continue;
                }
                Shadow::Free { last_unlink: false } => {
                    self.set_error(ProtocolError::IllegalRequestId { id });
                    return false;
                }
            }
            self.free_ids.push(id);
        }
        let Some(c) = self.conn.as_mut() else {
            return false;
        };
        match c.urb.final_check_for_responses() {
            Ok(more) => more,
            Err(e) => {
                self.set_error(overrun(e, true));
                false
            }
        }
    }

    /// `xenhcd_gnttab_done`: ends every grant of the request; one the backend still holds is
    /// the protocol error. Pages come back to the pool only when all their grants ended.
    pub(crate) fn gnttab_done(&mut self, id: u16, f: &InFlight<G::Page>) -> bool {
        if self.persistent {
            // Kept grants: the backend may hold them mapped, as the promise allows.
            self.page_pool.extend(f.pages.iter().cloned());
            return true;
        }
        let mut released = true;
        for &gref in &f.grants {
            // gnttab_try_end_foreign_access: refused while the backend maps or copies.
            if self.platform.grant_in_use(gref) || self.platform.end_access(gref).is_err() {
                self.deferred_grants.push(gref);
                if released && self.error.is_none() {
                    self.set_error(ProtocolError::GrantNotReleased { id, gref });
                }
                released = false;
            }
        }
        if released {
            self.page_pool.extend(f.pages.iter().cloned());
        }
        released
    }

    /// `xenhcd_res_to_urb` and `xenhcd_giveback_urb`.
    fn res_to_urb(&mut self, rsp: &UsbifUrbResponse, f: InFlight<G::Page>) {
        let actual = usize::try_from(rsp.actual_length.max(0))
            .unwrap_or(0)
            .min(f.buffer_length);
        let status = if f.unlinked {
            -errno::ECONNRESET
        } else {
            translate_status(rsp.status)
        };
        let data = if f.direction == Direction::In && !f.discard_in_data {
            read_buffer(&f.pages, f.page_offset, actual)
        } else {
            Vec::new()
        };
        let buffer_pages = count_pages(f.page_offset, f.buffer_length);
        let iso_packets = (0..f.iso_packets)
            .map(|i| {
                let mut d = UsbIsoPacketDescriptor::new_zeroed();
                let at = i * ISO_DESCRIPTOR_SIZE;
                f.pages[buffer_pages + at / PAGE_SIZE]
                    .1
                    .read(at % PAGE_SIZE, d.as_mut_bytes());
                d
            })
            .collect();
        self.pending_unlink.retain(|&h| h != f.handle);
        self.give_back(Completion {
            handle: f.handle,
            status,
            actual_length: actual as u32,
            data,
            start_frame: rsp.start_frame,
            error_count: rsp.error_count,
            iso_packets,
        });
    }

    pub(crate) fn give_back(&mut self, c: Completion) {
        self.stats.completed += 1;
        if c.status != 0 {
            self.stats.errors += 1;
        }
        self.stats.bytes += u64::from(c.actual_length);
        self.completed.push_back(c);
    }

    /// `xenhcd_conn_notify`: port changes, each slot lent again with its id.
    pub(crate) fn conn_notify(&mut self) -> bool {
        let num_ports = self.num_ports;
        loop {
            let Some(c) = self.conn.as_mut() else {
                return false;
            };
            let rsp = match c.conn.next_response() {
                Ok(Some(rsp)) => rsp,
                Ok(None) => break,
                Err(e) => {
                    self.set_error(overrun(e, false));
                    return false;
                }
            };
            let (portnum, speed) = (rsp.portnum, rsp.speed);
            if portnum < 1 || portnum > num_ports {
                self.set_error(ProtocolError::ConnRingData { portnum, speed });
                return false;
            }
            let current = &mut self.port_speed[usize::from(portnum - 1)];
            if *current != speed {
                // SuperSpeed exists only on a USB 3 controller (`docs/pvusb-features.md`).
                let fastest = if u32::from(self.usb_ver) >= pvusb::USB_VER_SUPERSPEED {
                    pvusb::USBIF_SPEED_SUPER
                } else {
                    USBIF_SPEED_HIGH
                };
                if speed > fastest {
                    self.set_error(ProtocolError::ConnRingData { portnum, speed });
                    return false;
                }
                *current = speed;
                info!(
                    "event=xenhcd_port_change nodename={} port={portnum} speed={speed}",
                    self.nodename
                );
                self.port_events.push_back(PortEvent {
                    port: portnum,
                    speed,
                });
            }
            c.conn
                .push_request(&UsbifConnRequest { id: rsp.id })
                .expect("the consumed response freed a slot");
        }
        let Some(c) = self.conn.as_mut() else {
            return false;
        };
        let more = c.conn.final_check_for_responses();
        let (notify, port) = (c.conn.push_requests_and_check_notify(), c.port);
        if notify {
            let _ = self.platform.send(port);
        }
        match more {
            Ok(more) => more,
            Err(e) => {
                self.set_error(overrun(e, false));
                false
            }
        }
    }
}

fn overrun(e: RingError, urb_ring: bool) -> ProtocolError {
    let (rsp_prod, rsp_cons) = match e {
        RingError::Overrun { prod, cons } => (prod, cons),
        RingError::Full => (0, 0),
    };
    if urb_ring {
        ProtocolError::UrbRingIndex { rsp_prod, rsp_cons }
    } else {
        ProtocolError::ConnRingIndex { rsp_prod, rsp_cons }
    }
}

/// The first `len` bytes of a buffer that starts `offset` bytes into the first of `pages`.
fn read_buffer<P: SharedPage>(pages: &[(Gfn, P)], offset: usize, len: usize) -> Vec<u8> {
    let mut data = alloc::vec![0; len];
    let mut done = 0;
    while done < len {
        let at = offset + done;
        let bytes = (PAGE_SIZE - at % PAGE_SIZE).min(len - done);
        pages[at / PAGE_SIZE]
            .1
            .read(at % PAGE_SIZE, &mut data[done..done + bytes]);
        done += bytes;
    }
    data
}
