//! `cargo xtask bench e2e [--mib N]`: on real Xen inside QEMU, in one boot of the outer
//! machine, a Linux guest reads and writes the same stick with `dd` (direct I/O, 1 MiB blocks,
//! N MiB, three rounds each) three ways — (a) through usbdom, (b) through QEMU's `qusb` PVUSB
//! backend in dom0, (c) in an HVM guest with the controller passed through ("native", as in
//! the PVUSB 2009 table) — and prints a/c, b/c and a/b for read and write. dom0's side is
//! `tests/e2e/bench.sh`. A command that prints figures, not a test: nothing here is timed
//! against a threshold.

use std::collections::BTreeMap;
use std::time::Duration;

use usbdom_tests::{field, run_qemu, NestedXen};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mib: u32 = match args.as_slice() {
        [] => 16,
        [flag, n] if flag == "--mib" => n.parse().unwrap_or_else(|_| usage()),
        _ => usage(),
    };
    let machine = NestedXen::from_env();
    let mut qemu = machine.args(&format!("usbdom.mode=bench usbdom.mib={mib}"), None);
    qemu.extend(["-serial".into(), "stdio".into()]);
    eprintln!("bench e2e: {mib} MiB per round; qusb, then usbdom, then native (about 10 minutes)");
    let run = run_qemu(&qemu, Duration::from_secs(60 * 60), |l| {
        if let Some(mark) = l.strip_prefix("E2E: ") {
            eprintln!("bench e2e: {mark}");
        }
        l.starts_with("E2E: done")
    });
    let marks: Vec<&str> = run
        .lines
        .iter()
        .filter_map(|(_, l)| l.strip_prefix("E2E: "))
        .collect();
    if !marks.iter().any(|l| l.starts_with("result=pass")) {
        for (_, l) in &run.lines {
            if l.starts_with("LOG ") || l.starts_with("E2E: ") {
                eprintln!("{l}");
            }
        }
        eprintln!(
            "bench e2e: the run failed{}: {}",
            if run.timed_out { " (time limit)" } else { "" },
            marks
                .iter()
                .find(|l| l.starts_with("result=fail"))
                .unwrap_or(&"no result")
        );
        std::process::exit(1);
    }
    // MB/s of each round, by (path, op).
    let mut rates: BTreeMap<(String, String), Vec<f64>> = BTreeMap::new();
    for l in marks.iter().filter_map(|l| l.strip_prefix("bench path=")) {
        let l = format!("path={l}");
        if l.contains(" disk ") {
            // What each guest read: the same stick, by its model, size and clock.
            println!("bench {l}");
            continue;
        }
        let (Some(path), Some(op), Some(bytes), Some(secs)) = (
            field(&l, "path"),
            field(&l, "op"),
            field(&l, "bytes").and_then(|b| b.parse::<f64>().ok()),
            field(&l, "seconds").and_then(|s| s.parse::<f64>().ok()),
        ) else {
            eprintln!("bench e2e: unreadable round: {l}");
            std::process::exit(1);
        };
        rates
            .entry((path.to_string(), op.to_string()))
            .or_default()
            .push(bytes / secs / 1e6);
    }
    if let Some(stats) = marks
        .iter()
        .find_map(|l| l.strip_prefix("bench usbdom_stats "))
    {
        println!("usbdom's counters after its rounds: {stats}");
    }
    // How busy usbdom was during the guest's rounds, and how much of it in hypercalls.
    for l in marks
        .iter()
        .filter_map(|l| l.strip_prefix("bench usbdom_cpu "))
    {
        println!("usbdom's cpu: {l}");
    }
    let median = |path: &str, op: &str| -> f64 {
        let mut v = rates
            .get(&(path.to_string(), op.to_string()))
            .unwrap_or_else(|| panic!("no {op} rounds for {path}"))
            .clone();
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    for ((path, op), v) in &rates {
        let rounds: Vec<String> = v.iter().map(|r| format!("{r:.2}")).collect();
        println!(
            "bench path={path} op={op} mib={mib} rounds_mb_s={} median_mb_s={:.2}",
            rounds.join(","),
            median(path, op)
        );
    }
    for op in ["read", "write"] {
        let (a, b, c) = (
            median("usbdom", op),
            median("qusb", op),
            median("native", op),
        );
        println!(
            "bench op={op} usbdom_vs_native={:.3} qusb_vs_native={:.3} usbdom_vs_qusb={:.3}",
            a / c,
            b / c,
            a / b
        );
    }
}

fn usage() -> ! {
    eprintln!("usage: cargo xtask bench e2e [--mib N]");
    std::process::exit(2)
}
