//! The end-to-end machine: Xen 4.17 with a Debian dom0 inside QEMU (TCG). Its artefacts
//! (Xen, the kernel, dom0's root, `xen-hcd.ko`) are prepared and cached here; `cargo xtask
//! e2e` runs the scenario once or `--repeat N` times, and the tests crate's programs
//! (`bench e2e`, `soak`, `run --xen`) boot the same machine.

use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::{cargo, install, pseudo_random, root, step, Result};

/// Where the end-to-end artefacts are cached between runs (they take minutes to build).
fn e2e_cache() -> PathBuf {
    let base = env::var_os("USBDOM_CACHE")
        .map(PathBuf::from)
        .or_else(|| env::var_os("XDG_CACHE_HOME").map(|d| PathBuf::from(d).join("usbdom")))
        .or_else(|| env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/usbdom")))
        .unwrap_or_else(|| root().join("target/cache"));
    base.join("e2e")
}

fn timed<T>(phase: &str, f: impl FnOnce() -> Result<T>) -> Result<T> {
    let start = std::time::Instant::now();
    let r = f();
    eprintln!(
        "xtask: e2e phase={phase} seconds={:.1}",
        start.elapsed().as_secs_f64()
    );
    r
}

/// The QEMU that runs nested Xen. QEMU 9.1 to 10.0 mis-decode `mov %crN` in nested guests
/// (every nested PVH/HVM guest dies), so on such a machine bookworm's 7.2 packages are
/// fetched with apt and run unpacked from the cache. Returns the environment for the test.
fn qemu_for_nested_xen(cache: &Path) -> Result<Vec<(String, PathBuf)>> {
    let out = Command::new("qemu-system-x86_64")
        .arg("--version")
        .output()
        .map_err(|e| format!("qemu-system-x86_64: {e}"))?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let version: Vec<u32> = text
        .split_whitespace()
        .nth(3)
        .unwrap_or("")
        .split(['.', '('])
        .take(2)
        .filter_map(|n| n.parse().ok())
        .collect();
    let broken = matches!(version.as_slice(), [9, minor] if *minor >= 1)
        || matches!(version.as_slice(), [10, 0]);
    let forced = env::var_os("USBDOM_E2E_QEMU_72").is_some();
    if !broken && !forced {
        return Ok(Vec::new());
    }
    let dir = cache.join("qemu-7.2");
    let installed = version
        .iter()
        .map(u32::to_string)
        .collect::<Vec<_>>()
        .join(".");
    let why = if forced {
        format!("USBDOM_E2E_QEMU_72 is set (installed: QEMU {installed})")
    } else {
        format!("the installed QEMU {installed} cannot run nested Xen guests")
    };
    eprintln!(
        "xtask: e2e: {why}: using bookworm's QEMU 7.2, unpacked in {}",
        dir.display()
    );
    let bin = dir.join("usr/bin/qemu-system-x86_64");
    if !bin.exists() {
        let debs = cache.join("qemu-7.2-debs");
        std::fs::create_dir_all(&debs).map_err(|e| format!("{}: {e}", debs.display()))?;
        for pkg in [
            "qemu-system-x86",
            "qemu-system-common",
            "qemu-system-data",
            "seabios",
        ] {
            let madison = Command::new("apt-cache")
                .args(["madison", pkg])
                .output()
                .map_err(|e| format!("apt-cache: {e}"))?;
            let listing = String::from_utf8_lossy(&madison.stdout).into_owned();
            let wanted = listing
                .lines()
                .filter_map(|l| l.split('|').nth(1).map(str::trim))
                .find(|v| pkg == "seabios" || v.starts_with("1:7.2"))
                .ok_or_else(|| {
                    format!("apt has no 7.2 version of {pkg}: is a bookworm source configured?")
                })?
                .to_string();
            step(
                "apt-get download",
                Command::new("apt-get")
                    .args(["download", "-q", &format!("{pkg}={wanted}")])
                    .current_dir(&debs),
            )?;
        }
        let entries = std::fs::read_dir(&debs).map_err(|e| format!("{}: {e}", debs.display()))?;
        for deb in entries.flatten() {
            step(
                "dpkg -x",
                Command::new("dpkg").arg("-x").arg(deb.path()).arg(&dir),
            )?;
        }
    }
    Ok(vec![
        ("USBDOM_QEMU".into(), bin),
        ("USBDOM_QEMU_DATADIR".into(), dir.join("usr/share/qemu")),
        (
            "QEMU_MODULE_DIR".into(),
            dir.join("usr/lib/x86_64-linux-gnu/qemu"),
        ),
    ])
}

/// Builds (or takes from the cache) Xen, the kernels, dom0's root and the guest's initramfs,
/// packs this run's dom0 initramfs, and writes the stick's image `stick` of `mib` MiB whose
/// first 16 MiB are a pseudo-random pattern (the guest's hash of them must match), the rest
/// zero. Returns the environment that `usbdom_tests::NestedXen` and `run_qemu` read.
fn e2e_prepare(stick: &str, mib: usize) -> Result<Vec<(String, PathBuf)>> {
    install()?;
    // dom0 installs the usbdom package; the guests' pvusb-hcd is DKMS's build of the other.
    let debs = timed("packages", crate::deb::build)?;
    let cache = e2e_cache();
    let here = root().join("tests/e2e");
    timed("artefacts", || {
        step(
            "prepare",
            Command::new(here.join("prepare.sh"))
                .arg(&cache)
                .env("FRONTEND_DKMS_DEB", &debs.frontend_dkms),
        )
    })?;
    let out = root().join("target/e2e");
    std::fs::create_dir_all(&out).map_err(|e| format!("{}: {e}", out.display()))?;
    let initrd = out.join("dom0.cpio");
    // The guest's own programs: the hostile frontend of an attacking guest, the key
    // benchmark's keyprobe and the device table's ccidprobe. Static, since the guest's initramfs has no C library; for the
    // host's own target, so the flags reach no build script.
    let guest_bins = timed("guest programs", || {
        step(
            "guest programs build",
            cargo()
                .args(["build", "--release", "--target", "x86_64-unknown-linux-gnu"])
                .args(["-p", "usbattack", "--bin", "usbattack"])
                .args([
                    "-p",
                    "guest-probes",
                    "--bin",
                    "keyprobe",
                    "--bin",
                    "ccidprobe",
                ])
                .env("RUSTFLAGS", "-C target-feature=+crt-static"),
        )?;
        Ok(root().join("target/x86_64-unknown-linux-gnu/release"))
    })?;
    timed("pack", || {
        step(
            "pack",
            Command::new(here.join("pack.sh"))
                .arg(&cache)
                .arg(&debs.usbdom)
                .arg(&initrd)
                .env("USBATTACK", guest_bins.join("usbattack"))
                .env("KEYPROBE", guest_bins.join("keyprobe"))
                .env("CCIDPROBE", guest_bins.join("ccidprobe")),
        )
    })?;
    let stick = out.join(stick);
    write_stick(&stick, mib)?;
    let mut env = qemu_for_nested_xen(&cache)?;
    env.extend([
        ("USBDOM_E2E_XEN".into(), cache.join("xen.elf")),
        ("USBDOM_E2E_KERNEL".into(), cache.join("vmlinuz")),
        ("USBDOM_E2E_INITRD".into(), initrd),
        ("USBDOM_E2E_STICK".into(), stick),
    ]);
    Ok(env)
}

/// Writes the stick's image: `mib` MiB whose first 16 MiB are a pseudo-random pattern (the
/// guest's hash of them must match), the rest zero.
fn write_stick(stick: &Path, mib: usize) -> Result {
    let mut bytes = vec![0u8; mib << 20];
    pseudo_random(&mut bytes[..16 << 20], 0x2545_f491_4f6c_dd1d);
    std::fs::write(stick, &bytes).map_err(|e| format!("{}: {e}", stick.display()))
}

/// The end-to-end test on real Xen (`tests/tests/e2e.rs`).
pub(crate) fn e2e() -> Result {
    let env = e2e_prepare("stick.img", 64)?;
    timed("run", || step("end-to-end test", &mut e2e_test(&env)))
}

fn e2e_test(env: &[(String, PathBuf)]) -> Command {
    let mut c = cargo();
    c.envs(env.iter().map(|(k, v)| (k, v))).args([
        "test",
        "-p",
        "usbdom-tests",
        "--test",
        "e2e",
        "--",
        "--ignored",
        "--nocapture",
    ]);
    c
}

/// `cargo xtask e2e [--repeat N]`.
pub(crate) fn e2e_command(args: &[String]) -> Result {
    match args {
        [] => e2e(),
        [flag, n] if flag == "--repeat" => {
            let n: u32 = n
                .parse()
                .ok()
                .filter(|n| *n >= 1)
                .ok_or_else(|| format!("e2e --repeat {n}: not a positive number"))?;
            e2e_repeat(n)
        }
        _ => Err("usage: cargo xtask e2e [--repeat N]".into()),
    }
}

/// Runs the end-to-end scenario `n` times in a row (a flaky run is a bug: this is how one
/// is found), each on a fresh stick image, its whole output kept in
/// `target/e2e/repeat-<k>.log`; prints one line per run and how many passed.
fn e2e_repeat(n: u32) -> Result {
    let mut passed = 0;
    let mut lines = Vec::new();
    // One image for all runs: what is repeated is the run, not the build.
    let env = e2e_prepare("stick.img", 64)?;
    for k in 1..=n {
        // A fresh stick each time: the scenario writes to it.
        if let Some((_, stick)) = env.iter().find(|(k, _)| k == "USBDOM_E2E_STICK") {
            write_stick(stick, 64)?;
        }
        let log = root().join(format!("target/e2e/repeat-{k}.log"));
        let start = std::time::Instant::now();
        let out = e2e_test(&env)
            .output()
            .map_err(|e| format!("end-to-end test: {e}"))?;
        let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
        text.push_str(&String::from_utf8_lossy(&out.stderr));
        std::fs::write(&log, &text).map_err(|e| format!("{}: {e}", log.display()))?;
        let ok = out.status.success();
        passed += u32::from(ok);
        // The scenario's own verdict, else the first failed assertion.
        let reason = text
            .lines()
            .find_map(|l| l.split("result=fail reason=").nth(1))
            .or_else(|| {
                text.lines()
                    .skip_while(|l| !l.contains("panicked at"))
                    .nth(1)
            })
            .unwrap_or("-")
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ");
        let line = format!(
            "xtask: e2e run={k} result={} seconds={:.0} log={}{}",
            if ok { "pass" } else { "fail" },
            start.elapsed().as_secs_f64(),
            log.display(),
            if ok {
                String::new()
            } else {
                format!(" reason={reason}")
            }
        );
        eprintln!("{line}");
        lines.push(line);
    }
    eprintln!("xtask: e2e repeat passed={passed} of={n}");
    for l in &lines {
        println!("{l}");
    }
    if passed == n {
        Ok(())
    } else {
        Err(format!("{} of {n} end-to-end runs failed", n - passed))
    }
}

/// One of the tests crate's programs that boot the nested Xen machine
/// (`tests/examples/`), with the artefacts prepared and a stick of `mib` MiB.
pub(crate) fn nested_xen_program(
    example: &str,
    stick: &str,
    mib: usize,
    args: &[String],
) -> Result {
    let env = e2e_prepare(stick, mib)?;
    step(
        example,
        cargo()
            .envs(env.iter().map(|(k, v)| (k, v)))
            .args([
                "run",
                "--quiet",
                "-p",
                "usbdom-tests",
                "--example",
                example,
                "--",
            ])
            .args(args),
    )
}
