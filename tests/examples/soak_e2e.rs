//! `cargo xtask soak [--usb none|usbdom|qusb] [--type pvh|pv] [--seconds N] [--runs N] [--vcpus N]`: is the
//! nested machine itself sound? In each boot (tests/e2e/soak.sh) two guests of one type start
//! short-lived processes for N seconds while one of them reads the stick through usbdom,
//! through QEMU's `qusb` in dom0, or not at all; dom0 starts processes too. Prints, per
//! run, how many processes each domain started and how many crashed, and Xen's triple
//! faults: the control experiment for the end-to-end test's failures (issue 13). Figures,
//! not a test.

use std::time::Duration;

use usbdom_tests::{run_qemu, NestedXen};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (mut usb, mut gtype) = ("none".to_string(), "pvh".to_string());
    let (mut seconds, mut runs, mut vcpus) = (60u32, 1u32, 1u32);
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        let value = it.next().unwrap_or_else(|| usage());
        match flag.as_str() {
            "--usb" if ["none", "usbdom", "qusb"].contains(&value.as_str()) => usb = value.clone(),
            "--type" if ["pvh", "pv"].contains(&value.as_str()) => gtype = value.clone(),
            "--seconds" => seconds = value.parse().unwrap_or_else(|_| usage()),
            "--runs" => runs = value.parse().unwrap_or_else(|_| usage()),
            "--vcpus" => vcpus = value.parse().unwrap_or_else(|_| usage()),
            _ => usage(),
        }
    }
    let machine = NestedXen::from_env();
    let (mut execs, mut crashes, mut triples) = (0u64, 0u64, 0u64);
    for run in 1..=runs {
        let mut qemu = machine.args(
            &format!("usbdom.mode=soak usbdom.soak_usb={usb} usbdom.soak_type={gtype} usbdom.soak_seconds={seconds} usbdom.soak_vcpus={vcpus}"),
            None,
        );
        qemu.extend(["-serial".into(), "stdio".into()]);
        let out = run_qemu(&qemu, Duration::from_secs(u64::from(seconds) + 600), |l| {
            l.starts_with("E2E: done")
        });
        let mut passed = false;
        for (_, l) in &out.lines {
            if let Some(m) = l.strip_prefix("E2E: ") {
                let shown = ["soak ", "result=", "environment_retry", "xl_create_failed"];
                if shown.iter().any(|p| m.starts_with(p)) {
                    println!("soak run={run} {m}");
                }
                passed |= m.starts_with("result=pass");
                if let Some(rest) = m.strip_prefix("soak domain=") {
                    let num = |k: &str| -> u64 {
                        rest.split_whitespace()
                            .find_map(|w| w.strip_prefix(k))
                            .and_then(|v| v.parse().ok())
                            .unwrap_or(0)
                    };
                    execs += num("execs=");
                    crashes += num("crashes=");
                }
                if let Some(t) = m.strip_prefix("soak triple_faults=") {
                    triples += t
                        .split_whitespace()
                        .next()
                        .and_then(|v| v.parse().ok())
                        .unwrap_or(0);
                }
            } else if let Some(c) = l.strip_prefix("E2E-CRASH ") {
                println!("soak run={run} crash: {c}");
            }
        }
        if !passed {
            println!(
                "soak run={run} did not finish{}; its last lines:",
                if out.timed_out { " (time limit)" } else { "" }
            );
            for (t, l) in out.lines.iter().rev().take(30).rev() {
                println!("soak run={run} [{:8.3}] {l}", t.as_secs_f64());
            }
        }
    }
    println!("soak usb={usb} type={gtype} vcpus={vcpus} seconds={seconds} runs={runs} execs={execs} crashes={crashes} triple_faults={triples}");
}

fn usage() -> ! {
    eprintln!(
        "usage: cargo xtask soak [--usb none|usbdom|qusb] [--type pvh|pv] [--seconds N] [--runs N] [--vcpus N]"
    );
    std::process::exit(2)
}
