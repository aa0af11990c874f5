//! `cargo xtask bench keys [--presses N]`: key latency on real Xen inside QEMU, from a QMP key
//! press on the host to the evdev event in guest-b, whose stock xen-hcd has the keyboard
//! through usbdom: N presses with guest-a idle, then N while guest-a writes its stick (stock
//! xen-hcd, or with `--load-hcd pvusb-hcd` our frontend at SuperSpeed; the same usbdom)
//! flat out. guest-b's keyprobe (frontend-linux/probes) writes
//! each press to Xen's debug port, which Xen prints on the serial line this program reads:
//! the time from sending the press to that line's arrival is the press's latency, with no
//! console daemon or dom0 process on the way. Presses go one at a time, 40-100 ms after the
//! last one's echo (not in step with the keyboard's 8 ms polling).
//!
//! `--cpus N` (default 2) is the outer machine's CPUs, Xen's physical ones.
//!
//! Prints each phase's latency percentiles, the ratio of the p99s (the goal: under load at
//! most twice idle), guest-a's write rate during the load, and usbdom's per-second counters
//! then. dom0's side is `tests/e2e/keys.sh`. A command that prints figures, not a test.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError, Sender};
use std::sync::Mutex;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use usbdom_tests::{field, key_event, run_qemu_timed, NestedXen, Qmp, StallProbe};

/// The phases dom0 asks for (`E2E: want=keys_<phase>`), in order.
const PHASES: [&str; 2] = ["idle", "load"];
/// The key pressed, and its Linux key code as keyprobe reports it.
const KEY: (&str, u16) = ("a", 30);
/// How long a press may take to show before it counts as lost.
const LOST_AFTER: Duration = Duration::from_secs(5);

fn usage() -> ! {
    eprintln!(
        "usage: cargo xtask bench keys [--presses N] [--load-hcd xen-hcd|pvusb-hcd] [--cpus N]"
    );
    std::process::exit(2)
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (mut presses, mut load_hcd, mut cpus) = (200, "xen-hcd", 2u32);
    for pair in args.chunks(2) {
        match pair {
            [flag, n] if flag == "--presses" => {
                presses = n.parse::<usize>().unwrap_or_else(|_| usage()).max(1)
            }
            [flag, n] if flag == "--cpus" => {
                cpus = n.parse::<u32>().unwrap_or_else(|_| usage()).clamp(1, 4)
            }
            [flag, hcd]
                if flag == "--load-hcd" && ["xen-hcd", "pvusb-hcd"].contains(&hcd.as_str()) =>
            {
                load_hcd = if hcd == "xen-hcd" {
                    "xen-hcd"
                } else {
                    "pvusb-hcd"
                }
            }
            _ => usage(),
        }
    }
    // Two outer CPUs by default, as a laptop has several: with one, Xen, dom0, usbdom and
    // both guests share it and the tail under load is its time-sharing. (The e2e runs on one
    // for the vCPU threads' race, which ends a run, not its figures; tests/src/lib.rs.) Set
    // here, before any thread.
    std::env::set_var("USBDOM_E2E_SMP", cpus.to_string());
    let machine = NestedXen::from_env();
    let socket = std::env::temp_dir().join(format!("usbdom-keys-{}.qmp", std::process::id()));
    let _ = std::fs::remove_file(&socket);
    let mut qemu = machine.args(
        &format!("usbdom.mode=keys usbdom.load_hcd={load_hcd}"),
        Some(&socket),
    );
    qemu.extend(["-serial".into(), "stdio".into()]);
    eprintln!(
        "bench keys: {presses} presses with guest-a idle, then {presses} while it writes its stick with {load_hcd}, {cpus} outer CPU(s) (about 3 minutes)"
    );
    // The running phase's presser: where keyprobe's lines go, and the thread.
    let echoes: Mutex<Option<Sender<(Instant, String)>>> = Mutex::new(None);
    let pressers: Mutex<Vec<(&str, JoinHandle<Phase>)>> = Mutex::new(Vec::new());
    let probe = StallProbe {
        qmp: socket.clone(),
        after: Duration::from_secs(150),
    };
    let out = run_qemu_timed(
        &qemu,
        Duration::from_secs(30 * 60),
        Some(&probe),
        |at, l| {
            if l.contains("keyprobe press=") {
                if let Some(tx) = echoes.lock().unwrap().as_ref() {
                    let _ = tx.send((at, l.to_string()));
                }
            }
            if let Some(mark) = l.strip_prefix("E2E: ") {
                eprintln!("bench keys: {mark}");
                // Lines from Xen's console end in "\r".
                let want = mark.strip_prefix("want=keys_").unwrap_or("").trim_end();
                if let Some(phase) = PHASES.into_iter().find(|p| *p == want) {
                    let (tx, rx) = channel();
                    *echoes.lock().unwrap() = Some(tx);
                    let socket = socket.clone();
                    let presser = std::thread::spawn(move || press(&socket, presses, &rx));
                    pressers.lock().unwrap().push((phase, presser));
                }
            }
            l.starts_with("E2E: done")
        },
    );
    let phases: BTreeMap<&str, Phase> = pressers
        .into_inner()
        .unwrap()
        .into_iter()
        .map(|(name, t)| (name, t.join().expect("a presser panicked")))
        .collect();
    // The whole serial log, for a look at what the figures came from.
    let log_path = std::path::PathBuf::from(&machine.initrd).with_file_name("bench-keys.log");
    let text: String = out
        .lines
        .iter()
        .map(|(t, l)| format!("[{:8.3}] {l}\n", t.as_secs_f64()))
        .collect();
    match std::fs::write(&log_path, text) {
        Ok(()) => eprintln!("bench keys: the serial log is in {}", log_path.display()),
        Err(e) => eprintln!("bench keys: {}: {e}", log_path.display()),
    }
    let marks: Vec<&str> = out
        .lines
        .iter()
        .filter_map(|(_, l)| l.strip_prefix("E2E: "))
        .collect();
    for (name, phase) in &phases {
        if let Some(e) = &phase.error {
            eprintln!("bench keys: phase {name}: {e}");
        }
    }
    if !marks.iter().any(|l| l.starts_with("result=pass")) {
        for (t, l) in &out.lines {
            eprintln!("[{:8.3}] {l}", t.as_secs_f64());
        }
        eprintln!(
            "bench keys: the run did not finish (timed_out={})",
            out.timed_out
        );
        std::process::exit(1);
    }
    report(&phases, &marks, presses, load_hcd, cpus);
}

/// One phase's presses.
#[derive(Default)]
struct Phase {
    /// Each answered press's latency, in the order sent.
    latencies: Vec<Duration>,
    /// Presses with no echo within [`LOST_AFTER`].
    lost: usize,
    /// What went wrong talking to QEMU, if anything.
    error: Option<String>,
}

/// Presses [`KEY`] `presses` times, one at a time, timing each to its echo on `echoes`; then
/// Escape, which ends the phase for dom0.
fn press(socket: &Path, presses: usize, echoes: &Receiver<(Instant, String)>) -> Phase {
    let mut phase = Phase::default();
    let mut qmp = match Qmp::connect(socket, Duration::from_secs(10)) {
        Ok(q) => q,
        Err(e) => {
            phase.error = Some(format!("QMP: {e}"));
            return phase;
        }
    };
    let tap = |qmp: &mut Qmp, key: &str| -> Result<(), String> {
        for down in [true, false] {
            let reply = qmp.execute(&key_event(key, down))?;
            if reply.contains("\"error\"") {
                return Err(reply);
            }
        }
        Ok(())
    };
    // A xorshift: gaps that do not keep step with anything periodic in the guests.
    let mut seed = 0x9e37_79b9u32;
    for n in 1..=presses {
        if n % 50 == 0 {
            eprintln!(
                "bench keys: {n} presses sent, {} answered, {} lost",
                phase.latencies.len(),
                phase.lost
            );
        }
        seed ^= seed << 13;
        seed ^= seed >> 17;
        seed ^= seed << 5;
        std::thread::sleep(Duration::from_millis(40 + u64::from(seed % 61)));
        // A lost press's late echo is not the next one's.
        while echoes.try_recv().is_ok() {}
        let sent = Instant::now();
        if let Err(e) = tap(&mut qmp, KEY.0) {
            phase.error = Some(e);
            break;
        }
        if n == 1 {
            eprintln!("bench keys: the first press is sent");
        }
        loop {
            match echoes.recv_timeout(LOST_AFTER.saturating_sub(sent.elapsed())) {
                Ok((at, line)) if field(&line, "code") == Some(&KEY.1.to_string()) => {
                    phase.latencies.push(at.saturating_duration_since(sent));
                    break;
                }
                Ok(_) => continue,
                Err(RecvTimeoutError::Timeout) => {
                    phase.lost += 1;
                    break;
                }
                Err(RecvTimeoutError::Disconnected) => return phase,
            }
        }
    }
    if let Err(e) = tap(&mut qmp, "esc") {
        phase.error.get_or_insert(e);
    }
    phase
}

/// The value at percentile `p` (nearest rank) of sorted `v`, in ms.
fn percentile(v: &[Duration], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * v.len() as f64).ceil() as usize;
    v[rank.clamp(1, v.len()) - 1].as_secs_f64() * 1000.0
}

fn report(
    phases: &BTreeMap<&str, Phase>,
    marks: &[&str],
    presses: usize,
    load_hcd: &str,
    cpus: u32,
) {
    println!(
        "bench keys: QMP key press on the host -> evdev event in guest-b (stock xen-hcd through usbdom), {presses} presses a phase; the load: guest-a writing its stick with {load_hcd}; {cpus} outer CPU(s)"
    );
    println!(
        "{:<6} {:>8} {:>5} {:>8} {:>8} {:>8} {:>8} {:>8}",
        "phase", "answered", "lost", "min_ms", "p50_ms", "p90_ms", "p99_ms", "max_ms"
    );
    let mut p99 = BTreeMap::new();
    for name in PHASES {
        let Some(phase) = phases.get(name) else {
            println!("{name:<6} (not run)");
            continue;
        };
        let mut v = phase.latencies.clone();
        v.sort();
        let at = |p| percentile(&v, p);
        p99.insert(name, at(99.0));
        println!(
            "{name:<6} {:>8} {:>5} {:>8.1} {:>8.1} {:>8.1} {:>8.1} {:>8.1}",
            v.len(),
            phase.lost,
            at(0.0),
            at(50.0),
            at(90.0),
            at(99.0),
            at(100.0)
        );
        if let Some(e) = &phase.error {
            println!("{name:<6} error: {e}");
        }
    }
    if let (Some(idle), Some(load)) = (p99.get("idle"), p99.get("load")) {
        println!(
            "bench keys: p99 under load / p99 idle = {:.2} (the goal: at most 2)",
            load / idle
        );
    }
    // guest-a's writes while the load phase ran: 16 MiB each.
    let seconds: Vec<f64> = marks
        .iter()
        .filter_map(|l| l.strip_prefix("keys load "))
        .filter_map(|l| field(l, "seconds")?.parse().ok())
        .collect();
    if !seconds.is_empty() {
        let total: f64 = seconds.iter().sum();
        println!(
            "bench keys: guest-a wrote {} x 16 MiB at {:.2} MB/s",
            seconds.len(),
            seconds.len() as f64 * 16.0 * 1.048_576 / total
        );
    }
    // usbdom's seconds during the load, averaged: where its time went.
    let cpu: Vec<&str> = marks
        .iter()
        .filter_map(|l| l.strip_prefix("keys usbdom_cpu "))
        .collect();
    if !cpu.is_empty() {
        let keys = [
            "busy_pct",
            "wakeups",
            "urbs",
            "hypercalls",
            "grant_ops",
            "notifications",
            "usb_us",
            "answer_us",
            "serve_us",
        ];
        let means: Vec<String> = keys
            .iter()
            .map(|k| {
                let sum: f64 = cpu
                    .iter()
                    .filter_map(|l| field(l, k)?.parse::<f64>().ok())
                    .sum();
                format!("{k}={:.0}", sum / cpu.len() as f64)
            })
            .collect();
        println!(
            "bench keys: usbdom per second under load ({} s): {}",
            cpu.len(),
            means.join(" ")
        );
    }
}
