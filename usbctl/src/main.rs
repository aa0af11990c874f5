//! usbctl: PVUSB controllers served by the usbdom driver domain, from dom0.
//!
//! ```text
//! usbctl [--backend DOMAIN] hc-create DOMAIN USBVER(1|2) PORTS(1-31)
//! usbctl hc-destroy DOMAIN DEVID
//! usbctl list DOMAIN
//! usbctl [--backend DOMAIN] list-assignable-devices
//! usbctl attach DOMAIN DEVID PORT DEVICE
//! usbctl detach DOMAIN DEVID PORT
//! usbctl [--backend DOMAIN] up GUEST.CFG [XL CREATE ARGUMENTS]
//! usbctl [--backend DOMAIN] apply DOMAIN GUEST.CFG
//! ```
//! Domains by name or id; the backend defaults to the domain named `usbdom`.

use std::io::{ErrorKind, Read, Write};
use std::os::unix::net::UnixStream;
use std::process::exit;
use std::time::Duration;

use usbctl::Error;
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

/// `up GUEST.CFG [ARGS]`: the config is checked, `xl create GUEST.CFG ARGS` runs, then
/// `apply` for the domain the config names.
fn up(backend: &[String], file: &str, xl_args: &[String]) -> Result<(), Error> {
    let cfg = usbctl::read_config(file)?;
    let name = cfg
        .name
        .ok_or_else(|| Error(format!("{file}: no name = \"...\" (xl needs one too)")))?;
    let status = std::process::Command::new("xl")
        .arg("create")
        .arg(file)
        .args(xl_args)
        .status()
        .map_err(|e| Error(format!("xl: {e}")))?;
    if !status.success() {
        return Err(Error(format!("xl create {file} failed ({status})")));
    }
    let mut args = backend.to_vec();
    args.extend(["apply".into(), name, file.into()]);
    let tick = Box::new(|| std::thread::sleep(Duration::from_millis(100)));
    usbctl::run(&args, connect, tick, &mut std::io::stdout())
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (backend, rest) = match args.as_slice() {
        [flag, dom, rest @ ..] if flag == "--backend" => (args[..2].to_vec(), rest),
        rest => (Vec::new(), rest),
    };
    let result = match rest {
        [cmd, file, xl_args @ ..] if cmd == "up" => up(&backend, file, xl_args),
        _ => {
            let tick = Box::new(|| std::thread::sleep(Duration::from_millis(100)));
            usbctl::run(&args, connect, tick, &mut std::io::stdout())
        }
    };
    if let Err(e) = result {
        eprintln!("usbctl: {e}");
        exit(1);
    }
}
