//! The command line, parsed by `clap`, and what each command prints. `up` and `monitor` run
//! other programs and follow files, so `main.rs` carries them out; every other command is
//! [`run`], over any xenstore transport.

use std::io::Write;

use clap::{Parser, Subcommand};
use xen::xenstore::{XenStore, XsTransport};

use crate::{read_config, Attached, Error, Usbctl};

/// What `--help` adds after the commands.
const AFTER_HELP: &str = "\
DOMAIN is a name or id. DEVICE names a device the backend offers: a bus id, Linux style
(1-2, 1-4.3), or vid:pid[:serial] (0627:0001), which follows the device to any port.
`up` runs `xl create GUEST.CFG ...`, then does what `apply` does: creates the controllers and
attaches the devices of the config's vusb = [ 'usbver=2, numports=8, port_1=1-2' ] entries.
Devices not plugged in are attached when they are. `up` and `apply` record the config
(/var/lib/usbdom/guests), so `start` gives the guest its controllers again after the driver
domain was restarted.";

/// PVUSB controllers served by the usbdom driver domain, from dom0.
#[derive(Parser, Debug)]
#[command(name = "usbctl", after_help = AFTER_HELP)]
pub struct Cli {
    /// The driver domain that serves the controllers.
    #[arg(long, global = true, value_name = "DOMAIN", default_value = "usbdom")]
    pub backend: String,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// usbctl's commands, named as `xl`'s usbctrl and usbdev commands are.
#[derive(Subcommand, Debug)]
pub enum Command {
    /// The commands that only read and write xenstore.
    #[command(flatten)]
    Xenstore(XenstoreCommand),
    /// Runs `xl create GUEST.CFG XL_ARGS...`, then `apply` for the domain it names.
    Up {
        /// The guest's xl config.
        config: String,
        /// Passed on to `xl create`.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        xl_args: Vec<String>,
    },
    /// Starts the driver domain and gives running guests their controllers (usbdom.service).
    ///
    /// Makes the config's `pci` controllers assignable, runs `xl create`, waits for usbdom's `event=ready`, then gives each running
    /// guest its config's controllers back (the configs `up` and `apply` recorded, and
    /// /etc/xen/auto's). With the domain already running, only the last step. usbdom.service
    /// runs `start --follow`.
    Start {
        /// The driver domain's xl config.
        #[arg(default_value = crate::service::DRIVER_DOMAIN_CONFIG)]
        config: String,
        /// How long to wait for `event=ready`, in seconds.
        #[arg(long, value_name = "SECONDS", default_value_t = 120)]
        timeout: u64,
        /// Then keeps running: a guest that appears with a known config (xl restarts one
        /// that rebooted, under a new id) gets its controllers; exits 1 if the driver domain
        /// ends other than by `usbctl stop`. Tells systemd when it serves (Type=notify).
        #[arg(long)]
        follow: bool,
    },
    /// Takes every guest's controllers away and stops the driver domain (usbdom.service).
    ///
    /// Removes every controller the driver domain serves (their devices first, as `hc-destroy` does), destroys it and gives its controllers
    /// back to dom0 (`xl pci-assignable-remove -r`).
    Stop {
        /// The driver domain's xl config.
        #[arg(default_value = crate::service::DRIVER_DOMAIN_CONFIG)]
        config: String,
    },
    /// Shows usbdom's devices, their owners and each controller's counters from its log;
    /// exits 2 with the panic text if usbdom panicked.
    Monitor {
        /// Keeps reading as the log grows.
        #[arg(short, long)]
        follow: bool,
        /// Prints JSON lines.
        #[arg(long)]
        json: bool,
        /// Reads `xl console DOMAIN` instead of a file.
        #[arg(long, value_name = "DOMAIN", conflicts_with = "log")]
        domain: Option<String>,
        /// The serial log [default: /var/log/xen/usbdom-serial.log].
        log: Option<String>,
    },
}

/// The commands [`run`] carries out: each reads and writes xenstore, nothing else.
#[derive(Subcommand, Debug)]
pub enum XenstoreCommand {
    /// Creates a PVUSB controller in DOMAIN, served by the backend.
    HcCreate {
        /// The user VM.
        domain: String,
        /// The USB version the controller offers: 1, 2, or 3 for a guest whose frontend
        /// presents a USB 3 root hub (stock xen-hcd refuses 3).
        usb_ver: u32,
        /// Its ports (1 to 31).
        ports: u32,
    },
    /// Removes controller DEVID of DOMAIN, with its devices.
    HcDestroy {
        /// The user VM.
        domain: String,
        /// The controller.
        devid: u32,
    },
    /// Lists DOMAIN's controllers, their states and devices.
    List {
        /// The user VM.
        domain: String,
    },
    /// Lists the devices the backend offers and where each is assigned.
    ListAssignableDevices,
    /// Assigns DEVICE to port PORT of controller DEVID of DOMAIN.
    Attach {
        /// The user VM.
        domain: String,
        /// The controller.
        devid: u32,
        /// The port.
        port: u32,
        /// The device: a bus id or vid:pid[:serial].
        device: String,
    },
    /// Removes the device assigned to port PORT of controller DEVID of DOMAIN.
    Detach {
        /// The user VM.
        domain: String,
        /// The controller.
        devid: u32,
        /// The port.
        port: u32,
    },
    /// Creates the controllers and attaches the devices of GUEST.CFG's vusb entries.
    Apply {
        /// The user VM.
        domain: String,
        /// The guest's xl config.
        config: String,
    },
}

impl Cli {
    /// Parses `args` (without the program name); a mistake or `--help` comes back as the
    /// text clap would print.
    pub fn parse_args(args: &[String]) -> Result<Cli, Error> {
        Cli::try_parse_from(core::iter::once("usbctl".to_string()).chain(args.iter().cloned()))
            .map_err(|e| Error(one_line(&e)))
    }
}

/// A command-line mistake as one line, as scripts and logs want it: clap's message with its
/// list items joined, then the usage line (`--help` says the rest).
pub fn one_line(e: &clap::Error) -> String {
    let text = e.render().to_string();
    let mut message = Vec::new();
    let mut usage = None;
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
        if let Some(u) = line.strip_prefix("Usage: ") {
            usage = Some(u.to_string());
        } else if !line.starts_with("For more information") {
            message.push(line.strip_prefix("error: ").unwrap_or(line));
        }
    }
    let mut out = message.join(" ");
    if let Some(u) = usage {
        out.push_str("; usage: ");
        out.push_str(&u);
    }
    out
}

/// Carries out `command` with `backend_name` as the backend, printing results to `out`.
/// `connect` opens the xenstore connection; `tick` runs while waiting for the backend.
pub fn run<T: XsTransport>(
    backend_name: &str,
    command: XenstoreCommand,
    connect: impl FnOnce() -> Result<XenStore<T>, Error>,
    tick: Box<dyn FnMut()>,
    out: &mut dyn Write,
) -> Result<(), Error> {
    let backend_down = |_| {
        Error(format!(
            "the backend domain '{backend_name}' is not running (start it: xl create usbdom.cfg)"
        ))
    };
    match command {
        XenstoreCommand::HcCreate {
            domain,
            usb_ver,
            ports,
        } => {
            let mut u = Usbctl::new(connect()?, tick);
            let frontend = u.domain(&domain)?;
            let backend = u.domain(backend_name).map_err(backend_down)?;
            let devid = u.hc_create(frontend, backend, usb_ver, ports)?;
            let _ = writeln!(out, "usbctl: created controller {devid} in domain {frontend} ({domain}): USB {usb_ver}, {ports} ports, backend {backend}");
        }
        XenstoreCommand::HcDestroy { domain, devid } => {
            let mut u = Usbctl::new(connect()?, tick);
            let frontend = u.domain(&domain)?;
            u.hc_destroy(frontend, devid)?;
            let _ = writeln!(
                out,
                "usbctl: destroyed controller {devid} of domain {frontend} ({domain})"
            );
        }
        XenstoreCommand::ListAssignableDevices => {
            let mut u = Usbctl::new(connect()?, tick);
            let backend = u.domain(backend_name).map_err(backend_down)?;
            for d in u.list_assignable(backend)? {
                let at = d.assigned.map_or("free".to_string(), |(f, c, p)| {
                    format!("domain {f} controller {c} port {p}")
                });
                let _ = writeln!(out, "{:<10} {:<40} {}", d.busid, at, d.description);
            }
        }
        XenstoreCommand::Attach {
            domain,
            devid,
            port,
            device,
        } => {
            let mut u = Usbctl::new(connect()?, tick);
            let frontend = u.domain(&domain)?;
            let what = match u.attach(frontend, devid, port, &device, false)? {
                Attached::Connected => "connected".to_string(),
                Attached::Waiting(why) => format!("waiting: {why}"),
            };
            let _ = writeln!(out, "usbctl: {device} assigned to port {port} of controller {devid} in domain {frontend} ({domain}): {what}");
        }
        XenstoreCommand::Detach {
            domain,
            devid,
            port,
        } => {
            let mut u = Usbctl::new(connect()?, tick);
            let frontend = u.domain(&domain)?;
            let busid = u.detach(frontend, devid, port)?;
            let _ = writeln!(out, "usbctl: {busid} removed from port {port} of controller {devid} in domain {frontend} ({domain})");
        }
        XenstoreCommand::Apply { domain, config } => {
            let cfg = read_config(&config)?;
            let mut u = Usbctl::new(connect()?, tick);
            let frontend = u.domain(&domain)?;
            for line in u.apply(frontend, &cfg.vusb, backend_name)? {
                let _ = writeln!(out, "usbctl: {domain}: {line}");
            }
        }
        XenstoreCommand::List { domain } => {
            let mut u = Usbctl::new(connect()?, tick);
            let frontend = u.domain(&domain)?;
            let list = u.list(frontend)?;
            let _ = writeln!(
                out,
                "{:<6} {:<8} {:<8} {:<6} {:<12} {:<12}",
                "devid", "backend", "usb-ver", "ports", "be-state", "fe-state"
            );
            for c in list {
                let _ = writeln!(
                    out,
                    "{:<6} {:<8} {:<8} {:<6} {:<12} {:<12}",
                    c.devid,
                    c.backend,
                    c.usb_ver,
                    c.ports,
                    format!("{:?}", c.states.0),
                    format!("{:?}", c.states.1)
                );
                for (port, busid) in &c.assigned {
                    let _ = writeln!(out, "       port {port}: {busid}");
                }
            }
        }
    }
    Ok(())
}
