//! What `usbdom.service` does on xenstore, through `usbctl start` and `usbctl stop`: after the
//! driver domain is (re)created, each running guest whose config has `vusb` entries gets its
//! controllers back; before it goes, every controller it serves is taken away the way
//! `hc-destroy` does it, devices first, so the guests see their devices leave.
//!
//! Which config belongs to which running guest: `usbctl up` and `usbctl apply` record it
//! ([`GUESTS_DIR`]), and `xendomains` starts the configs in [`AUTO_DIR`] at boot.

use std::path::{Path, PathBuf};

use xen::abi::xs_wire::XsdError;
use xen::abi::DomId;
use xen::xenstore::{TxId, XsError, XsTransport};

use crate::{read_config, Error, Usbctl};

/// Where `usbctl up` and `usbctl apply` record each guest's config: `<name>.cfg`, a symbolic
/// link to the file, so an edit to it counts at the next start.
pub const GUESTS_DIR: &str = "/var/lib/usbdom/guests";

/// The configs `xendomains` creates at boot.
pub const AUTO_DIR: &str = "/etc/xen/auto";

/// The driver domain's config the service starts.
pub const DRIVER_DOMAIN_CONFIG: &str = "/etc/xen/usbdom.cfg";

/// What usbdom logs once it serves (`docs/log-events.md`).
pub const READY_EVENT: &str = "event=ready ";

/// Records `config` as the config of guest `name` in `dir`; an older record is replaced.
pub fn record_guest(dir: &Path, name: &str, config: &Path) -> Result<(), Error> {
    if name.is_empty() || name.contains('/') || name.starts_with('.') {
        return Err(Error(format!("cannot record a guest called '{name}'")));
    }
    let config =
        std::fs::canonicalize(config).map_err(|e| Error(format!("{}: {e}", config.display())))?;
    std::fs::create_dir_all(dir).map_err(|e| Error(format!("{}: {e}", dir.display())))?;
    let link = dir.join(format!("{name}.cfg"));
    let tmp = dir.join(format!(".{name}.cfg.new"));
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(&config, &tmp)
        .and_then(|()| std::fs::rename(&tmp, &link))
        .map_err(|e| Error(format!("{}: {e}", link.display())))
}

/// The guest configs to consider, named by the guests they make: those recorded in
/// `recorded` (a record whose file is gone is skipped), then those of `auto` not recorded.
/// A config that does not parse or has no name comes back as its error.
pub fn guest_configs(recorded: &Path, auto: &Path) -> Vec<Result<(String, PathBuf), Error>> {
    let mut out: Vec<Result<(String, PathBuf), Error>> = Vec::new();
    for dir in [recorded, auto] {
        let Ok(entries) = std::fs::read_dir(dir) else {
            continue;
        };
        let mut paths: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "cfg") && p.exists())
            .collect();
        paths.sort();
        for path in paths {
            let shown = path.display().to_string();
            let named = read_config(&shown).and_then(|cfg| {
                cfg.name
                    .ok_or_else(|| Error(format!("{shown}: no name = \"...\"")))
            });
            match named {
                Ok(name) => {
                    let seen = out.iter().any(|r| matches!(r, Ok((n, _)) if *n == name));
                    if !seen {
                        out.push(Ok((name, path)));
                    }
                }
                Err(e) => out.push(Err(e)),
            }
        }
    }
    out
}

/// Waits for the `event=ready` line in the driver domain's serial log. The device model
/// truncates the file when it opens it, and the new boot's lines may not reach the old
/// length for a long time, so the last boot's log is moved aside first (to `<log>.old`, where
/// it stays for a look at why that boot ended) and the new one is read from its start.
pub struct ReadyWatch {
    path: PathBuf,
}

impl ReadyWatch {
    /// Moves the last boot's log at `path` aside; an error when it is there and cannot be.
    pub fn fresh(path: &Path) -> Result<ReadyWatch, Error> {
        let mut old = path.as_os_str().to_owned();
        old.push(".old");
        match std::fs::rename(path, &old) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(Error(format!("{}: {e}", path.display())))
            }
            _ => {}
        }
        Ok(ReadyWatch {
            path: path.to_path_buf(),
        })
    }

    /// The ready line, once the log has it whole.
    pub fn ready_line(&self) -> Option<String> {
        let bytes = std::fs::read(&self.path).ok()?;
        let text = String::from_utf8_lossy(&bytes);
        // Whole lines only: the serial file gets usbdom's lines a few bytes at a time.
        text.split_inclusive('\n')
            .filter(|l| l.ends_with('\n'))
            .find(|l| l.contains(READY_EVENT))
            .map(|l| l.trim_end().to_string())
    }
}

/// The `file:` path of an xl `serial` setting.
pub fn serial_file(serial: &str) -> Option<&str> {
    serial.strip_prefix("file:")
}

impl<T: XsTransport> Usbctl<T> {
    /// Every running domain: (id, name).
    pub fn running_domains(&mut self) -> Result<Vec<(DomId, String)>, Error> {
        let mut out = Vec::new();
        for id in self.xenstore().directory(TxId::NONE, "/local/domain")? {
            let Some(domid) = DomId::parse(&id) else {
                continue;
            };
            let name = self
                .xenstore()
                .read_string(TxId::NONE, &format!("/local/domain/{id}/name"))
                .unwrap_or_default();
            out.push((domid, name));
        }
        Ok(out)
    }

    /// The controllers `backend` serves: (frontend, devid), from its backend directory.
    pub fn served_by(&mut self, backend: DomId) -> Result<Vec<(DomId, u32)>, Error> {
        let dir = format!("/local/domain/{backend}/backend/vusb");
        let frontends = match self.xenstore().directory(TxId::NONE, &dir) {
            Ok(f) => f,
            Err(XsError::Xs(XsdError::Enoent)) => return Ok(Vec::new()),
            Err(e) => return Err(e.into()),
        };
        let mut out = Vec::new();
        for f in frontends {
            let Some(frontend) = DomId::parse(&f) else {
                continue;
            };
            let devids = self
                .xenstore()
                .directory(TxId::NONE, &format!("{dir}/{f}"))
                .unwrap_or_default();
            for d in devids {
                if let Some(devid) = xen::abi::parse_decimal(&d).and_then(|v| u32::try_from(v).ok())
                {
                    out.push((frontend, devid));
                }
            }
        }
        out.sort();
        Ok(out)
    }

    /// Removes `frontend`'s controllers whose backend domain no longer runs (a driver domain
    /// that crashed or was destroyed without `usbctl stop`): the guest sees them go, and a
    /// new controller is not numbered after a dead one. Returns their devids.
    pub fn remove_orphans(&mut self, frontend: DomId) -> Result<Vec<u32>, Error> {
        let running: Vec<DomId> = self.running_domains()?.into_iter().map(|d| d.0).collect();
        let mut removed = Vec::new();
        for c in self.list(frontend)? {
            if running.contains(&c.backend) {
                continue;
            }
            let fdir = format!("/local/domain/{frontend}/device/vusb/{}", c.devid);
            self.xenstore().rm(TxId::NONE, &fdir)?;
            removed.push(c.devid);
        }
        Ok(removed)
    }

    /// What the service does for one running guest once the driver domain serves: its dead
    /// backends' controllers go, and its config's `vusb` entries are applied unless their
    /// backend serves it already (a restart of the service with the driver domain still
    /// running changes nothing). Returns what was done, a line each.
    pub fn reapply(
        &mut self,
        frontend: DomId,
        vusb: &[crate::xlcfg::Vusb],
        default_backend: &str,
    ) -> Result<Vec<String>, Error> {
        let mut done: Vec<String> = self
            .remove_orphans(frontend)?
            .into_iter()
            .map(|devid| format!("controller {devid} removed: its backend domain is gone"))
            .collect();
        done.extend(self.apply_unless_served(frontend, vusb, default_backend)?);
        Ok(done)
    }
}

/// The domains that appeared since the last look: a guest xl made again after a reboot
/// (same name, a new id) or one started later.
#[derive(Default)]
pub struct NewDomains {
    seen: std::collections::BTreeSet<DomId>,
}

impl NewDomains {
    /// Those of `running` not running at the last call (all of them at the first). One
    /// without a name yet (the toolstack still making it) is not counted as seen: it comes
    /// back once it has one.
    pub fn since_last(&mut self, running: &[(DomId, String)]) -> Vec<(DomId, String)> {
        let named: Vec<&(DomId, String)> = running.iter().filter(|(_, n)| !n.is_empty()).collect();
        let new = named
            .iter()
            .filter(|(id, _)| !self.seen.contains(id))
            .map(|d| (*d).clone())
            .collect();
        self.seen = named.iter().map(|(id, _)| *id).collect();
        new
    }
}
