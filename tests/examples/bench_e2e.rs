//! `cargo xtask bench e2e [--mib N] [--runs N]`: on real Xen inside QEMU, in one boot of the
//! outer machine, a Linux guest reads and writes the same stick with `dd` (direct I/O, 1 MiB
//! blocks, N MiB, three rounds of reads, then three of writes) five ways — (a) through usbdom
//! with Linux's xen-hcd (`usbdom`), (b) through usbdom with our pvusb-hcd on a USB 3 controller
//! (`pvusb`: multi-page ring, persistent grants), (c) through QEMU's `qusb` PVUSB backend in
//! dom0 with xen-hcd (`qusb`), (d) the same with pvusb-hcd (`qusb_pvusb`: qusb offers no
//! feature, so the stock protocol), (e) in an HVM guest with the controller passed through
//! (`native`, as in the PVUSB 2009 table) — and prints each path against native and against
//! qusb for read and write, and where the time went. Each guest also times one CPU copy of
//! data (reading a file in memory), which bounds a path that copies once. Per MiB moved: the
//! guest's and dom0's CPU time and, for the usbdom paths, usbdom's busy time and the part of it in hypercalls,
//! its hypercalls, grant operations and the pages they carried, notifications, wakeups and
//! requests, and how often a ring was full. dom0's side is `tests/e2e/bench.sh`. With
//! `--runs N` the outer machine boots N times and each run's ratios are printed beside the
//! others. A command that prints figures, not a test: nothing here is timed against a
//! threshold.

use std::collections::BTreeMap;
use std::time::Duration;

use usbdom_tests::{field, run_qemu, NestedXen};

const PATHS: [&str; 5] = ["usbdom", "pvusb", "qusb", "qusb_pvusb", "native"];
/// The paths through usbdom, whose counters it logs.
const USBDOM_PATHS: [&str; 2] = ["usbdom", "pvusb"];
const OPS: [&str; 2] = ["read", "write"];
/// Rounds of each op the guest runs (tests/e2e/guest-init.sh).
const ROUNDS: f64 = 3.0;
/// usbdom's `event=cpu` counters summed per op.
const USBDOM_COUNTERS: [&str; 15] = [
    "busy_us",
    "hypercall_us",
    "usb_us",
    "answer_us",
    "xenstore_us",
    "log_us",
    "serve_us",
    "hypercalls",
    "grant_ops",
    "grant_entries",
    "notifications",
    "wakeups",
    "urbs",
    "ring_full",
    "interval_us",
];

/// What one boot measured.
#[derive(Default)]
struct Run {
    /// MB/s of each round, by (path, op).
    rates: BTreeMap<(String, String), Vec<f64>>,
    /// The guest's busy CPU ms over the rounds, by (path, op).
    guest_ms: BTreeMap<(String, String), f64>,
    /// dom0's busy CPU ms during the op, by (path, op).
    dom0_ms: BTreeMap<(String, String), f64>,
    /// usbdom's counters summed over the seconds of each op, by (path, op).
    usbdom: BTreeMap<(String, String), BTreeMap<&'static str, f64>>,
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (mut mib, mut runs) = (16u32, 1u32);
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        let value = it
            .next()
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| usage());
        match flag.as_str() {
            "--mib" => mib = value,
            "--runs" => runs = value.max(1),
            _ => usage(),
        }
    }
    let mut ratios = Vec::new();
    for n in 1..=runs {
        let run = boot(mib, n);
        report(&run, mib, n);
        ratios.push(OPS.map(|op| median(&run, "pvusb", op) / median(&run, "qusb", op)));
    }
    if runs > 1 {
        for (i, op) in OPS.iter().enumerate() {
            let each: Vec<String> = ratios.iter().map(|r| format!("{:.3}", r[i])).collect();
            println!("bench op={op} pvusb_vs_qusb_by_run={}", each.join(","));
        }
    }
}

/// One boot of the outer machine: the three paths, their rounds and counters.
fn boot(mib: u32, n: u32) -> Run {
    let machine = NestedXen::from_env();
    let mut qemu = machine.args(&format!("usbdom.mode=bench usbdom.mib={mib}"), None);
    qemu.extend(["-serial".into(), "stdio".into()]);
    eprintln!(
        "bench e2e: run {n}: {mib} MiB per round; qusb (xen-hcd, pvusb-hcd), then usbdom (xen-hcd, pvusb-hcd), then native (about 20 minutes)"
    );
    let out = run_qemu(&qemu, Duration::from_secs(60 * 60), |l| {
        if let Some(mark) = l.strip_prefix("E2E: ") {
            eprintln!("bench e2e: {mark}");
        }
        l.starts_with("E2E: done")
    });
    let marks: Vec<&str> = out
        .lines
        .iter()
        .filter_map(|(_, l)| l.strip_prefix("E2E: "))
        .collect();
    if !marks.iter().any(|l| l.starts_with("result=pass")) {
        // Every console's tail, as dom0 printed them, and the last lines of all.
        for (_, l) in &out.lines {
            if l.starts_with("LOG ") || l.starts_with("E2E") {
                eprintln!("{l}");
            }
        }
        for (t, l) in out.lines.iter().rev().take(40).rev() {
            eprintln!("[{:8.3}] {l}", t.as_secs_f64());
        }
        eprintln!(
            "bench e2e: run {n} failed{}: {}",
            if out.timed_out { " (time limit)" } else { "" },
            marks
                .iter()
                .find(|l| l.starts_with("result=fail"))
                .unwrap_or(&"no result line")
        );
        std::process::exit(1);
    }
    let mut run = Run::default();
    for l in marks.iter().filter_map(|l| l.strip_prefix("bench ")) {
        let key = |l: &str| {
            (
                field(l, "path").unwrap_or("?").to_string(),
                field(l, "op").unwrap_or("?").to_string(),
            )
        };
        let num = |l: &str, k: &str| field(l, k).and_then(|v| v.parse::<f64>().ok());
        if let Some(d) = l.strip_prefix("dom0 ") {
            run.dom0_ms.insert(key(d), num(d, "cpu_ms").unwrap_or(0.0));
        } else if let Some(c) = l.strip_prefix("usbdom_cpu ") {
            // A second belongs to the op whose direction moved more bytes in it.
            let op = if num(c, "bytes_in") >= num(c, "bytes_out") {
                "read"
            } else {
                "write"
            };
            let path = field(c, "path").unwrap_or("?").to_string();
            let sums = run.usbdom.entry((path, op.to_string())).or_default();
            for k in USBDOM_COUNTERS {
                *sums.entry(k).or_default() += num(c, k).unwrap_or(0.0);
            }
        } else if l.contains(" disk ") {
            // What each guest read: the same stick, by its model, size and clock.
            println!("bench {l}");
        } else if l.starts_with("path=") {
            let (Some(bytes), Some(secs)) = (num(l, "bytes"), num(l, "seconds")) else {
                eprintln!("bench e2e: unreadable round: {l}");
                std::process::exit(1);
            };
            run.rates
                .entry(key(l))
                .or_default()
                .push(bytes / secs / 1e6);
            *run.guest_ms.entry(key(l)).or_default() += num(l, "cpu_ms").unwrap_or(0.0);
        } else if let Some(f) = l.strip_prefix("usbdom_frontend ") {
            // What each usbdom path's frontend negotiated.
            println!("bench usbdom_frontend {f}");
        } else if !l.starts_with("usbdom_stats ") {
            println!("bench {l}");
        }
    }
    for (path, op) in PATHS.iter().flat_map(|p| OPS.map(|o| (*p, o))) {
        if !run.rates.contains_key(&(path.to_string(), op.to_string())) {
            eprintln!("bench e2e: run {n}: no {op} rounds for {path}");
            std::process::exit(1);
        }
    }
    run
}

fn median(run: &Run, path: &str, op: &str) -> f64 {
    let mut v = run.rates[&(path.to_string(), op.to_string())].clone();
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// One run's figures: rates, ratios and the breakdown per MiB.
fn report(run: &Run, mib: u32, n: u32) {
    let per_op_mib = ROUNDS * f64::from(mib);
    for ((path, op), v) in &run.rates {
        let mut sorted = v.clone();
        sorted.sort_by(f64::total_cmp);
        let rounds: Vec<String> = v.iter().map(|r| format!("{r:.2}")).collect();
        println!(
            "bench run={n} path={path} op={op} mib={mib} rounds_mb_s={} min={:.2} median={:.2} max={:.2}",
            rounds.join(","),
            sorted[0],
            median(run, path, op),
            sorted[sorted.len() - 1]
        );
    }
    for op in OPS {
        let native = median(run, "native", op);
        let qusb = median(run, "qusb", op);
        let vs: Vec<String> = PATHS
            .iter()
            .filter(|p| **p != "native")
            .map(|p| format!("{p}_vs_native={:.3}", median(run, p, op) / native))
            .chain(
                ["usbdom", "pvusb", "qusb_pvusb"]
                    .iter()
                    .map(|p| format!("{p}_vs_qusb={:.3}", median(run, p, op) / qusb)),
            )
            .collect();
        println!("bench run={n} op={op} {}", vs.join(" "));
    }
    copy_bound(run, n);
    println!("bench run={n}: where the time went, per MiB moved ({per_op_mib} MiB per op)");
    println!(
        "  {:<10} {:<5} {:>6} {:>9} {:>9} {:>9} {:>8} {:>10} {:>9} {:>9} {:>9} {:>8} {:>7} {:>10}",
        "path",
        "op",
        "MB/s",
        "guest_ms",
        "dom0_ms",
        "usbdom_ms",
        "hcall_ms",
        "hypercalls",
        "grant_ops",
        "grant_pg",
        "notifies",
        "wakeups",
        "urbs",
        "full/1kurb"
    );
    for (path, op) in PATHS.iter().flat_map(|p| OPS.map(|o| (*p, o))) {
        let key = (path.to_string(), op.to_string());
        let per = |v: f64| v / per_op_mib;
        let guest = per(run.guest_ms.get(&key).copied().unwrap_or(0.0));
        let dom0 = run
            .dom0_ms
            .get(&key)
            .map_or("-".into(), |v| format!("{:.1}", per(*v)));
        let u = run
            .usbdom
            .get(&key)
            .filter(|_| USBDOM_PATHS.contains(&path));
        let col = |k: &str, scale: f64| {
            u.and_then(|s| s.get(k))
                .map_or("-".into(), |v| format!("{:.1}", per(*v) * scale))
        };
        let full = u.map_or("-".into(), |s| {
            let urbs = s.get("urbs").copied().unwrap_or(0.0).max(1.0);
            format!(
                "{:.1}",
                s.get("ring_full").copied().unwrap_or(0.0) * 1000.0 / urbs
            )
        });
        println!(
            "  {:<10} {:<5} {:>6.2} {:>9.1} {:>9} {:>9} {:>8} {:>10} {:>9} {:>9} {:>9} {:>8} {:>7} {:>10}",
            path,
            op,
            median(run, path, op),
            guest,
            dom0,
            col("busy_us", 0.001),
            col("hypercall_us", 0.001),
            col("hypercalls", 1.0),
            col("grant_ops", 1.0),
            col("grant_entries", 1.0),
            col("notifications", 1.0),
            col("wakeups", 1.0),
            col("urbs", 1.0),
            full
        );
    }
    // usbdom's busy time by step of its main loop (the rest: interrupts, the loop itself).
    println!("bench run={n}: usbdom's busy ms per MiB by step of its main loop");
    println!(
        "  {:<7} {:<5} {:>7} {:>7} {:>7} {:>8} {:>7} {:>7} {:>7}",
        "path", "op", "busy", "usb", "answer", "xenstore", "log", "serve", "other"
    );
    for (path, op) in USBDOM_PATHS.iter().flat_map(|p| OPS.map(|o| (*p, o))) {
        let Some(s) = run.usbdom.get(&(path.to_string(), op.to_string())) else {
            continue;
        };
        let ms = |k: &str| s.get(k).copied().unwrap_or(0.0) / 1000.0 / per_op_mib;
        let steps = ["usb_us", "answer_us", "xenstore_us", "log_us", "serve_us"];
        let other = ms("busy_us") - steps.iter().map(|k| ms(k)).sum::<f64>();
        println!(
            "  {:<7} {:<5} {:>7.1} {:>7.1} {:>7.1} {:>8.1} {:>7.1} {:>7.1} {:>7.1}",
            path,
            op,
            ms("busy_us"),
            ms("usb_us"),
            ms("answer_us"),
            ms("xenstore_us"),
            ms("log_us"),
            ms("serve_us"),
            other
        );
    }
}

/// What one CPU copy per byte costs each path's guest (`op=copy`: reading a file in memory),
/// and the most of native a path with one such copy in series with the device can reach:
/// per MiB it takes native's time plus the copy's, `copy / (native + copy)` of native's rate.
fn copy_bound(run: &Run, n: u32) {
    let copy = |path: &str| {
        run.rates
            .contains_key(&(path.to_string(), "copy".to_string()))
            .then(|| median(run, path, "copy"))
    };
    for path in PATHS {
        if let Some(c) = copy(path) {
            println!(
                "bench run={n} path={path} copy_mb_s={c:.2} copy_ms_per_mib={:.2}",
                1.048_576e3 / c
            );
        }
    }
    let Some(c) = copy("pvusb") else {
        return;
    };
    for op in OPS {
        let native = median(run, "native", op);
        let bound = c / (native + c);
        println!(
            "bench run={n} op={op} one_copy_bound_vs_native={bound:.3} pvusb_vs_native={:.3} pvusb_vs_one_copy_bound={:.3}",
            median(run, "pvusb", op) / native,
            median(run, "pvusb", op) / native / bound
        );
    }
}

fn usage() -> ! {
    eprintln!("usage: cargo xtask bench e2e [--mib N] [--runs N]");
    std::process::exit(2)
}
