//! usbctl: PVUSB controllers served by the usbdom driver domain, from dom0. The commands and
//! their arguments: `usbctl --help` (`src/cli.rs`).

use std::io::{ErrorKind, Read, Write};
use std::os::unix::net::UnixStream;
use std::process::exit;
use std::time::Duration;

mod toolstack;

use clap::Parser;

use usbctl::cli::{self, Cli, Command, XenstoreCommand};
use usbctl::Error;
use xen::xenstore::{XenStore, XsError, XsTransport};

/// Where xenstored listens in dom0.
const SOCKETS: &[&str] = &["/run/xenstored/socket", "/var/run/xenstored/socket"];

/// xenstore over xenstored's unix socket; bytes a blocking wait read early wait in `early`.
pub(crate) struct Socket {
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

pub(crate) fn connect() -> Result<XenStore<Socket>, Error> {
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

/// What runs while usbctl waits for the backend.
pub(crate) fn tick() -> Box<dyn FnMut()> {
    Box::new(|| std::thread::sleep(Duration::from_millis(100)))
}

/// The serial log `xen-cfg/usbdom.cfg` has usbdom write.
const DEFAULT_LOG: &str = "/var/log/xen/usbdom-serial.log";

/// `monitor`: follows `file` (or `xl console domain`); returns the exit status.
fn monitor(
    follow: bool,
    json: bool,
    file: Option<String>,
    domain: Option<String>,
) -> Result<i32, Error> {
    // Names of domains, where xenstore can be asked (dom0); ids alone elsewhere.
    let xs = std::cell::RefCell::new(connect().ok());
    let name = |d: u32| -> Option<String> {
        xs.borrow_mut()
            .as_mut()?
            .read_string(
                xen::xenstore::TxId::NONE,
                &format!("/local/domain/{d}/name"),
            )
            .ok()
    };
    let mut out = std::io::stdout();
    let state = if let Some(dom) = domain {
        // `xl console` streams the console for as long as the domain runs.
        let mut child = std::process::Command::new("xl")
            .args(["console", &dom])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .map_err(|e| Error(format!("xl console {dom}: {e}")))?;
        let stdout = child.stdout.take().expect("piped");
        let mut input = std::io::BufReader::new(stdout);
        let state = usbctl::monitor::watch(&mut input, &mut || false, json, &name, &mut out);
        let _ = child.kill();
        state
    } else {
        let path = file.unwrap_or_else(|| DEFAULT_LOG.into());
        let f = std::fs::File::open(&path).map_err(|e| Error(format!("{path}: {e}")))?;
        let mut input = std::io::BufReader::new(f);
        let mut more = || {
            if follow {
                std::thread::sleep(Duration::from_millis(500));
            }
            follow
        };
        usbctl::monitor::watch(&mut input, &mut more, json, &name, &mut out)
    }
    .map_err(|e| Error(format!("reading the log: {e}")))?;
    match state.panic {
        Some((location, message)) => {
            eprintln!("usbctl: usbdom panicked at {location}: {message}");
            Ok(2)
        }
        None => Ok(0),
    }
}

/// The command line, or its exit: help exits 0, a mistake 2 with one line.
fn parse() -> Cli {
    use clap::error::ErrorKind;
    match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) => {
            let _ = e.print();
            exit(0)
        }
        Err(e) => {
            eprintln!("usbctl: {}", cli::one_line(&e));
            exit(2)
        }
    }
}

/// The driver domain's config, or usbctl's exit with status 2: a mistake in it is not
/// something a retry mends.
fn driver_domain(config: &str, to_start: bool) -> toolstack::DriverDomain {
    toolstack::driver_domain(config, to_start).unwrap_or_else(|e| {
        eprintln!("usbctl: {e}");
        exit(2)
    })
}

fn main() {
    let Cli { backend, command } = parse();
    let result = match command {
        Command::Up { config, xl_args } => toolstack::up(&backend, &config, &xl_args),
        Command::Start {
            config,
            timeout,
            follow,
        } => toolstack::start(
            &driver_domain(&config, true),
            Duration::from_secs(timeout),
            follow,
        ),
        Command::Stop { config } => toolstack::stop(&driver_domain(&config, false)),
        Command::Monitor {
            follow,
            json,
            domain,
            log,
        } => match monitor(follow, json, log, domain) {
            Ok(0) => Ok(()),
            Ok(code) => exit(code),
            Err(e) => Err(e),
        },
        Command::Xenstore(command) => {
            let record = match &command {
                XenstoreCommand::Apply { domain, config } => Some((domain.clone(), config.clone())),
                _ => None,
            };
            cli::run(&backend, command, connect, tick(), &mut std::io::stdout()).map(|()| {
                if let Some((domain, config)) = record {
                    toolstack::record(&domain, &config);
                }
            })
        }
    };
    if let Err(e) = result {
        eprintln!("usbctl: {e}");
        exit(1);
    }
}
