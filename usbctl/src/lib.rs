//! usbctl's logic: the xenstore nodes of a PVUSB controller whose backend is a driver domain,
//! written as libxl writes them for a `type=pv` usbctrl (`xl` cannot name a backend other
//! than dom0), and removed as libxl removes them. Runs over any xenstore transport: the
//! xenstored socket in dom0, `xen::sim` in tests.

use std::time::{Duration, Instant};

use xen::abi::xs_wire::XsdError;
use xen::abi::{parse_decimal, DomId};
use xen::pvusb::ControllerNodes;
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

/// A controller as `list` shows it.
#[derive(Debug, PartialEq, Eq)]
pub struct Controller {
    /// Device number under the frontend.
    pub devid: u32,
    /// The backend domain.
    pub backend: DomId,
    /// USB version 1 or 2.
    pub usb_ver: u32,
    /// Ports.
    pub ports: u32,
    /// Backend and frontend state.
    pub states: (XenbusState, XenbusState),
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

    /// Waits for `dir/state` to be `want`; with `or_gone`, a removed directory also counts
    /// (a driver domain may close and delete its directory before we look).
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
        if !(1..=2).contains(&usb_ver) {
            return err(format!("usb version must be 1 or 2, not {usb_ver}"));
        }
        if !(1..=31).contains(&ports) {
            return err(format!("ports must be 1 to 31, not {ports}"));
        }
        if frontend == backend {
            return err("a domain cannot be its own USB backend");
        }
        let mut devid = 0;
        self.xs.transaction(5, |xs, tx| {
            let existing = match xs.directory(tx, &Self::vusb_dir(frontend)) {
                Ok(d) => d,
                Err(XsError::Xs(XsdError::Enoent)) => Vec::new(),
                Err(e) => return Err(e),
            };
            devid = existing
                .iter()
                .filter_map(|d| parse_decimal(d))
                .map(|d| d as u32 + 1)
                .max()
                .unwrap_or(0);
            ControllerNodes {
                frontend,
                backend,
                devid,
                usb_ver: usb_ver as u8,
                ports: ports as u8,
            }
            .write(xs, tx)
        })?;
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
        Ok(devid)
    }

    /// `hc-destroy`: libxl's removal (online=0, state Closing, wait for Closed and for the
    /// driver domain to delete its directory), then the frontend directory goes.
    pub fn hc_destroy(&mut self, frontend: DomId, devid: u32) -> Result<(), Error> {
        let fdir = format!("{}/{devid}", Self::vusb_dir(frontend));
        let bdir = match self.xs.read_string(TxId::NONE, &format!("{fdir}/backend")) {
            Ok(b) => b,
            Err(XsError::Xs(XsdError::Enoent)) => {
                return err(format!(
                    "domain {frontend} has no USB controller {devid} (see `usbctl list`)"
                ))
            }
            Err(e) => return Err(e.into()),
        };
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
            let Ok(bdir) = self.xs.read_string(TxId::NONE, &format!("{fdir}/backend")) else {
                continue;
            };
            let backend = self
                .xs
                .read_string(TxId::NONE, &format!("{fdir}/backend-id"))
                .ok()
                .and_then(|b| DomId::parse(&b));
            let Some(backend) = backend else { continue };
            let num = |xs: &mut XenStore<T>, k| {
                xenbus::read_u32(xs, TxId::NONE, &bdir, k, 0..=u32::MAX).unwrap_or(0)
            };
            let usb_ver = num(&mut self.xs, "usb-ver");
            let ports = num(&mut self.xs, "num-ports");
            let bs =
                xenbus::read_state(&mut self.xs, TxId::NONE, &bdir).unwrap_or(XenbusState::Unknown);
            let fs =
                xenbus::read_state(&mut self.xs, TxId::NONE, &fdir).unwrap_or(XenbusState::Unknown);
            out.push(Controller {
                devid,
                backend,
                usb_ver,
                ports,
                states: (bs, fs),
            });
        }
        Ok(out)
    }
}
