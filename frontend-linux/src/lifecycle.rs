//! The xenbus side, as `xenhcd_probe`, `xenhcd_backend_changed`, `xenhcd_connect` and
//! `xenhcd_disconnect` do it: probing the device, following the backend's state, granting
//! and publishing the rings, and tearing them down with every URB given back.

use super::*;

fn read_state_or_unknown<T: XsTransport>(xs: &mut XenStore<T>, dir: &str) -> XenbusState {
    // xenbus_read_driver_state: a state that cannot be read (gone, unreadable, garbage) is
    // Unknown, which xen-hcd ignores.
    xenbus::read_state(xs, TxId::NONE, dir).unwrap_or(XenbusState::Unknown)
}

/// What xenbus and `xenhcd_probe` read of a new device before granting anything.
pub(crate) struct Probe {
    /// `/local/domain/<domid>/device/vusb/<devid>`.
    pub nodename: String,
    /// The backend's directory.
    pub otherend: String,
    pub backend_id: DomId,
    pub num_ports: u8,
    pub usb_ver: u8,
}

/// Probes `/local/domain/<domid>/device/vusb/<devid>`: `backend` and `backend-id`, our
/// state, which must be Initialising, the backend's `num-ports` (1..=31) and `usb-ver` (1
/// or 2).
pub(crate) fn probe<T: XsTransport>(
    xs: &mut XenStore<T>,
    domid: DomId,
    devid: u32,
) -> Result<Probe, Error> {
    let nodename = format!("/local/domain/{domid}/device/vusb/{devid}");
    let otherend = xs.read_string(TxId::NONE, &format!("{nodename}/backend"))?;
    let backend_id =
        xenbus::read_u32(xs, TxId::NONE, &nodename, pvusb::BACKEND_ID_KEY, 0..=0x7fef)?;
    let state = xenbus::read_state(xs, TxId::NONE, &nodename)?;
    if state != XenbusState::Initialising {
        return Err(Error::NotInitialising(state));
    }
    let num_ports = xenbus::read_u32(
        xs,
        TxId::NONE,
        &otherend,
        pvusb::NUM_PORTS_KEY,
        1..=USBIF_MAX_PORTNR,
    )?;
    // 1 or 2 as xen-hcd takes; 3, a USB 3 controller, as our own frontend does.
    let usb_ver = xenbus::read_u32(
        xs,
        TxId::NONE,
        &otherend,
        pvusb::USB_VER_KEY,
        1..=pvusb::USB_VER_SUPERSPEED,
    )?;
    Ok(Probe {
        nodename,
        otherend,
        // The ranges above make these exact.
        backend_id: DomId(backend_id as u16),
        num_ports: num_ports as u8,
        usb_ver: usb_ver as u8,
    })
}

/// `xenhcd_connect`'s transaction: the rings' grants and the event channel, under `dir`.
/// One URB ring page is `urb-ring-ref`, as xen-hcd writes it; more are `ring-page-order` and
/// `urb-ring-ref0`, … (`docs/pvusb-features.md`).
pub(crate) fn publish_rings<T: XsTransport>(
    xs: &mut XenStore<T>,
    dir: &str,
    urb_ring_refs: &[GrantRef],
    conn_ring_ref: GrantRef,
    port: EvtchnPort,
    persistent: bool,
) -> Result<(), XsError> {
    xs.transaction(u32::MAX, |xs, tx| {
        if persistent {
            xs.write(
                tx,
                &format!("{dir}/{}", pvusb::FEATURE_PERSISTENT_KEY),
                b"1",
            )?;
        }
        if let [one] = urb_ring_refs {
            xs.write(
                tx,
                &format!("{dir}/{}", pvusb::URB_RING_REF_KEY),
                format!("{one}").as_bytes(),
            )?;
        } else {
            let order = urb_ring_refs.len().trailing_zeros();
            xs.write(
                tx,
                &format!("{dir}/{}", pvusb::RING_PAGE_ORDER_KEY),
                format!("{order}").as_bytes(),
            )?;
            for (i, gref) in (0..).zip(urb_ring_refs) {
                xs.write(
                    tx,
                    &format!("{dir}/{}", pvusb::urb_ring_ref_key(i)),
                    format!("{gref}").as_bytes(),
                )?;
            }
        }
        xs.write(
            tx,
            &format!("{dir}/{}", pvusb::CONN_RING_REF_KEY),
            format!("{conn_ring_ref}").as_bytes(),
        )?;
        xs.write(
            tx,
            &format!("{dir}/{}", pvusb::EVENT_CHANNEL_KEY),
            format!("{port}").as_bytes(),
        )
    })
}

impl<G, T> Frontend<G, T>
where
    G: GrantTable + EventChannels,
    T: XsTransport,
{
    /// Follows xenstore only: the backend's state (`xenhcd_backend_changed`) and the removal
    /// of our directory.
    pub fn poll_xenstore(&mut self) -> Result<(), Error> {
        self.xs.poll()?;
        let mut fired = false;
        while self.xs.next_event().is_some() {
            fired = true;
        }
        if !fired {
            return Ok(());
        }
        if self.state != XenbusState::Closed
            && self
                .xs
                .read(TxId::NONE, &format!("{}/state", self.nodename))
                == Err(XsError::Xs(XsdError::Enoent))
        {
            // The toolstack removed the device (xenhcd_remove): no state to write any more.
            info!("event=xenhcd_removed nodename={}", self.nodename);
            self.shut_down();
            self.state = XenbusState::Closed;
            return Ok(());
        }
        let backend = read_state_or_unknown(&mut self.xs, &self.otherend);
        match xenbus::frontend_action(self.state, backend) {
            FrontendAction::Connect => self.connect(),
            FrontendAction::Close => {
                info!(
                    "event=xenhcd_backend_closing nodename={} backend_state={backend:?}",
                    self.nodename
                );
                self.shut_down();
                xenbus::switch_state(&mut self.xs, &self.nodename, XenbusState::Closed)?;
                self.state = XenbusState::Closed;
                Ok(())
            }
            FrontendAction::None => Ok(()),
        }
    }

    /// `xenhcd_connect`: rings, channel, one transaction, the conn ring lent, Connected. The
    /// URB ring has 2^order pages, the order we asked for as far as the backend offers it.
    fn connect(&mut self) -> Result<(), Error> {
        let be = self.backend_id;
        let offered = xenbus::read_u32(
            &mut self.xs,
            TxId::NONE,
            &self.otherend,
            pvusb::MAX_RING_PAGE_ORDER_KEY,
            0..=u32::MAX,
        )
        .unwrap_or(0);
        let order = self.ring_page_order.min(offered);
        // The URB ring's pages, then the conn ring's.
        let mut rings = self.grant_ring_pages((1 << order) + 1)?;
        let (conn_page, conn_ring_ref) = rings.pop().expect("at least the conn ring");
        let port = match self.platform.alloc_unbound(be) {
            Ok(p) => p,
            Err(e) => {
                for (_, gref) in rings {
                    self.end_grant(gref);
                }
                self.end_grant(conn_ring_ref);
                return Err(e.into());
            }
        };
        let (urb_pages, urb_ring_refs) = rings.into_iter().unzip();
        let mut c = Connection {
            urb: FrontRing::init(PageSpan::new(urb_pages)),
            conn: FrontRing::init(conn_page),
            urb_ring_refs,
            conn_ring_ref,
            port,
        };
        // A shadow id per URB ring entry.
        let size = c.urb.size() as u16;
        self.shadow = (0..size)
            .map(|_| Shadow::Free { last_unlink: false })
            .collect();
        self.free_ids = (0..size).rev().collect();
        let dir = self.nodename.clone();
        let urb_ring_ref = c.urb_ring_refs[0];
        let urb_ring_pages = c.urb_ring_refs.len();
        let offers_persistent = xenbus::read_u32(
            &mut self.xs,
            TxId::NONE,
            &self.otherend,
            pvusb::FEATURE_PERSISTENT_KEY,
            0..=1,
        ) == Ok(1);
        self.persistent = self.persistent_wanted && offers_persistent;
        let offers_indirect = xenbus::read_u32(
            &mut self.xs,
            TxId::NONE,
            &self.otherend,
            pvusb::FEATURE_MAX_INDIRECT_SEGMENTS_KEY,
            0..=u32::from(u16::MAX),
        )
        .unwrap_or(0);
        self.max_indirect = if self.indirect_wanted {
            offers_indirect.min(u32::from(pvusb::MAX_INDIRECT_SEGMENTS)) as u16
        } else {
            0
        };
        if let Err(e) = publish_rings(
            &mut self.xs,
            &dir,
            &c.urb_ring_refs,
            conn_ring_ref,
            port,
            self.persistent,
        ) {
            warn!("event=xenhcd_connect_failed nodename={dir} error={e}");
            self.conn = Some(c);
            self.destroy_rings();
            // xenbus_dev_fatal: the device goes to Closing.
            xenbus::switch_state(&mut self.xs, &dir, XenbusState::Closing)?;
            self.state = XenbusState::Closing;
            return Err(e.into());
        }
        for id in 0..CONN_RING_SIZE as u16 {
            c.conn
                .push_request(&UsbifConnRequest { id })
                .expect("a fresh conn ring has a slot per id");
        }
        let notify = c.conn.push_requests_and_check_notify();
        self.conn = Some(c);
        if notify {
            // The backend has not bound the channel yet, so this is a no-op in Xen, as it is
            // for xen-hcd; the backend scans the ring once it connects.
            self.platform.send(port)?;
        }
        xenbus::switch_state(&mut self.xs, &dir, XenbusState::Connected)?;
        self.state = XenbusState::Connected;
        info!(
            "event=xenhcd_connected nodename={dir} urb_ring_ref={urb_ring_ref} urb_ring_pages={urb_ring_pages} conn_ring_ref={conn_ring_ref} evtchn={port}"
        );
        Ok(())
    }

    /// `n` fresh pages granted writable to the backend, for rings; on a failure none stays
    /// granted.
    fn grant_ring_pages(&mut self, n: u32) -> Result<Vec<(G::Page, GrantRef)>, Error> {
        let be = self.backend_id;
        let mut pages = Vec::new();
        for _ in 0..n {
            let granted = self
                .platform
                .alloc_page()
                .and_then(|(gfn, page)| Ok((page, self.platform.grant_access(be, gfn, false)?)));
            match granted {
                Ok(p) => pages.push(p),
                Err(e) => {
                    for (_, gref) in pages {
                        self.end_grant(gref);
                    }
                    return Err(e.into());
                }
            }
        }
        Ok(pages)
    }

    /// `xenhcd_stop` and `xenhcd_destroy_rings`: every URB back with `-ESHUTDOWN` (or
    /// `-ECONNRESET` if unlinked), all grants ended, the channel closed.
    fn shut_down(&mut self) {
        let mut ids: Vec<usize> = (0..self.shadow.len())
            .filter(|&i| matches!(self.shadow[i], Shadow::Submit(_)))
            .collect();
        ids.sort_by_key(|&i| match &self.shadow[i] {
            Shadow::Submit(f) => f.handle,
            _ => UrbHandle(0),
        });
        for id in ids {
            let Shadow::Submit(f) =
                core::mem::replace(&mut self.shadow[id], Shadow::Free { last_unlink: false })
            else {
                continue;
            };
            // xen-hcd checks the grants here too; the backend has had its Closing to let go.
            self.gnttab_done(id as u16, &f);
            let status = if f.unlinked {
                -errno::ECONNRESET
            } else {
                -errno::ESHUTDOWN
            };
            self.give_back(Completion::without_data(f.handle, status));
        }
        for s in &mut self.shadow {
            *s = Shadow::Free { last_unlink: false };
        }
        self.free_ids = (0..self.shadow.len() as u16).rev().collect();
        while let Some(q) = self.pending_submit.pop_front() {
            self.give_back(Completion::without_data(q.handle, -errno::ESHUTDOWN));
        }
        self.pending_unlink.clear();
        self.destroy_rings();
    }

    fn destroy_rings(&mut self) {
        if let Some(c) = self.conn.take() {
            if let Err(e) = self.platform.close(c.port) {
                warn!("event=xenhcd_evtchn_close_failed port={} error={e}", c.port);
            }
            for gref in c.urb_ring_refs {
                self.end_grant(gref);
            }
            self.end_grant(c.conn_ring_ref);
            // The kept grants end with the connection (later, if the backend still maps one).
            for gref in core::mem::take(&mut self.kept_grants).into_values() {
                self.end_grant(gref);
            }
            self.persistent = false;
        }
    }

    /// Ends a grant we no longer need; one the backend still holds is retried later.
    fn end_grant(&mut self, gref: GrantRef) {
        match self.platform.end_access(gref) {
            Ok(()) => {}
            Err(Errno::EBUSY) => self.deferred_grants.push(gref),
            Err(e) => warn!("event=xenhcd_end_access_failed gref={gref} error={e}"),
        }
    }

    pub(crate) fn retry_deferred_grants(&mut self) {
        let platform = &mut self.platform;
        self.deferred_grants
            .retain(|&g| platform.end_access(g) == Err(Errno::EBUSY));
    }
}
