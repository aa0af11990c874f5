//! The commands that run `xl` as well as xenstore: `up`, and `start` and `stop`, which are
//! what `usbdom.service` runs (its xenstore side is `usbctl::service`).

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use usbctl::service::{self, NewDomains, ReadyWatch, AUTO_DIR, GUESTS_DIR};
use usbctl::{read_config, Error, Usbctl};
use xen::abi::DomId;

use crate::{connect, tick};

/// Runs `xl ARGS`; its output goes where usbctl's does.
fn xl(args: &[&str]) -> Result<(), Error> {
    let status = Command::new("xl")
        .args(args)
        .status()
        .map_err(|e| Error(format!("xl: {e}")))?;
    if status.success() {
        Ok(())
    } else {
        Err(Error(format!("xl {} failed ({status})", args.join(" "))))
    }
}

/// Records `config` as guest `domain`'s for `start`; a record that cannot be written is
/// said, not fatal (the controllers are there; only a restart of usbdom would miss them).
pub(crate) fn record(domain: &str, config: &str) {
    let name = read_config(config)
        .ok()
        .and_then(|c| c.name)
        .unwrap_or_else(|| domain.to_string());
    if let Err(e) = service::record_guest(Path::new(GUESTS_DIR), &name, Path::new(config)) {
        eprintln!("usbctl: not recorded for `usbctl start`: {e}");
    }
}

/// `up GUEST.CFG [ARGS]`: the config is checked, `xl create GUEST.CFG ARGS` runs, the config
/// is recorded, then its controllers are made for the domain it names (unless the service's
/// `start --follow` made them first).
pub(crate) fn up(backend: &str, file: &str, xl_args: &[String]) -> Result<(), Error> {
    let cfg = read_config(file)?;
    let name = cfg
        .name
        .ok_or_else(|| Error(format!("{file}: no name = \"...\" (xl needs one too)")))?;
    let mut args = vec!["create", file];
    args.extend(xl_args.iter().map(String::as_str));
    xl(&args)?;
    // Recorded first: a `start --follow` that sees the guest appear gives it its controllers
    // too; whichever comes second finds them made (`apply_unless_served`).
    record(&name, file);
    let mut u = Usbctl::new(connect()?, tick());
    let frontend = u.domain(&name)?;
    for line in u.apply_unless_served(frontend, &cfg.vusb, backend)? {
        println!("usbctl: {name}: {line}");
    }
    Ok(())
}

/// The PCI address of an xl `pci` entry (`0000:00:14.0,permissive=1` → `0000:00:14.0`).
fn bdf(entry: &str) -> &str {
    entry.split(',').next().unwrap_or(entry).trim()
}

/// What `xl pci-assignable-list` lists.
fn assignable() -> Vec<String> {
    Command::new("xl")
        .arg("pci-assignable-list")
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .map(|l| l.trim().to_string())
                .collect()
        })
        .unwrap_or_default()
}

/// What `start` and `stop` take from the driver domain's config.
pub(crate) struct DriverDomain {
    config: String,
    name: String,
    pci: Vec<String>,
    serial: Option<String>,
}

/// Reads the driver domain's config; `start` needs its `pci` list to name a controller. A
/// mistake in it is the administrator's to mend: main exits 2 then, which usbdom.service
/// does not retry (`RestartPreventExitStatus=2`).
pub(crate) fn driver_domain(config: &str, to_start: bool) -> Result<DriverDomain, Error> {
    let cfg = read_config(config)?;
    let name = cfg
        .name
        .ok_or_else(|| Error(format!("{config}: no name = \"...\"")))?;
    if to_start && cfg.pci.is_empty() {
        return Err(Error(format!(
            "{config} passes no USB controller through: set pci = [ \"0000:00:14.0\" ] \
             (`lspci -D -d ::0c03` lists them)"
        )));
    }
    Ok(DriverDomain {
        config: config.to_string(),
        name,
        pci: cfg.pci,
        serial: cfg.serial,
    })
}

/// `start [CONFIG]`.
pub(crate) fn start(dd: &DriverDomain, timeout: Duration, follow: bool) -> Result<(), Error> {
    let _ = std::fs::remove_file(STOPPING);
    let (config, name) = (dd.config.as_str(), dd.name.as_str());
    let mut u = Usbctl::new(connect()?, tick());
    if let Ok(id) = u.domain(name) {
        println!("usbctl: {name} runs already (domain {id})");
    } else {
        let listed = assignable();
        for entry in &dd.pci {
            let bdf = bdf(entry);
            if listed.iter().any(|l| l.ends_with(bdf)) {
                continue;
            }
            xl(&["pci-assignable-add", bdf])?;
            println!("usbctl: {bdf} is assignable");
        }
        let log = dd.serial.as_deref().and_then(service::serial_file);
        let watch = log.map(|l| ReadyWatch::fresh(Path::new(l))).transpose()?;
        xl(&["create", config])?;
        match watch {
            Some(watch) => {
                let line = wait_ready(&mut u, name, &watch, timeout)?;
                println!("usbctl: {name} serves: {line}");
            }
            None => println!(
                "usbctl: {name} created; {config} has no serial = \"file:...\" to wait for its event=ready in"
            ),
        }
    }
    let mut new_domains = NewDomains::default();
    let running = u.running_domains()?;
    reapply(&mut u, name, &new_domains.since_last(&running));
    if follow {
        return follow_guests(&mut u, name, new_domains);
    }
    Ok(())
}

/// Written by `stop` before it ends the driver domain, so `start --follow` knows the end
/// was asked for.
const STOPPING: &str = "/run/usbdom/stopping";

/// `start --follow`, once the driver domain serves: tells systemd (Type=notify), then gives
/// each guest that appears with a known config its controllers, until the driver domain
/// ends: by `stop` (Ok), else an error, so that systemd's `Restart=on-failure` starts it
/// again and the guests get their controllers back.
fn follow_guests(
    u: &mut Usbctl<crate::Socket>,
    backend: &str,
    mut new_domains: NewDomains,
) -> Result<(), Error> {
    u.xenstore().watch("@introduceDomain", "usbctl-introduce")?;
    u.xenstore().watch("@releaseDomain", "usbctl-release")?;
    println!("usbctl: following: a guest that comes back or starts with a known config gets its controllers");
    sd_notify("READY=1");
    loop {
        u.xenstore().poll()?;
        let mut changed = false;
        while u.xenstore().next_event().is_some() {
            changed = true;
        }
        if changed {
            let running = u.running_domains()?;
            if !running.iter().any(|(_, n)| n == backend) {
                if Path::new(STOPPING).exists() {
                    println!("usbctl: {backend} stopped");
                    return Ok(());
                }
                return Err(Error(format!(
                    "{backend} ended without `usbctl stop` (see its log, `xl dmesg`)"
                )));
            }
            reapply(u, backend, &new_domains.since_last(&running));
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// Tells systemd `state` when it asked to be told ($NOTIFY_SOCKET, `Type=notify`).
fn sd_notify(state: &str) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let socket = std::os::unix::net::UnixDatagram::unbound();
    let sent = socket.and_then(|s| {
        let bytes = path.as_encoded_bytes();
        if let Some(name) = bytes.strip_prefix(b"@") {
            // An abstract socket: its name after a NUL.
            use std::os::linux::net::SocketAddrExt;
            let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
            s.send_to_addr(state.as_bytes(), &addr)
        } else {
            s.send_to(state.as_bytes(), &path)
        }
    });
    if let Err(e) = sent {
        eprintln!("usbctl: could not tell systemd {state}: {e}");
    }
}

/// Waits for the ready line; fails at once if the domain is gone (it stopped booting).
fn wait_ready(
    u: &mut Usbctl<crate::Socket>,
    name: &str,
    watch: &ReadyWatch,
    timeout: Duration,
) -> Result<String, Error> {
    let start = Instant::now();
    loop {
        if let Some(line) = watch.ready_line() {
            return Ok(line);
        }
        if u.domain(name).is_err() {
            return Err(Error(format!(
                "{name} ended before it logged event=ready (see its log, `xl dmesg`)"
            )));
        }
        if start.elapsed() > timeout {
            return Err(Error(format!(
                "{name} logged no event=ready within {} s (see its log)",
                timeout.as_secs()
            )));
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// Gives each of `domains` with a known config its controllers (back); a guest that fails
/// is said and the others go on.
fn reapply(u: &mut Usbctl<crate::Socket>, backend: &str, domains: &[(DomId, String)]) {
    if domains.is_empty() {
        return;
    }
    for found in service::guest_configs(Path::new(GUESTS_DIR), Path::new(AUTO_DIR)) {
        let (name, path) = match found {
            Ok(f) => f,
            Err(e) => {
                eprintln!("usbctl: skipped: {e}");
                continue;
            }
        };
        let Some((id, _)) = domains.iter().find(|(_, n)| *n == name) else {
            continue;
        };
        let done = read_config(&path.display().to_string())
            .and_then(|cfg| u.reapply(*id, &cfg.vusb, backend));
        match done {
            Ok(lines) => {
                for line in lines {
                    println!("usbctl: {name} (domain {id}): {line}");
                }
            }
            Err(e) => eprintln!("usbctl: {name} (domain {id}): {e}"),
        }
    }
}

/// `stop [CONFIG]`.
pub(crate) fn stop(dd: &DriverDomain) -> Result<(), Error> {
    let name = dd.name.as_str();
    let mut u = Usbctl::new(connect()?, tick());
    match u.domain(name) {
        Ok(backend) => {
            if let Err(e) =
                std::fs::create_dir_all("/run/usbdom").and_then(|()| std::fs::write(STOPPING, b""))
            {
                eprintln!(
                    "usbctl: {STOPPING}: {e} (`start --follow` will take the end for a crash)"
                );
            }
            for (frontend, devid) in u.served_by(backend)? {
                // A guest that is gone as well has nothing to see go.
                match u.hc_destroy(frontend, devid) {
                    Ok(()) => println!("usbctl: removed controller {devid} of domain {frontend}"),
                    Err(e) => eprintln!("usbctl: controller {devid} of domain {frontend}: {e}"),
                }
            }
            xl(&["destroy", name])?;
            println!("usbctl: {name} destroyed");
        }
        Err(_) => println!("usbctl: {name} is not running"),
    }
    let listed = assignable();
    for entry in &dd.pci {
        let bdf = bdf(entry);
        if listed.iter().any(|l| l.ends_with(bdf)) {
            xl(&["pci-assignable-remove", "-r", bdf])?;
            println!("usbctl: {bdf} is dom0's again");
        }
    }
    Ok(())
}
