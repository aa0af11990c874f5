//! usbctl's logic: the xenstore nodes of a PVUSB controller whose backend is a driver domain,
//! written as libxl writes them for a `type=pv` usbctrl (`xl` cannot name a backend other
//! than dom0), and removed as libxl removes them. Runs over any xenstore transport: the
//! xenstored socket in dom0, `xen::sim` in tests.

use std::time::{Duration, Instant};

use xen::abi::xs_wire::XsdError;
use xen::abi::{parse_decimal, DomId};
use xen::pvusb::{self, ControllerNodes, DeviceSelector, FRONTEND_NAME_KEY};
use xen::xenbus::{self, XenbusState};
use xen::xenstore::{TxId, XenStore, XsError, XsTransport};

/// How long libxl waits for a backend (`LIBXL_INIT_TIMEOUT`, `LIBXL_DESTROY_TIMEOUT`).
pub const BACKEND_TIMEOUT: Duration = Duration::from_secs(10);

/// A failure, worded for the person at the terminal.
#[derive(Debug, PartialEq, Eq)]
pub struct Error(pub String);

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<XsError> for Error {
    fn from(e: XsError) -> Self {
        Error(format!("xenstore: {e}"))
    }
}

fn err<T>(msg: impl Into<String>) -> Result<T, Error> {
    Err(Error(msg.into()))
}

/// Where `backend` publishes the USB devices it can assign (see
/// [`xen::pvusb::DEVICES_DIR`]).
pub fn devices_dir(backend: DomId) -> String {
    format!("/local/domain/{backend}/{}", xen::pvusb::DEVICES_DIR)
}

pub mod cli;
pub mod monitor;
pub mod service;
pub mod xlcfg;

pub use xen::pvusb::busid_key;

pub use xen::pvusb::{ASSIGN_DIR, PORT_STATUS_DIR};

/// Waits of `tick` the guest gets, after its devices are detached, before its controller
/// goes.
const GUEST_SETTLE_TICKS: u32 = 10;

impl Assignable {
    /// A field of the description (`vid`, `pid`, `serial`, …).
    pub fn field(&self, key: &str) -> Option<&str> {
        self.description
            .split_whitespace()
            .find_map(|w| w.strip_prefix(key)?.strip_prefix('='))
    }

    /// Whether an assignment of `selector` would take this device.
    pub fn is(&self, selector: &DeviceSelector) -> bool {
        let hex = |k| self.field(k).and_then(|v| u16::from_str_radix(v, 16).ok());
        match (hex("vid"), hex("pid")) {
            (Some(vid), Some(pid)) => selector.matches(&self.busid, vid, pid, self.field("serial")),
            _ => matches!(selector, DeviceSelector::BusId(b) if *b == self.busid),
        }
    }
}

/// What became of an attach.
#[derive(Debug, PartialEq, Eq)]
pub enum Attached {
    /// The guest has the device.
    Connected,
    /// The assignment waits (for the device to be plugged in); the backend's reason.
    Waiting(String),
}

/// A device usbdom offers, as `list-assignable-devices` shows it.
#[derive(Debug, PartialEq, Eq)]
pub struct Assignable {
    /// Linux-style bus id (`1-2`, `1-4.3`).
    pub busid: String,
    /// usbdom's description (`vid=… pid=… speed=… class=… product=…`).
    pub description: String,
    /// Where it is assigned: (frontend, devid, port).
    pub assigned: Option<(DomId, u32, u32)>,
}

use xen::pvusb::valid_busid;

/// A controller as `list` shows it.
#[derive(Debug, PartialEq, Eq)]
pub struct Controller {
    /// Device number under the frontend.
    pub devid: u32,
    /// The backend domain.
    pub backend: DomId,
    /// USB version 1, 2 or 3.
    pub usb_ver: u32,
    /// Ports.
    pub ports: u32,
    /// Backend and frontend state.
    pub states: (XenbusState, XenbusState),
    /// Assigned ports: (port, bus id).
    pub assigned: Vec<(u32, String)>,
}

/// usbctl on one xenstore connection. `tick` runs between polls while waiting for the
/// backend (tests run the backend there; the real tool sleeps).
pub struct Usbctl<T: XsTransport> {
    xs: XenStore<T>,
    tick: Box<dyn FnMut()>,
    timeout: Duration,
}

impl<T: XsTransport> Usbctl<T> {
    /// usbctl on `xs`.
    pub fn new(xs: XenStore<T>, tick: Box<dyn FnMut()>) -> Self {
        Usbctl {
            xs,
            tick,
            timeout: BACKEND_TIMEOUT,
        }
    }

    /// Waits at most `timeout` for the backend instead of libxl's 10 s.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The store connection.
    pub fn xenstore(&mut self) -> &mut XenStore<T> {
        &mut self.xs
    }

    /// A running domain by name or id.
    pub fn domain(&mut self, name_or_id: &str) -> Result<DomId, Error> {
        let ids = self.xs.directory(TxId::NONE, "/local/domain")?;
        for id in ids {
            let Some(domid) = DomId::parse(&id) else {
                continue;
            };
            if id == name_or_id {
                return Ok(domid);
            }
            if let Ok(name) = self
                .xs
                .read_string(TxId::NONE, &format!("/local/domain/{id}/name"))
            {
                if name == name_or_id {
                    return Ok(domid);
                }
            }
        }
        err(format!(
            "no running domain is called '{name_or_id}' (see `xl list`)"
        ))
    }

    fn vusb_dir(frontend: DomId) -> String {
        format!("/local/domain/{frontend}/device/vusb")
    }

    fn backend_dir(backend: DomId, frontend: DomId, devid: u32) -> String {
        format!("/local/domain/{backend}/backend/vusb/{frontend}/{devid}")
    }

    /// Waits for `dir/state` to be `want`, or past it up to Connected (a frontend that is
    /// already waiting connects at once, and a state is read, not watched, so a short one
    /// can be missed); with `or_gone`, a removed directory also counts (a driver domain may
    /// close and delete its directory before we look).
    fn wait_state(
        &mut self,
        dir: &str,
        want: XenbusState,
        what: &str,
        or_gone: bool,
    ) -> Result<(), Error> {
        let start = Instant::now();
        loop {
            match xenbus::read_state(&mut self.xs, TxId::NONE, dir) {
                Ok(s) if s == want => return Ok(()),
                Ok(s)
                    if want < XenbusState::Connected && s > want && s <= XenbusState::Connected =>
                {
                    return Ok(())
                }
                Err(xenbus::XenbusError::Store(XsError::Xs(XsdError::Enoent))) if or_gone => {
                    return Ok(())
                }
                _ => {}
            }
            if start.elapsed() > self.timeout {
                return err(format!(
                    "{what} did not reach state {} ({want:?}) within {} s",
                    want as u8,
                    self.timeout.as_secs()
                ));
            }
            (self.tick)();
        }
    }

    /// `hc-create`: a virtual controller with `ports` ports, USB `usb_ver`, in `frontend`,
    /// served by `backend`. Returns its devid once the backend waits for the frontend.
    pub fn hc_create(
        &mut self,
        frontend: DomId,
        backend: DomId,
        usb_ver: u32,
        ports: u32,
    ) -> Result<u32, Error> {
        self.create(frontend, backend, usb_ver, ports, false)
            .map(|devid| devid.expect("created unconditionally"))
    }

    /// [`Usbctl::hc_create`], unless `backend` serves a controller of `frontend` already:
    /// then nothing is written and the answer is `None`. Looked at in the transaction that
    /// creates it, so two usbctls giving a guest its controllers at once (`up`, and `start
    /// --follow` seeing the guest appear) make one.
    pub fn hc_create_unless_served(
        &mut self,
        frontend: DomId,
        backend: DomId,
        usb_ver: u32,
        ports: u32,
    ) -> Result<Option<u32>, Error> {
        self.create(frontend, backend, usb_ver, ports, true)
    }

    fn create(
        &mut self,
        frontend: DomId,
        backend: DomId,
        usb_ver: u32,
        ports: u32,
        unless_served: bool,
    ) -> Result<Option<u32>, Error> {
        if !(1..=pvusb::USB_VER_SUPERSPEED).contains(&usb_ver) {
            return err(format!(
                "usb version must be 1, 2 or 3 (3 only for guests whose frontend knows it), not {usb_ver}"
            ));
        }
        if !(1..=31).contains(&ports) {
            return err(format!("ports must be 1 to 31, not {ports}"));
        }
        if frontend == backend {
            return err("a domain cannot be its own USB backend");
        }
        let mut devid = 0;
        let served = self.xs.transaction(5, |xs, tx| {
            let existing = match xs.directory(tx, &Self::vusb_dir(frontend)) {
                Ok(d) => d,
                Err(XsError::Xs(XsdError::Enoent)) => Vec::new(),
                Err(e) => return Err(e),
            };
            if unless_served {
                for d in &existing {
                    let key = format!("{}/{d}/backend-id", Self::vusb_dir(frontend));
                    let id = xs.read_string(tx, &key).ok();
                    if id.as_deref().and_then(DomId::parse) == Some(backend) {
                        return Ok(true);
                    }
                }
            }
            devid = existing
                .iter()
                .filter_map(|d| parse_decimal(d))
                .map(|d| d as u32 + 1)
                .max()
                .unwrap_or(0);
            let nodes = ControllerNodes {
                frontend,
                backend,
                devid,
                usb_ver: usb_ver as u8,
                ports: ports as u8,
            };
            nodes.write(xs, tx)?;
            // The driver domain's policy names domains; it cannot read their names itself.
            if let Ok(name) = xs.read_string(tx, &format!("/local/domain/{frontend}/name")) {
                xs.write(
                    tx,
                    &format!("{}/{FRONTEND_NAME_KEY}", nodes.backend_dir()),
                    name.as_bytes(),
                )?;
            }
            Ok(false)
        })?;
        if served {
            return Ok(None);
        }
        let bdir = Self::backend_dir(backend, frontend, devid);
        if let Err(e) = self.wait_state(&bdir, XenbusState::InitWait, "the backend", false) {
            // Leave nothing behind that a later attempt would trip over.
            let _ = self.xs.rm(TxId::NONE, &bdir);
            let _ = self
                .xs
                .rm(TxId::NONE, &format!("{}/{devid}", Self::vusb_dir(frontend)));
            return err(format!(
                "{e}: is usbdom running and serving xenstore? (`xl list`, its log)"
            ));
        }
        Ok(Some(devid))
    }

    /// `hc-destroy`: libxl's removal (online=0, state Closing, wait for Closed and for the
    /// driver domain to delete its directory), then the frontend directory goes.
    pub fn hc_destroy(&mut self, frontend: DomId, devid: u32) -> Result<(), Error> {
        let fdir = format!("{}/{devid}", Self::vusb_dir(frontend));
        let (bdir, _) = self.controller_backend_dir(frontend, devid)?;
        self.detach_all(&bdir)?;
        self.xs.write(TxId::NONE, &format!("{bdir}/online"), b"0")?;
        xenbus::switch_state(&mut self.xs, &bdir, XenbusState::Closing)?;
        let closed = self.wait_state(&bdir, XenbusState::Closed, "the backend", true);
        let start = Instant::now();
        let mut gone = false;
        while start.elapsed() <= self.timeout {
            if matches!(
                self.xs.read(TxId::NONE, &bdir),
                Err(XsError::Xs(XsdError::Enoent))
            ) {
                gone = true;
                break;
            }
            (self.tick)();
        }
        // Clean up regardless, as libxl does, so the guest sees the device go.
        let _ = self.xs.rm(TxId::NONE, &bdir);
        self.xs.rm(TxId::NONE, &fdir)?;
        closed?;
        if !gone {
            return err(format!(
                "the backend did not remove {bdir} within {} s; removed it",
                self.timeout.as_secs()
            ));
        }
        Ok(())
    }

    /// Frees every assigned port of the controller at `bdir` before it goes, as libxl
    /// removes a controller's usbdevs first: the guest's xen-hcd then disconnects each device
    /// while its backend still answers the unlinks of their transfers (with the backend gone
    /// first, Linux's teardown of a device with a transfer in flight never ends). Waits for
    /// the backend to take each assignment back (it removes the port's status key), then
    /// gives the guest a moment.
    fn detach_all(&mut self, bdir: &str) -> Result<(), Error> {
        let ports = match self
            .xs
            .directory(TxId::NONE, &format!("{bdir}/{ASSIGN_DIR}"))
        {
            Ok(p) => p,
            Err(XsError::Xs(XsdError::Enoent)) => return Ok(()),
            Err(e) => return Err(e.into()),
        };
        let mut freed = Vec::new();
        for port in ports {
            let key = format!("{bdir}/{ASSIGN_DIR}/{port}");
            if !self
                .xs
                .read_string(TxId::NONE, &key)
                .unwrap_or_default()
                .is_empty()
            {
                self.xs.rm(TxId::NONE, &key)?;
                freed.push(port);
            }
        }
        if freed.is_empty() {
            return Ok(());
        }
        let start = Instant::now();
        while start.elapsed() <= self.timeout {
            let pending = freed.iter().any(|p| {
                let key = format!("{bdir}/{PORT_STATUS_DIR}/{p}");
                self.xs.read(TxId::NONE, &key).is_ok()
            });
            if !pending {
                break;
            }
            (self.tick)();
        }
        for _ in 0..GUEST_SETTLE_TICKS {
            (self.tick)();
        }
        Ok(())
    }

    /// `list`: the controllers of `frontend`.
    pub fn list(&mut self, frontend: DomId) -> Result<Vec<Controller>, Error> {
        let devids = match self.xs.directory(TxId::NONE, &Self::vusb_dir(frontend)) {
            Ok(d) => d,
            Err(XsError::Xs(XsdError::Enoent)) => Vec::new(),
            Err(e) => return Err(e.into()),
        };
        let mut out = Vec::new();
        for d in devids {
            let Some(devid) = parse_decimal(&d).and_then(|v| u32::try_from(v).ok()) else {
                continue;
            };
            let fdir = format!("{}/{devid}", Self::vusb_dir(frontend));
            let Some(backend) = self.backend_of(frontend, devid) else {
                continue;
            };
            let bdir = Self::backend_dir(backend, frontend, devid);
            let num = |xs: &mut XenStore<T>, k| {
                xenbus::read_u32(xs, TxId::NONE, &bdir, k, 0..=u32::MAX).unwrap_or(0)
            };
            let usb_ver = num(&mut self.xs, pvusb::USB_VER_KEY);
            let ports = num(&mut self.xs, pvusb::NUM_PORTS_KEY);
            let bs =
                xenbus::read_state(&mut self.xs, TxId::NONE, &bdir).unwrap_or(XenbusState::Unknown);
            let fs =
                xenbus::read_state(&mut self.xs, TxId::NONE, &fdir).unwrap_or(XenbusState::Unknown);
            let assigned = self.assignments(&bdir)?;
            out.push(Controller {
                devid,
                backend,
                usb_ver,
                ports,
                states: (bs, fs),
                assigned,
            });
        }
        Ok(out)
    }

    fn assignments(&mut self, bdir: &str) -> Result<Vec<(u32, String)>, Error> {
        let dir = format!("{bdir}/{ASSIGN_DIR}");
        let ports = match self.xs.directory(TxId::NONE, &dir) {
            Ok(p) => p,
            Err(XsError::Xs(XsdError::Enoent)) => return Ok(Vec::new()),
            Err(e) => return Err(e.into()),
        };
        let mut out = Vec::new();
        for p in ports {
            let Some(port) = parse_decimal(&p).and_then(|v| u32::try_from(v).ok()) else {
                continue;
            };
            let busid = self
                .xs
                .read_string(TxId::NONE, &format!("{dir}/{p}"))
                .unwrap_or_default();
            if !busid.is_empty() {
                out.push((port, busid));
            }
        }
        out.sort();
        Ok(out)
    }

    /// `list-assignable-devices`: what `backend` offers, and where each device is assigned.
    pub fn list_assignable(&mut self, backend: DomId) -> Result<Vec<Assignable>, Error> {
        let dir = devices_dir(backend);
        let busids = match self.xs.directory(TxId::NONE, &dir) {
            Ok(d) => d,
            Err(XsError::Xs(XsdError::Enoent)) => Vec::new(),
            Err(e) => return Err(e.into()),
        };
        let taken = self.all_assignments(backend)?;
        let mut out = Vec::new();
        for key in busids {
            let busid = key.replace('_', ".");
            if !valid_busid(&busid) {
                continue;
            }
            let description = self
                .xs
                .read_string(TxId::NONE, &format!("{dir}/{key}"))
                .unwrap_or_default();
            let assigned = taken
                .iter()
                .find(|(_, _, _, b)| *b == busid)
                .map(|(f, d, p, _)| (*f, *d, *p));
            out.push(Assignable {
                busid,
                description,
                assigned,
            });
        }
        Ok(out)
    }

    /// Every assignment of `backend`: (frontend, devid, port, bus id).
    fn all_assignments(&mut self, backend: DomId) -> Result<Vec<(DomId, u32, u32, String)>, Error> {
        let mut out = Vec::new();
        for (frontend, devid) in self.served_by(backend)? {
            for (port, busid) in self.assignments(&Self::backend_dir(backend, frontend, devid))? {
                out.push((frontend, devid, port, busid));
            }
        }
        Ok(out)
    }

    /// The backend domain of controller `devid` of `frontend`, from the frontend directory's
    /// `backend-id`. Its backend directory is then derived, never read from the frontend
    /// directory's `backend` node: the guest can write both, and a `backend` naming another
    /// guest's controller would have `hc-destroy`, `detach` and `usbctl stop` act on that
    /// one. Derived, the path names this frontend's own controller whatever the guest wrote.
    fn backend_of(&mut self, frontend: DomId, devid: u32) -> Option<DomId> {
        let key = format!("{}/{devid}/backend-id", Self::vusb_dir(frontend));
        DomId::parse(&self.xs.read_string(TxId::NONE, &key).ok()?)
    }

    fn controller_backend_dir(
        &mut self,
        frontend: DomId,
        devid: u32,
    ) -> Result<(String, u32), Error> {
        let Some(backend) = self.backend_of(frontend, devid) else {
            return err(format!(
                "domain {frontend} has no USB controller {devid} (see `usbctl list`)"
            ));
        };
        let bdir = Self::backend_dir(backend, frontend, devid);
        let ports = xenbus::read_u32(
            &mut self.xs,
            TxId::NONE,
            &bdir,
            pvusb::NUM_PORTS_KEY,
            1..=31,
        )
        .map_err(|e| Error(format!("controller {devid} of domain {frontend}: {e}")))?;
        Ok((bdir, ports))
    }

    /// `attach`: gives `port` of controller `devid` in `frontend` the `device` (a bus id or
    /// `vid:pid[:serial]`) of the controller's backend, and waits for the backend's verdict.
    /// A device that is not plugged in is an error unless `keep_absent`: the assignment then
    /// waits for it (persistent assignments of `vusb` entries). A refusal (policy, hub,
    /// already elsewhere) is an error carrying the backend's reason; the assignment is taken
    /// back.
    pub fn attach(
        &mut self,
        frontend: DomId,
        devid: u32,
        port: u32,
        device: &str,
        keep_absent: bool,
    ) -> Result<Attached, Error> {
        let Some(selector) = DeviceSelector::parse(device) else {
            return err(format!("'{device}' is neither a bus id (like 1-2 or 1-4.3) nor vid:pid[:serial] (like 0627:0001); see `usbctl list-assignable-devices`"));
        };
        let (bdir, ports) = self.controller_backend_dir(frontend, devid)?;
        if !(1..=ports).contains(&port) {
            return err(format!(
                "port must be 1 to {ports} on controller {devid} of domain {frontend}, not {port}"
            ));
        }
        let backend = self
            .xs
            .read_string(
                TxId::NONE,
                &format!("{}/{devid}/backend-id", Self::vusb_dir(frontend)),
            )
            .ok()
            .and_then(|b| DomId::parse(&b))
            .ok_or_else(|| {
                Error(format!(
                    "controller {devid} of domain {frontend} names no backend"
                ))
            })?;
        let offered = self.list_assignable(backend)?;
        let present: Vec<&Assignable> = offered.iter().filter(|d| d.is(&selector)).collect();
        if present.is_empty() && !keep_absent {
            return err(format!("domain {backend} offers no USB device {device} (see `usbctl list-assignable-devices`)"));
        }
        if let [only] = present.as_slice() {
            if let Some((f, d, p)) = only.assigned {
                if (f, d, p) != (frontend, devid, port) {
                    return err(format!(
                        "{device} is already assigned to domain {f} controller {d} port {p}"
                    ));
                }
            }
        }
        let key = format!("{bdir}/{ASSIGN_DIR}/{port}");
        let status_key = format!("{bdir}/{PORT_STATUS_DIR}/{port}");
        match self.xs.read_string(TxId::NONE, &key) {
            Ok(b) if !b.is_empty() => {
                return err(format!("port {port} already has {b}; detach it first"))
            }
            _ => {}
        }
        // A status left from an earlier assignment must not pass for the backend's answer.
        self.xs.transaction(5, |xs, tx| {
            match xs.rm(tx, &status_key) {
                Ok(()) | Err(XsError::Xs(XsdError::Enoent)) => {}
                Err(e) => return Err(e),
            }
            xs.write(tx, &key, device.as_bytes())
        })?;
        let start = Instant::now();
        while start.elapsed() <= self.timeout {
            let status = self
                .xs
                .read_string(TxId::NONE, &status_key)
                .unwrap_or_default();
            if status == "connected" {
                return Ok(Attached::Connected);
            }
            if let Some(why) = status.strip_prefix("waiting ") {
                return Ok(Attached::Waiting(why.into()));
            }
            if let Some(why) = status.strip_prefix("refused ") {
                let _ = self.xs.rm(TxId::NONE, &key);
                return err(format!(
                    "domain {backend} refused {device} for port {port}: {why}"
                ));
            }
            (self.tick)();
        }
        let _ = self.xs.rm(TxId::NONE, &key);
        err(format!(
            "domain {backend} did not take {device} for port {port} within {} s: is usbdom running? (its log: event=port_*)",
            self.timeout.as_secs()
        ))
    }

    /// `apply`: creates the controllers a guest config's `vusb` entries list in `frontend`
    /// and assigns their devices; devices not plugged in wait for it. `default_backend`
    /// serves entries that name none. Returns what was done, a line each.
    pub fn apply(
        &mut self,
        frontend: DomId,
        vusb: &[xlcfg::Vusb],
        default_backend: &str,
    ) -> Result<Vec<String>, Error> {
        self.apply_entries(frontend, vusb, default_backend, false)
    }

    /// [`Usbctl::apply`] for a guest its backends may serve already (`up`, `start`): an
    /// entry whose backend serves the guest already is left out (the first controller of a
    /// backend decides for the backend's other entries).
    pub fn apply_unless_served(
        &mut self,
        frontend: DomId,
        vusb: &[xlcfg::Vusb],
        default_backend: &str,
    ) -> Result<Vec<String>, Error> {
        self.apply_entries(frontend, vusb, default_backend, true)
    }

    fn apply_entries(
        &mut self,
        frontend: DomId,
        vusb: &[xlcfg::Vusb],
        default_backend: &str,
        unless_served: bool,
    ) -> Result<Vec<String>, Error> {
        let mut done = Vec::new();
        let mut created_by: Vec<DomId> = Vec::new();
        for v in vusb {
            let name = v.backend.as_deref().unwrap_or(default_backend);
            let backend = self.domain(name).map_err(|_| {
                Error(format!(
                    "the backend domain '{name}' is not running (start it: xl create usbdom.cfg)"
                ))
            })?;
            let check = unless_served && !created_by.contains(&backend);
            let Some(devid) = self.create(frontend, backend, v.usb_ver, v.ports, check)? else {
                done.push(format!("served by {name} already"));
                continue;
            };
            created_by.push(backend);
            done.push(format!(
                "controller {devid}: USB {}, {} ports, backend {name}",
                v.usb_ver, v.ports
            ));
            for (port, device) in &v.assigned {
                let device = device.to_string();
                let line = match self.attach(frontend, devid, *port, &device, true)? {
                    Attached::Connected => format!("  port {port}: {device} connected"),
                    Attached::Waiting(why) => {
                        format!("  port {port}: {device} waiting ({why}): attached when it is plugged in")
                    }
                };
                done.push(line);
            }
        }
        Ok(done)
    }

    /// `detach`: frees `port` of controller `devid` in `frontend`.
    pub fn detach(&mut self, frontend: DomId, devid: u32, port: u32) -> Result<String, Error> {
        let (bdir, ports) = self.controller_backend_dir(frontend, devid)?;
        if !(1..=ports).contains(&port) {
            return err(format!(
                "port must be 1 to {ports} on controller {devid} of domain {frontend}, not {port}"
            ));
        }
        let key = format!("{bdir}/{ASSIGN_DIR}/{port}");
        match self.xs.read_string(TxId::NONE, &key) {
            Ok(b) if !b.is_empty() => {
                self.xs.rm(TxId::NONE, &key)?;
                Ok(b)
            }
            _ => err(format!(
                "port {port} of controller {devid} in domain {frontend} has no device"
            )),
        }
    }
}

/// Reads and checks a guest config file's `vusb` entries.
pub fn read_config(file: &str) -> Result<xlcfg::GuestConfig, Error> {
    let text = std::fs::read_to_string(file).map_err(|e| Error(format!("{file}: {e}")))?;
    xlcfg::parse(file, &text)
}
