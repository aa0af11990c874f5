//! The xenbus side of the backend: a frontend's controller directory found under ours, its
//! state followed (InitWait, Connected, Closing, Closed), its rings mapped and its channel
//! bound when it connects, everything taken back when it goes or misbehaves.

use alloc::collections::BTreeSet;
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

use log::{info, warn};
use xen::abi::usbif::*;
use xen::abi::xs_wire::XsdError;
use xen::abi::{parse_decimal, DomId, EvtchnPort, GrantRef};
use xen::hypervisor::{
    EventChannels, GrantCopier, GrantMapper, LocalFrames, MapRequest, MAX_GRANT_BATCH,
};
use xen::page::{PageSpan, SharedPage};
use xen::pvusb;
use xen::ring::BackRing;
use xen::xenbus::{self, BackendAction, XenbusError, XenbusState};
use xen::xenstore::{TxId, XenStore, XsError, XsTransport};

use crate::host::UsbHost;
use crate::persistent::PersistentGrants;
use crate::*;

impl<H, T> Backend<H, T>
where
    H: GrantMapper + GrantCopier + LocalFrames + EventChannels,
    H::Page: Clone + SharedPage,
    T: XsTransport,
{
    /// Handles what xenstore delivered: watch events make every device be looked at again.
    pub fn poll_xenstore<U: UsbHost<H::Page> + ?Sized>(
        &mut self,
        host: &mut U,
    ) -> Result<(), XsError> {
        self.xs.poll()?;
        // A frontend's own state node, or a node in a known device's backend directory,
        // names its device: only that one is looked at again (our own writes there fire the
        // watch too, and a frontend that makes us write must not make us rescan every
        // controller). Anything else under our directory (a new device) means a full rescan.
        let mut rescan = false;
        let mut frontends = BTreeSet::new();
        let mut backend_nodes = BTreeSet::new();
        let mut assignments = BTreeSet::new();
        while let Some(e) = self.xs.next_event() {
            if let Some(id) = self
                .devices
                .iter()
                .find(|(_, d)| d.watch_token == e.token)
                .map(|(id, _)| *id)
            {
                frontends.insert(id);
                continue;
            }
            match self.device_node(&e.path) {
                // The directory itself: created or removed as a whole.
                Some((_, "")) => rescan = true,
                Some((_, rest)) if rest.starts_with(PORT_STATUS_DIR) => {}
                Some((id, rest)) if rest.starts_with(ASSIGN_DIR) => {
                    assignments.insert(id);
                }
                // The toolstack's keys (online, state) or our own writes: a frontend makes us
                // write only as often as its own changes are looked at, so not budgeted.
                Some((id, _)) => {
                    backend_nodes.insert(id);
                }
                None => rescan = true,
            }
        }
        if rescan {
            self.rescan(host);
        } else {
            for id in frontends {
                if let Some(d) = self.devices.get_mut(&id) {
                    d.reconcile_due = true;
                    if d.reconciles >= RECONCILES_PER_INTERVAL {
                        d.deferred = d.deferred.saturating_add(1);
                    }
                }
            }
            for id in backend_nodes {
                if self.devices.contains_key(&id) {
                    self.reconcile(id, host);
                }
            }
            // The toolstack's port assignments (only it writes them).
            for id in assignments {
                if self.devices.contains_key(&id) {
                    self.read_assignments(id, host);
                }
            }
        }
        // Each frontend's state changes, within its budget.
        let due: Vec<DeviceId> = self
            .devices
            .iter()
            .filter(|(_, d)| d.reconcile_due && d.reconciles < RECONCILES_PER_INTERVAL)
            .map(|(id, _)| *id)
            .collect();
        for id in due {
            if let Some(d) = self.devices.get_mut(&id) {
                d.reconciles += 1;
                d.reconcile_due = false;
                self.reconcile(id, host);
            }
        }
        Ok(())
    }

    /// The known device whose backend directory holds node `path`, and the node's path
    /// within it (empty for the directory itself).
    pub(crate) fn device_node<'p>(&self, path: &'p str) -> Option<(DeviceId, &'p str)> {
        let rest = path.strip_prefix(self.root.as_str())?.strip_prefix('/')?;
        let mut parts = rest.splitn(3, '/');
        let frontend = DomId::parse(parts.next()?)?;
        let devid = parse_decimal(parts.next()?).and_then(|v| u32::try_from(v).ok())?;
        let id = DeviceId { frontend, devid };
        self.devices
            .contains_key(&id)
            .then_some((id, parts.next().unwrap_or("")))
    }

    pub(crate) fn rescan<U: UsbHost<H::Page> + ?Sized>(&mut self, host: &mut U) {
        let mut present = Vec::new();
        let frontends = match self.xs.directory(TxId::NONE, &self.root) {
            Ok(d) => d,
            Err(XsError::Xs(xen::abi::xs_wire::XsdError::Enoent)) => Vec::new(),
            Err(e) => {
                warn!(
                    "event=xenstore_error op=directory path={} error={e}",
                    self.root
                );
                return;
            }
        };
        for fe in frontends {
            let Some(frontend) = DomId::parse(&fe) else {
                continue;
            };
            let devids = self
                .xs
                .directory(TxId::NONE, &format!("{}/{fe}", self.root))
                .unwrap_or_default();
            for d in devids {
                let Some(devid) = parse_decimal(&d).and_then(|v| u32::try_from(v).ok()) else {
                    continue;
                };
                present.push(DeviceId { frontend, devid });
            }
        }
        let gone: Vec<DeviceId> = self
            .devices
            .keys()
            .filter(|id| !present.contains(id))
            .copied()
            .collect();
        for id in gone {
            self.forget(id, "directory_removed", host);
        }
        for id in present {
            if !self.devices.contains_key(&id) {
                self.add(id);
            }
            if self.devices.contains_key(&id) {
                self.reconcile(id, host);
            }
            if self.devices.contains_key(&id) {
                self.read_assignments(id, host);
            }
        }
    }

    pub(crate) fn add(&mut self, id: DeviceId) {
        let dir = format!("{}/{}/{}", self.root, id.frontend, id.devid);
        match self.read_config(&dir, id) {
            Ok((frontend_dir, num_ports, usb_ver)) => {
                let watch_token = format!("fe-{}-{}", id.frontend, id.devid);
                if let Err(e) = self
                    .xs
                    .watch(&format!("{frontend_dir}/state"), &watch_token)
                {
                    warn!("event=xenstore_error op=watch path={frontend_dir}/state error={e}");
                    return;
                }
                // Offered before InitWait, so a frontend that connects on InitWait sees them.
                let offers = [
                    (pvusb::MAX_RING_PAGE_ORDER_KEY, pvusb::MAX_RING_PAGE_ORDER),
                    (pvusb::FEATURE_PERSISTENT_KEY, 1),
                    (
                        pvusb::FEATURE_MAX_INDIRECT_SEGMENTS_KEY,
                        u32::from(pvusb::MAX_INDIRECT_SEGMENTS),
                    ),
                ];
                for (key, value) in offers {
                    let path = format!("{dir}/{key}");
                    if let Err(e) = self
                        .xs
                        .write(TxId::NONE, &path, format!("{value}").as_bytes())
                    {
                        warn!("event=xenstore_error op=write path={path} error={e}");
                    }
                }
                if let Err(e) = xenbus::switch_state(&mut self.xs, &dir, XenbusState::InitWait) {
                    warn!("event=xenstore_error op=write path={dir}/state error={e}");
                }
                info!(
                    "event=vusb_initwait domid={} devid={} ports={num_ports} usb_ver={usb_ver}",
                    id.frontend, id.devid
                );
                let frontend_name = self
                    .xs
                    .read_string(TxId::NONE, &format!("{dir}/{}", pvusb::FRONTEND_NAME_KEY))
                    .ok()
                    .filter(|n| !n.is_empty());
                let dev = Device {
                    dir,
                    frontend_dir,
                    frontend_name,
                    watch_token,
                    num_ports,
                    usb_ver,
                    state: XenbusState::InitWait,
                    ports: alloc::vec![VPort::default(); usize::from(num_ports)],
                    conn: None,
                    warned: 0,
                    suppressed: 0,
                    reconciles: 0,
                    reconcile_due: false,
                    deferred: 0,
                };
                self.devices.insert(id, dev);
            }
            Err(e) => warn!(
                "event=vusb_refused domid={} devid={} {e}",
                id.frontend, id.devid
            ),
        }
    }

    /// The toolstack's keys of a new device (trusted writer, still checked).
    pub(crate) fn read_config(
        &mut self,
        dir: &str,
        id: DeviceId,
    ) -> Result<(String, u8, u8), XenbusError> {
        let frontend_dir = self
            .xs
            .read_string(TxId::NONE, &format!("{dir}/frontend"))?;
        let fe_id = self
            .xs
            .read_string(TxId::NONE, &format!("{dir}/frontend-id"))?;
        if DomId::parse(&fe_id) != Some(id.frontend) {
            return Err(bad(pvusb::FRONTEND_ID_KEY, &fe_id));
        }
        let expected = format!("/local/domain/{}/device/vusb/{}", id.frontend, id.devid);
        if frontend_dir != expected {
            return Err(bad("frontend", &frontend_dir));
        }
        let num_ports = xenbus::read_u32(
            &mut self.xs,
            TxId::NONE,
            dir,
            pvusb::NUM_PORTS_KEY,
            1..=USBIF_MAX_PORTNR,
        )? as u8;
        let usb_ver = xenbus::read_u32(
            &mut self.xs,
            TxId::NONE,
            dir,
            pvusb::USB_VER_KEY,
            1..=pvusb::USB_VER_SUPERSPEED,
        )? as u8;
        Ok((frontend_dir, num_ports, usb_ver))
    }

    pub(crate) fn reconcile<U: UsbHost<H::Page> + ?Sized>(&mut self, id: DeviceId, host: &mut U) {
        let Some(dev) = self.devices.get(&id) else {
            return;
        };
        let (dir, frontend_dir, ours) = (dev.dir.clone(), dev.frontend_dir.clone(), dev.state);
        // A destroyed domain's xenstore directory goes with it, and nobody else removes a
        // backend directory the toolstack did not create through libxl: take everything back
        // from the frontend and delete our directory ourselves. The toolstack made the
        // frontend directory readable to us, so EACCES means it is gone too (xenstored
        // answers EACCES for a missing node whose nearest ancestor we cannot read).
        if matches!(
            self.xs.read(TxId::NONE, &frontend_dir),
            Err(XsError::Xs(
                xen::abi::xs_wire::XsdError::Enoent | xen::abi::xs_wire::XsdError::Eacces
            ))
        ) {
            self.forget(id, "frontend_gone", host);
            // After the teardown, whose state writes would recreate it.
            self.remove_dir(&dir);
            return;
        }
        // libxl removes a device by writing our state to Closing (and online to 0).
        let written = xenbus::read_state(&mut self.xs, TxId::NONE, &dir).ok();
        if written == Some(XenbusState::Closing)
            && ours != XenbusState::Closing
            && ours != XenbusState::Closed
        {
            self.disconnect(id, "toolstack_closing", host);
        } else {
            let frontend = xenbus::read_state(&mut self.xs, TxId::NONE, &frontend_dir)
                .unwrap_or(XenbusState::Unknown);
            match xenbus::backend_action(ours, frontend) {
                BackendAction::Connect => self.connect(id, host),
                BackendAction::Disconnect(_) => self.disconnect(id, "frontend_closing", host),
                BackendAction::Reset => {
                    if let Some(d) = self.devices.get_mut(&id) {
                        d.state = XenbusState::InitWait;
                    }
                    let _ = xenbus::switch_state(&mut self.xs, &dir, XenbusState::InitWait);
                    info!(
                        "event=vusb_initwait domid={} devid={} reason=frontend_reinitialising",
                        id.frontend, id.devid
                    );
                }
                BackendAction::None => {}
            }
        }
        let closed = self
            .devices
            .get(&id)
            .is_some_and(|d| d.state == XenbusState::Closed);
        let online = self
            .xs
            .read_string(TxId::NONE, &format!("{dir}/online"))
            .unwrap_or_default();
        if closed && online != "1" {
            // As `xl devd` would: a closed device the toolstack took offline leaves, and the
            // driver domain deletes its own backend directory.
            self.remove_dir(&dir);
            self.forget(id, "offline", host);
        }
    }

    /// Deletes a device's backend directory, and its frontend's directory above it once that
    /// is empty (as libxl's path cleanup does), in one transaction so that a controller the
    /// toolstack adds meanwhile is not taken with it.
    pub(crate) fn remove_dir(&mut self, dir: &str) {
        let parent = String::from(dir.rsplit_once('/').map_or(dir, |(p, _)| p));
        let result = self.xs.transaction(5, |xs, tx| {
            xs.rm(tx, dir)?;
            if xs.directory(tx, &parent)?.is_empty() {
                xs.rm(tx, &parent)?;
            }
            Ok(())
        });
        if let Err(e) = result {
            warn!("event=xenstore_error op=rm path={dir} error={e}");
        }
    }

    pub(crate) fn connect<U: UsbHost<H::Page> + ?Sized>(&mut self, id: DeviceId, host: &mut U) {
        let Some(dev) = self.devices.get(&id) else {
            return;
        };
        let fdir = dev.frontend_dir.clone();
        let read =
            |xs: &mut XenStore<T>, key, range| xenbus::read_u32(xs, TxId::NONE, &fdir, key, range);
        let refs = (|| {
            let urb = urb_ring_refs(&mut self.xs, &fdir)?;
            // The promise of `feature-persistent`: absent is no promise.
            let persistent = match read(&mut self.xs, pvusb::FEATURE_PERSISTENT_KEY, 0..=1) {
                Err(XenbusError::Store(XsError::Xs(XsdError::Enoent))) => false,
                other => other? == 1,
            };
            let conn = GrantRef(read(&mut self.xs, pvusb::CONN_RING_REF_KEY, 0..=u32::MAX)?);
            let port = EvtchnPort(read(&mut self.xs, pvusb::EVENT_CHANNEL_KEY, 1..=u32::MAX)?);
            Ok::<_, XenbusError>((urb, conn, port, persistent))
        })();
        let (urb_refs, conn_ref, remote_port, promised) = match refs {
            Ok(r) => r,
            Err(e) => return self.refuse(id, &format!("{e}")),
        };
        let urb_pages = urb_refs.len();
        // The URB ring's pages in order, then the conn ring's.
        let reqs: Vec<MapRequest> = urb_refs
            .iter()
            .chain([&conn_ref])
            .map(|&gref| MapRequest {
                dom: id.frontend,
                gref,
                readonly: false,
            })
            .collect();
        // A 16-page URB ring and the conn ring are more than one map hypercall takes.
        let mut rings = Vec::new();
        let mut failure = None;
        for batch in reqs.chunks(MAX_GRANT_BATCH) {
            match self.hv.map(batch) {
                Ok(results) => {
                    for r in results {
                        match r {
                            Ok(m) => rings.push(m),
                            Err(s) => failure = Some(s),
                        }
                    }
                }
                Err(_) => failure = Some(GntStatus::GeneralError),
            }
        }
        if let Some(status) = failure {
            let _ = self.hv.unmap(rings);
            return self.refuse(
                id,
                &format!("reason=ring_map_failed status={}", status.name()),
            );
        }
        let port = match self.hv.bind_interdomain(id.frontend, remote_port) {
            Ok(p) => p,
            Err(e) => {
                let _ = self.hv.unmap(rings);
                return self.refuse(
                    id,
                    &format!("reason=bind_failed error={e} remote_port={remote_port}"),
                );
            }
        };
        let urb = BackRing::new(PageSpan::new(
            rings[..urb_pages].iter().map(|m| m.page.clone()).collect(),
        ));
        let conn = BackRing::new(rings[urb_pages].page.clone());
        let ring_size = urb.size();
        let Some(dev) = self.devices.get_mut(&id) else {
            return;
        };
        // Kept mappings serve the copy path; the map path maps every transfer anyway.
        let persistent = promised && self.data_path == DataPath::Copy;
        let mut c = Connection {
            persistent: persistent.then(PersistentGrants::default),
            rings,
            urb,
            conn,
            port,
            inflight: InFlightTable::with_capacity(ring_size),
            written: WrittenGrants::default(),
            parked: VecDeque::new(),
            changes: VecDeque::new(),
            stats: Stats::default(),
            logged: Stats::default(),
        };
        // Devices already on its ports are reported first.
        for (p, n) in dev.ports.iter().zip(1u8..) {
            if let Some(d) = p.device {
                let speed = self.known.iter().find(|k| k.id == d).map(|k| k.speed);
                let code = speed.map_or(USBIF_SPEED_NONE, |s| speed_code(s, dev.usb_ver));
                queue_change(&mut c, n, code);
            }
        }
        dev.conn = Some(c);
        dev.state = XenbusState::Connected;
        let (dir, ports, ver) = (dev.dir.clone(), dev.num_ports, dev.usb_ver);
        if let Err(e) = xenbus::switch_state(&mut self.xs, &dir, XenbusState::Connected) {
            warn!("event=xenstore_error op=write path={dir}/state error={e}");
        }
        info!(
            "event=frontend_connected domid={} devid={} ports={ports} usb_ver={ver} evtchn={port} urb_ring_ref={} urb_ring_pages={urb_pages} urb_ring_size={ring_size} conn_ring_ref={conn_ref} persistent={}",
            id.frontend,
            id.devid,
            urb_refs[0],
            if persistent { "yes" } else { "no" }
        );
        // The frontend may have notified before we bound the channel.
        self.service(id, host);
    }

    /// Gives up on a frontend that published unusable ring details: Closing, as Linux's
    /// `xenbus_dev_fatal` does, so the toolstack sees it.
    pub(crate) fn refuse(&mut self, id: DeviceId, why: &str) {
        warn!(
            "event=frontend_refused domid={} devid={} {why}",
            id.frontend, id.devid
        );
        if let Some(dev) = self.devices.get_mut(&id) {
            dev.state = XenbusState::Closing;
            let dir = dev.dir.clone();
            let _ = xenbus::switch_state(&mut self.xs, &dir, XenbusState::Closing);
        }
    }

    pub(crate) fn disconnect<U: UsbHost<H::Page> + ?Sized>(
        &mut self,
        id: DeviceId,
        why: &str,
        host: &mut U,
    ) {
        // Answers already queued go to this connection's ring, never to a later one's.
        self.finish_answers();
        let Some(dev) = self.devices.get_mut(&id) else {
            return;
        };
        let conn = dev.conn.take();
        dev.state = XenbusState::Closed;
        self.busy.retain(|b| *b != id);
        // Devices stay assigned, and are reported again when the frontend reconnects.
        for p in &mut dev.ports {
            p.address = 0;
        }
        let dir = dev.dir.clone();
        // What the connection carried, for the disconnect's line.
        let mut carried = Stats::default();
        if let Some(c) = conn {
            let Connection {
                mut rings,
                persistent,
                urb,
                conn,
                port,
                mut inflight,
                stats,
                ..
            } = c;
            // Every transfer is taken back from the host; its frames stay out of use until
            // the host says it finished (a cancel is asynchronous, and may fail).
            let cancelled = inflight.len();
            let mut quarantined = 0;
            // Transfers whose device reaches the kept mappings directly.
            let mut direct = Vec::new();
            for f in inflight.drain() {
                host.cancel(f.device, f.token);
                self.tokens.take(f.token);
                if f.buffer.reaches_kept_pages() {
                    direct.push(f.token);
                } else {
                    quarantined += f.buffer.frames.len();
                }
                self.quarantine.insert(f.token, f.buffer.frames);
            }
            // The rings are dropped before their pages are unmapped, in one batch with the
            // grants kept mapped unless a cancelled transfer may still reach those.
            drop(urb);
            drop(conn);
            // The kept mappings a cancelled transfer may still reach stay mapped until the
            // host reports every such transfer finished (`Backend::complete`).
            let kept = persistent
                .map(PersistentGrants::into_mappings)
                .unwrap_or_default();
            let deferred = if direct.is_empty() { 0 } else { kept.len() };
            if direct.is_empty() {
                rings.extend(kept);
            } else {
                self.deferred_unmaps.push((direct, kept));
            }
            if let Err(s) = self.hv.unmap(rings) {
                warn!(
                    "event=grant_unmap_failed domid={} devid={} status={} what=rings",
                    id.frontend,
                    id.devid,
                    s.name()
                );
            }
            let _ = self.hv.close(port);
            log_stats(id, &stats, "teardown", 0);
            carried = stats;
            info!(
                "event=frontend_transfers_cancelled domid={} devid={} count={cancelled} frames_quarantined={quarantined} mappings_deferred={deferred}",
                id.frontend, id.devid
            );
        }
        if let Err(e) = xenbus::switch_state(&mut self.xs, &dir, XenbusState::Closed) {
            warn!("event=xenstore_error op=write path={dir}/state error={e}");
        }
        info!(
            "event=frontend_disconnected domid={} devid={} reason={why} completed={} bytes={} indirect={} zero_copy={}",
            id.frontend, id.devid, carried.completed, carried.bytes, carried.indirect, carried.zero_copy
        );
    }

    pub(crate) fn forget<U: UsbHost<H::Page> + ?Sized>(
        &mut self,
        id: DeviceId,
        why: &str,
        host: &mut U,
    ) {
        if self.devices.get(&id).is_some_and(|d| d.conn.is_some()) {
            self.disconnect(id, why, host);
        }
        if let Some(dev) = self.devices.remove(&id) {
            let _ = self
                .xs
                .unwatch(&format!("{}/state", dev.frontend_dir), &dev.watch_token);
            info!(
                "event=vusb_removed domid={} devid={} reason={why} grants_mapped={}",
                id.frontend,
                id.devid,
                self.hv.mapped()
            );
        }
    }

    pub(crate) fn misbehaving<U: UsbHost<H::Page> + ?Sized>(
        &mut self,
        id: DeviceId,
        why: &str,
        host: &mut U,
    ) {
        warn!(
            "event=frontend_misbehaving domid={} devid={} {why}",
            id.frontend, id.devid
        );
        self.disconnect(id, "protocol_violation", host);
    }
}

/// The URB ring's grant references, one per page, from the frontend directory `fdir`: the
/// pages of `ring-page-order` (`urb-ring-ref0`, …) when the frontend wrote one, at most what
/// we offered ([`pvusb::MAX_RING_PAGE_ORDER`]); else the one page of `urb-ring-ref`.
fn urb_ring_refs<T: XsTransport>(
    xs: &mut XenStore<T>,
    fdir: &str,
) -> Result<Vec<GrantRef>, XenbusError> {
    let read =
        |xs: &mut XenStore<T>, key: &str, range| xenbus::read_u32(xs, TxId::NONE, fdir, key, range);
    match read(
        xs,
        pvusb::RING_PAGE_ORDER_KEY,
        0..=pvusb::MAX_RING_PAGE_ORDER,
    ) {
        Ok(order) => (0..1u32 << order)
            .map(|i| read(xs, &pvusb::urb_ring_ref_key(i), 0..=u32::MAX).map(GrantRef))
            .collect(),
        Err(XenbusError::Store(XsError::Xs(XsdError::Enoent))) => Ok(alloc::vec![GrantRef(read(
            xs,
            pvusb::URB_RING_REF_KEY,
            0..=u32::MAX
        )?)]),
        Err(e) => Err(e),
    }
}
