//! The PVUSB backend ("usbback"): one virtual host controller per frontend device
//! (`backend/vusb/<frontend>/<devid>`), each a virtualised share of the real controller.
//!
//! This is the lifecycle: it watches its backend directory, reaches InitWait well inside
//! libxl's 10 s, connects when the frontend has published its rings (maps both rings, binds
//! the event channel, goes Connected), follows either side into Closing/Closed, and removes
//! the device directory when the toolstack set `online` to 0. Until the URB path exists every
//! URB is answered `USBIF_STATUS_NODEV` (no device is attached to any port), so nothing hangs.
//!
//! It knows no hypercall: only the `xen` crate's traits, so it runs against `xen::sim` in
//! tests and against real Xen in the driver domain. Everything a frontend writes (ring refs,
//! event channel, state, ring contents) is checked before use; a misbehaving frontend is
//! disconnected, and only that frontend.
#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]
#![warn(missing_docs)]

extern crate alloc;

pub mod host;
#[cfg(any(test, feature = "sim"))]
pub mod sim_host;

use alloc::collections::BTreeMap;
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

use log::{info, warn};
use xen::abi::usbif::*;
use xen::abi::{parse_decimal, DomId, EvtchnPort, GrantRef};
use xen::hypervisor::{EventChannels, GrantMapper, GrantMapping, MapRequest};
use xen::pvusb::UrbRequest;
use xen::ring::{BackRing, RingError};
use xen::xenbus::{self, BackendAction, XenbusError, XenbusState};
use xen::xenstore::{TxId, XenStore, XsError, XsTransport};

const WATCH_BACKEND: &str = "usbback";

/// One frontend device: `backend/vusb/<frontend>/<devid>`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct DeviceId {
    /// The frontend domain.
    pub frontend: DomId,
    /// The device number under it.
    pub devid: u32,
}

struct Connection<P> {
    rings: Vec<GrantMapping<P>>,
    urb: BackRing<P, UsbifUrbRequest, UsbifUrbResponse>,
    port: EvtchnPort,
}

struct Device<P> {
    dir: String,
    frontend_dir: String,
    watch_token: String,
    num_ports: u8,
    usb_ver: u8,
    state: XenbusState,
    conn: Option<Connection<P>>,
}

/// The backend of one driver domain.
pub struct Backend<H: GrantMapper, T: XsTransport> {
    hv: H,
    xs: XenStore<T>,
    root: String,
    devices: BTreeMap<DeviceId, Device<H::Page>>,
}

fn bad(key: &str, value: &str) -> XenbusError {
    XenbusError::BadValue {
        key: key.into(),
        value: value.into(),
    }
}

impl<H, T> Backend<H, T>
where
    H: GrantMapper + EventChannels,
    H::Page: Clone,
    T: XsTransport,
{
    /// Starts watching `/local/domain/<domid>/backend/vusb`.
    pub fn new(hv: H, mut xs: XenStore<T>, domid: DomId) -> Result<Self, XsError> {
        let root = format!("/local/domain/{domid}/backend/vusb");
        xs.watch(&root, WATCH_BACKEND)?;
        info!("event=usbback_watching path={root}");
        Ok(Backend {
            hv,
            xs,
            root,
            devices: BTreeMap::new(),
        })
    }

    /// The hypervisor handle (the main loop scans its event channels).
    pub fn hypervisor(&mut self) -> &mut H {
        &mut self.hv
    }

    /// The xenstore connection (the driver domain publishes its USB devices through it).
    pub fn xenstore(&mut self) -> &mut XenStore<T> {
        &mut self.xs
    }

    /// Devices known, with the state we last wrote.
    pub fn devices(&self) -> impl Iterator<Item = (DeviceId, XenbusState)> + '_ {
        self.devices.iter().map(|(id, d)| (*id, d.state))
    }

    /// Handles what xenstore delivered: watch events make every device be looked at again.
    pub fn poll_xenstore(&mut self) -> Result<(), XsError> {
        self.xs.poll()?;
        let mut fired = false;
        while self.xs.next_event().is_some() {
            fired = true;
        }
        if fired {
            self.rescan();
        }
        Ok(())
    }

    /// Handles a notification on `port`.
    pub fn handle_event(&mut self, port: EvtchnPort) {
        let id = self
            .devices
            .iter()
            .find(|(_, d)| d.conn.as_ref().is_some_and(|c| c.port == port))
            .map(|(id, _)| *id);
        if let Some(id) = id {
            self.service(id);
        }
    }

    fn rescan(&mut self) {
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
            self.forget(id, "directory_removed");
        }
        for id in present {
            if !self.devices.contains_key(&id) {
                self.add(id);
            }
            if self.devices.contains_key(&id) {
                self.reconcile(id);
            }
        }
    }

    fn add(&mut self, id: DeviceId) {
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
                if let Err(e) = xenbus::switch_state(&mut self.xs, &dir, XenbusState::InitWait) {
                    warn!("event=xenstore_error op=write path={dir}/state error={e}");
                }
                info!(
                    "event=vusb_initwait domid={} devid={} ports={num_ports} usb_ver={usb_ver}",
                    id.frontend, id.devid
                );
                let dev = Device {
                    dir,
                    frontend_dir,
                    watch_token,
                    num_ports,
                    usb_ver,
                    state: XenbusState::InitWait,
                    conn: None,
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
    fn read_config(&mut self, dir: &str, id: DeviceId) -> Result<(String, u8, u8), XenbusError> {
        let frontend_dir = self
            .xs
            .read_string(TxId::NONE, &format!("{dir}/frontend"))?;
        let fe_id = self
            .xs
            .read_string(TxId::NONE, &format!("{dir}/frontend-id"))?;
        if DomId::parse(&fe_id) != Some(id.frontend) {
            return Err(bad("frontend-id", &fe_id));
        }
        let expected = format!("/local/domain/{}/device/vusb/{}", id.frontend, id.devid);
        if frontend_dir != expected {
            return Err(bad("frontend", &frontend_dir));
        }
        let num_ports = xenbus::read_u32(
            &mut self.xs,
            TxId::NONE,
            dir,
            "num-ports",
            1..=USBIF_MAX_PORTNR,
        )? as u8;
        let usb_ver = xenbus::read_u32(&mut self.xs, TxId::NONE, dir, "usb-ver", 1..=2)? as u8;
        Ok((frontend_dir, num_ports, usb_ver))
    }

    fn reconcile(&mut self, id: DeviceId) {
        let Some(dev) = self.devices.get(&id) else {
            return;
        };
        let (dir, frontend_dir, ours) = (dev.dir.clone(), dev.frontend_dir.clone(), dev.state);
        // libxl removes a device by writing our state to Closing (and online to 0).
        let written = xenbus::read_state(&mut self.xs, TxId::NONE, &dir).ok();
        if written == Some(XenbusState::Closing)
            && ours != XenbusState::Closing
            && ours != XenbusState::Closed
        {
            self.disconnect(id, "toolstack_closing");
        } else {
            let frontend = xenbus::read_state(&mut self.xs, TxId::NONE, &frontend_dir)
                .unwrap_or(XenbusState::Unknown);
            match xenbus::backend_action(ours, frontend) {
                BackendAction::Connect => self.connect(id),
                BackendAction::Disconnect(_) => self.disconnect(id, "frontend_closing"),
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
            if let Err(e) = self.xs.rm(TxId::NONE, &dir) {
                warn!("event=xenstore_error op=rm path={dir} error={e}");
            }
            self.forget(id, "offline");
        }
    }

    fn connect(&mut self, id: DeviceId) {
        let Some(dev) = self.devices.get(&id) else {
            return;
        };
        let fdir = dev.frontend_dir.clone();
        let read =
            |xs: &mut XenStore<T>, key, range| xenbus::read_u32(xs, TxId::NONE, &fdir, key, range);
        let refs = (|| {
            let urb = GrantRef(read(&mut self.xs, "urb-ring-ref", 0..=u32::MAX)?);
            let conn = GrantRef(read(&mut self.xs, "conn-ring-ref", 0..=u32::MAX)?);
            let port = EvtchnPort(read(&mut self.xs, "event-channel", 1..=u32::MAX)?);
            Ok::<_, XenbusError>((urb, conn, port))
        })();
        let (urb_ref, conn_ref, remote_port) = match refs {
            Ok(r) => r,
            Err(e) => return self.refuse(id, &format!("{e}")),
        };
        let reqs = [
            MapRequest {
                dom: id.frontend,
                gref: urb_ref,
                readonly: false,
            },
            MapRequest {
                dom: id.frontend,
                gref: conn_ref,
                readonly: false,
            },
        ];
        let results = match self.hv.map(&reqs) {
            Ok(r) => r,
            Err(_) => return self.refuse(id, "reason=map_batch"),
        };
        let mut rings = Vec::new();
        let mut failure = None;
        for r in results {
            match r {
                Ok(m) => rings.push(m),
                Err(s) => failure = Some(s),
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
        let urb = BackRing::new(rings[0].page.clone());
        let dev = self.devices.get_mut(&id).expect("looked up above");
        dev.conn = Some(Connection { rings, urb, port });
        dev.state = XenbusState::Connected;
        let (dir, ports, ver) = (dev.dir.clone(), dev.num_ports, dev.usb_ver);
        if let Err(e) = xenbus::switch_state(&mut self.xs, &dir, XenbusState::Connected) {
            warn!("event=xenstore_error op=write path={dir}/state error={e}");
        }
        info!(
            "event=frontend_connected domid={} devid={} ports={ports} usb_ver={ver} evtchn={port} urb_ring_ref={urb_ref} conn_ring_ref={conn_ref}",
            id.frontend, id.devid
        );
        // The frontend may have notified before we bound the channel.
        self.service(id);
    }

    /// Gives up on a frontend that published unusable ring details: Closing, as Linux's
    /// `xenbus_dev_fatal` does, so the toolstack sees it.
    fn refuse(&mut self, id: DeviceId, why: &str) {
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

    fn disconnect(&mut self, id: DeviceId, why: &str) {
        let Some(dev) = self.devices.get_mut(&id) else {
            return;
        };
        let conn = dev.conn.take();
        dev.state = XenbusState::Closed;
        let dir = dev.dir.clone();
        if let Some(c) = conn {
            let Connection { rings, urb, port } = c;
            // The ring is dropped before its page is unmapped.
            drop(urb);
            if let Err(s) = self.hv.unmap(rings) {
                warn!(
                    "event=grant_unmap_failed domid={} devid={} status={}",
                    id.frontend,
                    id.devid,
                    s.name()
                );
            }
            let _ = self.hv.close(port);
        }
        if let Err(e) = xenbus::switch_state(&mut self.xs, &dir, XenbusState::Closed) {
            warn!("event=xenstore_error op=write path={dir}/state error={e}");
        }
        info!(
            "event=frontend_disconnected domid={} devid={} reason={why}",
            id.frontend, id.devid
        );
    }

    fn forget(&mut self, id: DeviceId, why: &str) {
        if self.devices.get(&id).is_some_and(|d| d.conn.is_some()) {
            self.disconnect(id, why);
        }
        if let Some(dev) = self.devices.remove(&id) {
            let _ = self
                .xs
                .unwatch(&format!("{}/state", dev.frontend_dir), &dev.watch_token);
            info!(
                "event=vusb_removed domid={} devid={} reason={why}",
                id.frontend, id.devid
            );
        }
    }

    /// Answers every waiting URB request. No device is attached to any port yet, so each is
    /// `USBIF_STATUS_NODEV` (a malformed one `USBIF_STATUS_INVAL`); an unlink answers for
    /// itself only, since nothing is in flight to cancel.
    fn service(&mut self, id: DeviceId) {
        let Some(dev) = self.devices.get_mut(&id) else {
            return;
        };
        let num_ports = dev.num_ports;
        let Some(conn) = dev.conn.as_mut() else {
            return;
        };
        let result: Result<bool, RingError> = (|| loop {
            while let Some(raw) = conn.urb.next_request()? {
                let status = match UrbRequest::decode(&raw, num_ports) {
                    Ok(_) => USBIF_STATUS_NODEV,
                    Err(e) => {
                        warn!(
                            "event=urb_invalid domid={} devid={} id={} {e}",
                            id.frontend, id.devid, raw.id
                        );
                        USBIF_STATUS_INVAL
                    }
                };
                let rsp = UsbifUrbResponse {
                    id: raw.id,
                    start_frame: 0,
                    status,
                    actual_length: 0,
                    error_count: 0,
                };
                conn.urb.push_response(&rsp)?;
            }
            if !conn.urb.final_check_for_requests()? {
                return Ok(conn.urb.push_responses_and_check_notify());
            }
        })();
        match result {
            Ok(true) => {
                let port = conn.port;
                let _ = self.hv.send(port);
            }
            Ok(false) => {}
            Err(e) => {
                warn!(
                    "event=frontend_misbehaving domid={} devid={} {e}",
                    id.frontend, id.devid
                );
                self.disconnect(id, "ring_overrun");
            }
        }
    }
}

#[cfg(test)]
mod tests;
