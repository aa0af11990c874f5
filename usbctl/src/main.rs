//! usbctl: PVUSB controllers served by the usbdom driver domain, from dom0.
//!
//! ```text
//! usbctl [--backend DOMAIN] hc-create DOMAIN USBVER(1|2) PORTS(1-31)
//! usbctl hc-destroy DOMAIN DEVID
//! usbctl list DOMAIN
//! usbctl [--backend DOMAIN] list-assignable-devices
//! usbctl attach DOMAIN DEVID PORT BUSID
//! usbctl detach DOMAIN DEVID PORT
//! ```
//! Domains by name or id; the backend defaults to the domain named `usbdom`.

use std::io::{ErrorKind, Read, Write};
use std::os::unix::net::UnixStream;
use std::process::exit;
use std::time::Duration;

use usbctl::{Error, Usbctl};
use xen::xenstore::{XenStore, XsError, XsTransport};

/// Where xenstored listens in dom0.
const SOCKETS: &[&str] = &["/run/xenstored/socket", "/var/run/xenstored/socket"];

/// xenstore over xenstored's unix socket; bytes a blocking wait read early wait in `early`.
struct Socket {
    stream: UnixStream,
    early: Vec<u8>,
}

impl XsTransport for Socket {
    fn send(&mut self, msg: &[u8]) -> Result<(), XsError> {
        self.stream
            .set_nonblocking(false)
            .map_err(|_| XsError::Transport("socket"))?;
        self.stream
            .write_all(msg)
            .map_err(|_| XsError::Transport("write to xenstored failed"))
    }

    fn recv(&mut self, buf: &mut [u8]) -> Result<usize, XsError> {
        if !self.early.is_empty() {
            let n = buf.len().min(self.early.len());
            buf[..n].copy_from_slice(&self.early[..n]);
            self.early.drain(..n);
            return Ok(n);
        }
        self.stream
            .set_nonblocking(true)
            .map_err(|_| XsError::Transport("socket"))?;
        match self.stream.read(buf) {
            Ok(0) => Err(XsError::Transport("xenstored closed the connection")),
            Ok(n) => Ok(n),
            Err(e) if e.kind() == ErrorKind::WouldBlock => Ok(0),
            Err(_) => Err(XsError::Transport("read from xenstored failed")),
        }
    }

    fn wait(&mut self) -> Result<(), XsError> {
        self.stream
            .set_nonblocking(false)
            .map_err(|_| XsError::Transport("socket"))?;
        self.stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .map_err(|_| XsError::Transport("socket"))?;
        let mut buf = [0u8; 512];
        match self.stream.read(&mut buf) {
            Ok(0) => Err(XsError::Transport("xenstored closed the connection")),
            Ok(n) => {
                self.early.extend_from_slice(&buf[..n]);
                Ok(())
            }
            Err(_) => Err(XsError::Transport("xenstored did not answer within 10 s")),
        }
    }
}

fn connect() -> Result<XenStore<Socket>, Error> {
    for path in SOCKETS {
        if let Ok(s) = UnixStream::connect(path) {
            return Ok(XenStore::new(Socket {
                stream: s,
                early: Vec::new(),
            }));
        }
    }
    Err(Error(format!(
        "cannot reach xenstored (tried {}): run usbctl in dom0, as root",
        SOCKETS.join(", ")
    )))
}

const USAGE: &str = "usage:
  usbctl [--backend DOMAIN] hc-create DOMAIN USBVER(1|2) PORTS(1-31)
  usbctl hc-destroy DOMAIN DEVID
  usbctl list DOMAIN
  usbctl [--backend DOMAIN] list-assignable-devices
  usbctl attach DOMAIN DEVID PORT BUSID
  usbctl detach DOMAIN DEVID PORT
DOMAIN is a name or id; the backend defaults to the domain named usbdom.
BUSID names a device the backend offers, Linux style: 1-2, 1-4.3.";

fn number(what: &str, s: &str) -> Result<u32, Error> {
    xen::abi::parse_decimal(s)
        .and_then(|v| u32::try_from(v).ok())
        .ok_or_else(|| Error(format!("{what} must be a number, not '{s}'")))
}

fn run(args: &[String]) -> Result<(), Error> {
    let mut backend_name = "usbdom".to_string();
    let mut rest: Vec<&str> = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        if a == "--backend" {
            backend_name = it
                .next()
                .ok_or_else(|| Error("--backend needs a domain".into()))?
                .clone();
        } else {
            rest.push(a);
        }
    }
    let tick: Box<dyn FnMut()> = Box::new(|| std::thread::sleep(Duration::from_millis(100)));
    match rest.as_slice() {
        ["hc-create", dom, ver, ports] => {
            let (ver, ports) = (
                number("the USB version", ver)?,
                number("the port count", ports)?,
            );
            let mut u = Usbctl::new(connect()?, tick);
            let frontend = u.domain(dom)?;
            let backend = u
                .domain(&backend_name)
                .map_err(|_| Error(format!("the backend domain '{backend_name}' is not running (start it: xl create usbdom.cfg)")))?;
            let devid = u.hc_create(frontend, backend, ver, ports)?;
            println!("usbctl: created controller {devid} in domain {frontend} ({dom}): USB {ver}, {ports} ports, backend {backend}");
            Ok(())
        }
        ["hc-destroy", dom, devid] => {
            let devid = number("the controller id", devid)?;
            let mut u = Usbctl::new(connect()?, tick);
            let frontend = u.domain(dom)?;
            u.hc_destroy(frontend, devid)?;
            println!("usbctl: destroyed controller {devid} of domain {frontend} ({dom})");
            Ok(())
        }
        ["list-assignable-devices"] => {
            let mut u = Usbctl::new(connect()?, tick);
            let backend = u.domain(&backend_name).map_err(|_| {
                Error(format!(
                    "the backend domain '{backend_name}' is not running"
                ))
            })?;
            for d in u.list_assignable(backend)? {
                let at = d.assigned.map_or("free".to_string(), |(f, c, p)| {
                    format!("domain {f} controller {c} port {p}")
                });
                println!("{:<10} {:<40} {}", d.busid, at, d.description);
            }
            Ok(())
        }
        ["attach", dom, devid, port, busid] => {
            let (devid, port) = (
                number("the controller id", devid)?,
                number("the port", port)?,
            );
            let mut u = Usbctl::new(connect()?, tick);
            let frontend = u.domain(dom)?;
            u.attach(frontend, devid, port, busid)?;
            println!("usbctl: {busid} assigned to port {port} of controller {devid} in domain {frontend} ({dom})");
            Ok(())
        }
        ["detach", dom, devid, port] => {
            let (devid, port) = (
                number("the controller id", devid)?,
                number("the port", port)?,
            );
            let mut u = Usbctl::new(connect()?, tick);
            let frontend = u.domain(dom)?;
            let busid = u.detach(frontend, devid, port)?;
            println!("usbctl: {busid} removed from port {port} of controller {devid} in domain {frontend} ({dom})");
            Ok(())
        }
        ["list", dom] => {
            let mut u = Usbctl::new(connect()?, tick);
            let frontend = u.domain(dom)?;
            let list = u.list(frontend)?;
            println!(
                "{:<6} {:<8} {:<8} {:<6} {:<12} {:<12}",
                "devid", "backend", "usb-ver", "ports", "be-state", "fe-state"
            );
            for c in list {
                println!(
                    "{:<6} {:<8} {:<8} {:<6} {:<12} {:<12}",
                    c.devid,
                    c.backend,
                    c.usb_ver,
                    c.ports,
                    format!("{:?}", c.states.0),
                    format!("{:?}", c.states.1)
                );
                for (port, busid) in &c.assigned {
                    println!("       port {port}: {busid}");
                }
            }
            Ok(())
        }
        _ => Err(Error(USAGE.into())),
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if let Err(e) = run(&args) {
        eprintln!("usbctl: {e}");
        exit(1);
    }
}
