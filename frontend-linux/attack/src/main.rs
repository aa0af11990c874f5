//! `usbattack`: a hostile PVUSB frontend run from a Linux guest's user space, against the
//! usbdom backend serving this guest's controller `device/vusb/<devid>` (which no kernel
//! driver may hold: xen-hcd must not be loaded; it waits up to 2 minutes for the toolstack
//! to create it). It runs frontend-linux's attack phases
//! ([`frontend_linux::attack`]) over `/dev/xen/gntalloc`, `/dev/xen/evtchn` and
//! `/dev/xen/xenbus`, printing one line per event:
//!
//! ```text
//! usbattack --devid 0 --phases flood,overrun --seconds 60
//! attack: start domid=3 devid=0 backend_id=1 phases=flood,overrun seconds=60
//! attack: phase=flood event=connected devices=0
//! attack: phase=flood sent=… answered=… statuses=nodev:… … as_expected=yes …
//! attack: done phases=2 as_expected=2 disconnects=… leaked_grants=0
//! ```
//!
//! The exit status is 0 when every phase went as a correct backend makes it go, 1 if not,
//! 2 when the attack could not start.

mod dev;

use std::process::ExitCode;
use std::time::Instant;

use frontend_linux::attack::{AttackEnv, Attacker, Phase};
use xen::abi::{parse_decimal, DomId};
use xen::xenstore::{TxId, XenStore};

const USAGE: &str =
    "usage: usbattack [--devid N] [--phases all|flood,bogus_grefs,...] [--seconds S]";

/// How long to wait for the toolstack to create our controller.
const CONTROLLER_WAIT_MS: u64 = 600_000;

struct Args {
    devid: u32,
    phases: Vec<Phase>,
    seconds: u64,
}

fn parse_args(mut args: impl Iterator<Item = String>) -> Result<Args, String> {
    let mut a = Args {
        devid: 0,
        phases: Phase::ALL.to_vec(),
        seconds: 60,
    };
    while let Some(flag) = args.next() {
        let value = args.next().ok_or(format!("{flag} needs a value"))?;
        let number = || parse_decimal(&value).ok_or(format!("{flag}: not a number: {value}"));
        match flag.as_str() {
            "--devid" => a.devid = u32::try_from(number()?).map_err(|_| "--devid too big")?,
            "--seconds" => a.seconds = number()?.max(1),
            "--phases" if value == "all" => a.phases = Phase::ALL.to_vec(),
            "--phases" => {
                a.phases = value
                    .split(',')
                    .map(|n| Phase::parse(n).ok_or(format!("unknown phase {n}")))
                    .collect::<Result<_, _>>()?;
            }
            _ => return Err(format!("unknown argument {flag}")),
        }
    }
    Ok(a)
}

/// Time, waiting on our event channel and xenstore, and output to stdout.
struct Linux {
    start: Instant,
    fds: [libc::pollfd; 2],
}

impl AttackEnv for Linux {
    fn now_ms(&mut self) -> u64 {
        self.start.elapsed().as_millis() as u64
    }

    fn pause(&mut self, ms: u64) {
        for f in &mut self.fds {
            f.revents = 0;
        }
        let timeout = libc::c_int::try_from(ms).unwrap_or(libc::c_int::MAX);
        // SAFETY: two valid pollfds; the descriptors stay open while the attacker lives.
        unsafe { libc::poll(self.fds.as_mut_ptr(), 2, timeout) };
    }

    fn event(&mut self, line: &str) {
        println!("{line}");
    }
}

fn pollfd(fd: i32) -> libc::pollfd {
    libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    }
}

fn main() -> ExitCode {
    let args = match parse_args(std::env::args().skip(1)) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("usbattack: {e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let opened = dev::Platform::open().and_then(|p| Ok((p, dev::Xenbus::open()?)));
    let (platform, xenbus) = match opened {
        Ok(d) => d,
        Err(e) => {
            println!("attack: done error=open_devices reason=\"{e}\"");
            return ExitCode::from(2);
        }
    };
    let mut env = Linux {
        start: Instant::now(),
        fds: [pollfd(platform.evtchn_fd()), pollfd(xenbus.fd())],
    };
    let mut xs = XenStore::new(xenbus);
    // Our domid, from the key the toolstack writes under our home (a relative path).
    let domid = xs
        .read_string(TxId::NONE, "domid")
        .ok()
        .and_then(|s| DomId::parse(&s));
    let Some(domid) = domid else {
        println!("attack: done error=no_domid");
        return ExitCode::from(2);
    };
    // The toolstack may create the controller after this guest is up: wait for it.
    let backend_key = format!("device/vusb/{}/backend", args.devid);
    let mut waited = false;
    while xs.read(TxId::NONE, &backend_key).is_err() && env.now_ms() < CONTROLLER_WAIT_MS {
        if !waited {
            println!("attack: waiting_for={backend_key}");
            waited = true;
        }
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
    let mut attacker = match Attacker::new(platform, xs, domid, args.devid) {
        Ok(a) => a,
        Err(e) => {
            println!("attack: done error=probe {e}");
            return ExitCode::from(2);
        }
    };
    let names: Vec<&str> = args.phases.iter().map(|p| p.name()).collect();
    println!(
        "attack: start domid={domid} devid={} backend_id={} phases={} seconds={}",
        args.devid,
        attacker.backend_id(),
        names.join(","),
        args.seconds
    );
    let budget = args.seconds * 1000 / args.phases.len().max(1) as u64;
    let mut passed = 0;
    let mut disconnects = 0;
    for &phase in &args.phases {
        let r = attacker.run(phase, &mut env, budget);
        passed += usize::from(r.as_expected);
        disconnects += r.disconnects;
    }
    let leaked = attacker.close(&mut env);
    println!(
        "attack: done phases={} as_expected={passed} disconnects={disconnects} leaked_grants={leaked}",
        args.phases.len()
    );
    if passed == args.phases.len() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<Args, String> {
        parse_args(s.split_whitespace().map(String::from))
    }

    #[test]
    fn the_command_line_names_devid_phases_and_seconds() {
        let a = parse("--devid 2 --phases flood,state_flap --seconds 30").unwrap();
        assert_eq!(
            (a.devid, a.phases, a.seconds),
            (2, vec![Phase::Flood, Phase::StateFlap], 30)
        );
        let a = parse("").unwrap();
        assert_eq!((a.devid, a.phases.len(), a.seconds), (0, 8, 60));
        assert_eq!(parse("--phases all").unwrap().phases, Phase::ALL.to_vec());
        assert!(parse("--phases flood,nope").is_err());
        assert!(parse("--seconds").is_err());
        assert!(parse("--devid x").is_err());
        assert!(parse("--verbose 1").is_err());
    }
}
