//! `cargo xtask …`: the project's two README commands.
//!
//! - `cargo xtask test`: installs what the checks need on a Debian machine (apt packages, the
//!   rustup target and components), then runs everything CI checks.
//! - `cargo xtask image`: builds the driver-domain kernels, `target/usbdom.elf` (what a
//!   driver domain runs) and `target/usbdom-demo.elf` (with demo mode and the self-tests).
//! - `cargo xtask run [-- WORDS]`: builds the image and boots it in QEMU with USB devices,
//!   streaming the serial log; extra words go to the kernel command line. Without a
//!   hypervisor the kernel runs its demo (simulated VMs served through usbback).
//! - `cargo xtask run --xen`: Xen inside QEMU with dom0, usbdom and two Linux guests using
//!   USB devices through it, then a shell on dom0's console.
//! - `cargo xtask deb`: the Debian packages (`usbdom` for dom0, `usbdom-frontend-dkms` for
//!   guests) in `target/deb/`, checked by lintian (xtask/src/deb.rs).
//! - `cargo xtask demo`: the PVUSB connection played out on `xen::sim`.
//! - `cargo xtask e2e`: the end-to-end run: Xen 4.17 inside QEMU, dom0, usbdom, two guests.
//! - `cargo xtask bench backend|qemu|e2e`: figures, not tests: usbback's CPU time per URB on
//!   `xen::sim`; the ring path against the xHCI driver alone, in one demo-mode boot; usbdom
//!   against qusb and passthrough on Xen; `bench keys`: a keyboard's latency into one guest
//!   while another writes a stick flat out, against the same with it idle.
//! - `cargo xtask soak`: the nested machine's own soundness: crashed processes and triple
//!   faults per domain with usbdom, qusb or no USB traffic (tests/examples/soak_e2e.rs).
//! - `cargo xtask devices`: the device table: QEMU's class devices through usbdom to a Linux
//!   guest's stock drivers, checked from the host (tests/examples/devices_e2e.rs); also part
//!   of `cargo xtask test`.

use std::env;
use std::path::{Path, PathBuf};
use std::process::{exit, Command};

mod deb;
mod nested_xen;
use nested_xen::{e2e, e2e_command, nested_xen_program};

/// Debian packages the tests need, with a file that proves each is installed.
const APT_PACKAGES: &[(&str, &str)] = &[
    // Xen's public headers: the wire ABI test compiles them.
    ("libxen-dev", "/usr/include/xen/io/usbif.h"),
    // The C compiler that compiles them.
    ("gcc", "/usr/bin/gcc"),
    // objcopy makes the ELF32 image Xen's device model accepts.
    ("binutils", "/usr/bin/objcopy"),
    // QEMU for the boot tests and `run`; bookworm's 7.2 is also what nested Xen needs.
    ("qemu-system-x86", "/usr/bin/qemu-system-x86_64"),
    // `cargo xtask deb`: usbctl's library dependencies, and the packages' check.
    ("dpkg-dev", "/usr/bin/dpkg-shlibdeps"),
    ("lintian", "/usr/bin/lintian"),
    // `systemd-analyze verify` reads the package's unit as systemd will.
    ("systemd", "/usr/bin/systemd-analyze"),
];

/// The bare-metal target the unikernel and its no_std crates build for.
const KERNEL_TARGET: &str = "x86_64-unknown-none";

fn main() {
    let args: Vec<String> = env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("test") => test(),
        Some("run") => run(&args[1..]),
        Some("image") => image().map(|_| ()),
        Some("demo") => demo(),
        Some("e2e") => e2e_command(&args[1..]),
        Some("bench") => bench(&args[1..]),
        Some("soak") => nested_xen_program("soak_e2e", "soak-stick.img", 64, &args[1..]),
        Some("devices") => nested_xen_program("devices_e2e", "devices-stick.img", 64, &args[1..]),
        Some("deb") => deb::deb_command(),
        Some("install") => install(),
        _ => {
            eprintln!(
                "usage: cargo xtask <command>\n\n\
                 \x20 test     install prerequisites, then fmt, clippy, the image, every test\n\
                 \x20 image    build the driver-domain kernels: target/usbdom.elf and usbdom-demo.elf\n\
                 \x20 run      boot it in QEMU with USB devices (extra words: `run -- loglevel=debug`);\n\
                 \x20          `run --xen`: Xen, dom0, usbdom and two guests, then dom0's shell\n\
                 \x20 demo     the PVUSB connection played out on xen::sim\n\
                 \x20 e2e      the end-to-end run on real Xen inside QEMU;\n\
                 \x20          `e2e --repeat N`: N runs in a row, and how many passed\n\
                 \x20 bench    `bench backend`: usbback's CPU time per URB on xen::sim;\n\
                 \x20          `bench qemu [--datapath copy|map] [--in-flight N]`: the ring path against the driver alone, in QEMU;\n\
                 \x20          `bench e2e [--mib N] [--runs N]`: usbdom vs qusb vs passthrough on Xen;\n\
                 \x20          `bench keys [--presses N] [--load-hcd H] [--cpus N]`: key latency on Xen, another guest idle and writing\n\
                 \x20 soak     crashes in the nested machine with and without usbdom's traffic:\n\
                 \x20          `soak [--usb none|usbdom|qusb] [--type pvh|pv] [--seconds N] [--runs N]`\n\
                 \x20 devices  the device table on real Xen: QEMU's class devices through usbdom to\n\
                 \x20          guests' stock drivers, each checked from the host\n\
                 \x20 deb      the Debian packages usbdom and usbdom-frontend-dkms, checked by lintian\n\
                 \x20 install  only install prerequisites"
            );
            exit(2);
        }
    };
    if let Err(e) = result {
        eprintln!("xtask: {e}");
        exit(1);
    }
}

type Result<T = ()> = std::result::Result<T, String>;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn cargo() -> Command {
    let mut c = Command::new(env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    c.current_dir(root());
    c
}

fn step(what: &str, cmd: &mut Command) -> Result {
    eprintln!("xtask: {what}: {cmd:?}");
    let status = cmd
        .status()
        .map_err(|e| format!("{what}: cannot start {cmd:?}: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("{what} failed ({status})"))
    }
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

fn install() -> Result {
    install_apt()?;
    install_rust()
}

fn install_apt() -> Result {
    let missing: Vec<&str> = APT_PACKAGES
        .iter()
        .filter(|(_, f)| !Path::new(f).exists())
        .map(|(p, _)| *p)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    let list = missing.join(" ");
    if !is_root() {
        return Err(format!(
            "missing Debian packages: run `sudo apt-get update && sudo apt-get install -y {list}`"
        ));
    }
    step(
        "apt-get update",
        Command::new("apt-get").arg("update").arg("-q"),
    )?;
    step(
        "apt-get install",
        Command::new("apt-get")
            .args(["install", "-y", "-q", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
}

fn install_rust() -> Result {
    // rust-toolchain.toml names the toolchain; these make sure its parts are present even where
    // rustup does not install them by itself (RUSTUP_AUTO_INSTALL=0).
    let installed = Command::new("rustup")
        .args(["target", "list", "--installed"])
        .current_dir(root())
        .output()
        .map_err(|e| format!("rustup not found ({e}): install it from your distribution"))?;
    if !String::from_utf8_lossy(&installed.stdout)
        .lines()
        .any(|l| l.trim() == KERNEL_TARGET)
    {
        step(
            "rustup target add",
            Command::new("rustup")
                .args(["target", "add", KERNEL_TARGET])
                .current_dir(root()),
        )?;
    }
    let components = Command::new("rustup")
        .args(["component", "list", "--installed"])
        .current_dir(root())
        .output()
        .map_err(|e| format!("rustup: {e}"))?;
    let have = String::from_utf8_lossy(&components.stdout).into_owned();
    for comp in ["rustfmt", "clippy"] {
        if !have.lines().any(|l| l.starts_with(comp)) {
            step(
                "rustup component add",
                Command::new("rustup")
                    .args(["component", "add", comp])
                    .current_dir(root()),
            )?;
        }
    }
    Ok(())
}

fn test() -> Result {
    install()?;
    step("format", cargo().args(["fmt", "--all", "--check"]))?;
    step(
        "clippy",
        cargo().args([
            "clippy",
            "--workspace",
            "--all-targets",
            "--all-features",
            "--",
            "-D",
            "warnings",
        ]),
    )?;
    step(
        "no_std build",
        cargo().args([
            "build",
            "-p",
            "xen",
            "-p",
            "testkit",
            "--features",
            "xen/sim",
            "--target",
            KERNEL_TARGET,
        ]),
    )?;
    for features in [&[][..], &["--features", "demo"]] {
        step(
            "kernel clippy",
            cargo()
                .args(["clippy", "-p", "driver-domain", "--target", KERNEL_TARGET])
                .args(features)
                .args(["--", "-D", "warnings"]),
        )?;
    }
    // The boot tests boot this image.
    image()?;
    // The wire-ABI check runs on its own, uncaptured, so its summary line shows in the log.
    step(
        "wire ABI against Xen's headers",
        cargo().args([
            "test",
            "-p",
            "xen",
            "--test",
            "abi_matches_xen_headers",
            "--",
            "--nocapture",
        ]),
    )?;
    step(
        "tests",
        cargo().args([
            "test",
            "--workspace",
            "--all-features",
            "--exclude",
            "usbdom-tests",
            "--",
            "--skip",
            "abi_matches_xen_headers",
        ]),
    )?;
    // The boot tests run uncaptured too: they print the measured time to event=ready.
    step(
        "boot tests",
        cargo().args([
            "test",
            "-p",
            "usbdom-tests",
            "--test",
            "boot",
            "--",
            "--nocapture",
        ]),
    )?;
    // The end-to-end run on real Xen (minutes; its artefacts are cached between runs).
    e2e()?;
    // The device table on the same machine (docs/tested-devices.md): every class device
    // through usbdom to a guest's drivers, checked from the host (about 4 minutes).
    nested_xen_program("devices_e2e", "devices-stick.img", 64, &[])?;
    eprintln!("xtask: all checks passed");
    Ok(())
}

/// Benchmarks (commands that print their figures, not tests).
fn bench(args: &[String]) -> Result {
    match args.first().map(String::as_str) {
        Some("backend") => step(
            "bench backend",
            cargo().args([
                "run",
                "--quiet",
                "--release",
                "-p",
                "usbback",
                "--example",
                "bench_backend",
            ]),
        ),
        Some("e2e") => {
            // The guests write after the first 64 MiB (the end-to-end test's data).
            let mut mib = 16;
            for pair in args[1..].chunks(2) {
                match pair {
                    [flag, n] if flag == "--mib" => {
                        mib = n
                            .parse::<usize>()
                            .map_err(|_| format!("bench e2e: --mib {n}: not a number"))?
                    }
                    [flag, _] if flag == "--runs" => {}
                    _ => return Err("usage: cargo xtask bench e2e [--mib N] [--runs N]".into()),
                }
            }
            nested_xen_program("bench_e2e", "bench-stick.img", 64 + mib, &args[1..])
        }
        Some("qemu") => bench_qemu(&args[1..]),
        // guest-a writes 16 MiB after the first 64 over and over.
        Some("keys") => nested_xen_program("bench_keys", "keys-stick.img", 80, &args[1..]),
        other => Err(format!(
            "bench: unknown benchmark {other:?}; there are `cargo xtask bench backend`, `cargo xtask bench qemu [--rounds N] [--mib N] [--datapath copy|map] [--in-flight N]`, `cargo xtask bench e2e [--mib N] [--runs N]` and `cargo xtask bench keys [--presses N] [--load-hcd xen-hcd|pvusb-hcd] [--cpus N]`"
        )),
    }
}

/// `cargo xtask bench qemu [--rounds N] [--mib N] [--datapath copy|map] [--in-flight N]`: one demo-mode
/// boot with four sticks
/// (`demo bench=N`): vm1's stick read, then written, N MiB at a time with 16 requests in
/// flight, (a) through the xHCI driver alone and (b) through frontend, ring, usbback and the
/// driver, rounds alternated; then 1, 2 and 4 VMs reading their own sticks at once. Prints
/// the kernel's `event=bench_*` lines and a summary.
fn bench_qemu(args: &[String]) -> Result {
    let mut rounds = 3u32;
    let mut mib = 8u32;
    let mut data_path = "copy";
    let mut in_flight = 16u32;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let value = |v: Option<&String>| -> Result<u32> {
            v.and_then(|v| v.parse().ok())
                .filter(|n| *n >= 1)
                .ok_or_else(|| format!("bench qemu: {a} needs a positive number"))
        };
        match a.as_str() {
            "--rounds" => rounds = value(it.next())?,
            "--mib" => mib = value(it.next())?.min(256),
            // URBs per command on both paths; above 16 the VMs take a multi-page ring.
            "--in-flight" => {
                in_flight = value(it.next())?;
                if !in_flight.is_power_of_two() || !(16..=256).contains(&in_flight) {
                    return Err("bench qemu: --in-flight is 16, 32, 64, 128 or 256".into());
                }
            }
            "--datapath" => {
                data_path = match it.next().map(String::as_str) {
                    Some("copy") => "copy",
                    Some("map") => "map",
                    _ => return Err("bench qemu: --datapath is copy or map".into()),
                }
            }
            other => return Err(format!("bench qemu: unknown argument {other:?}")),
        }
    }
    let image = image()?.demo;
    let dir = root().join("target/bench");
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    // Each stick holds what is read (pseudo-random) and, after it, what is written.
    let size = (2 * mib as usize + 1) << 20;
    let mut qemu = qemu_q35();
    qemu.args([
        "-device",
        "isa-debug-exit,iobase=0xf4,iosize=0x04",
        "-device",
        "qemu-xhci,id=xhci",
    ]);
    let mut assign = Vec::new();
    for n in 1..=4u64 {
        let stick = dir.join(format!("stick{n}.img"));
        let mut bytes = vec![0u8; size];
        pseudo_random(
            &mut bytes[..(mib as usize) << 20],
            0x9e37_79b9_7f4a_7c15 ^ n,
        );
        std::fs::write(&stick, &bytes).map_err(|e| format!("{}: {e}", stick.display()))?;
        qemu.arg("-drive")
            .arg(format!(
                "if=none,id=s{n},file={},format=raw",
                stick.display()
            ))
            .arg("-device")
            .arg(format!("usb-storage,bus=xhci.0,drive=s{n},port={n}"));
        // SuperSpeed sticks on QEMU ports 1..4 are bus 2, ports 1..4.
        assign.push(format!("2-{n}:vm{n}"));
    }
    let cmdline = format!(
        "qemu_exit demo bench={rounds} demo_mib={mib} datapath={data_path} demo_in_flight={in_flight} assign={}",
        assign.join(",")
    );
    qemu.arg("-kernel").arg(&image).arg("-append").arg(&cmdline);
    eprintln!("xtask: bench qemu: {cmdline}");
    let out = Command::new("timeout")
        .arg("600")
        .arg(qemu.get_program())
        .args(qemu.get_args())
        .output()
        .map_err(|e| format!("qemu-system-x86_64: {e}"))?;
    let log = String::from_utf8_lossy(&out.stdout).into_owned();
    let lines: Vec<&str> = log
        .lines()
        .filter(|l| {
            l.contains("event=bench") || l.contains("event=demo_finished") || l.contains("panic")
        })
        .collect();
    for l in &lines {
        println!("{l}");
    }
    let field = |line: &str, key: &str| -> String {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(key)?.strip_prefix('='))
            .unwrap_or("?")
            .to_string()
    };
    println!("summary: rounds={rounds} mib={mib} in_flight={in_flight} datapath={data_path} (a = xhci-driver alone, b = frontend -> ring -> usbback -> xhci-driver)");
    for l in lines.iter().filter(|l| l.contains("event=bench_ratio")) {
        println!(
            "summary: op={} ratio={} (b/a throughput) a_mib_s={} b_mib_s={} ring_full_frontend={} ring_full_backend={}",
            field(l, "op"),
            field(l, "ratio"),
            field(l, "direct_mib_s"),
            field(l, "ring_mib_s"),
            field(l, "ring_full_frontend"),
            field(l, "ring_full_backend")
        );
    }
    // Where the ring rounds' time went, on average (the rest is the main loop waiting for
    // the controller).
    for op in ["read", "write"] {
        let rounds: Vec<&&str> = lines
            .iter()
            .filter(|l| l.contains("event=bench_round path=ring") && field(l, "op") == op)
            .collect();
        let mean = |key: &str| {
            let sum: u64 = rounds
                .iter()
                .filter_map(|l| field(l, key).parse::<u64>().ok())
                .sum();
            sum / rounds.len().max(1) as u64
        };
        println!(
            "summary: op={op} ring_round_us={} of_which usbback_requests_us={} usbback_completions_us={} frontends_us={}",
            mean("us"),
            mean("usbback_requests_us"),
            mean("usbback_completions_us"),
            mean("frontends_us")
        );
    }
    for l in lines.iter().filter(|l| l.contains("event=bench_vms")) {
        println!(
            "summary: vms={} aggregate_mib_s={}",
            field(l, "vms"),
            field(l, "aggregate_mib_s")
        );
    }
    // isa-debug-exit's success value: QEMU exits with 33.
    match out.status.code() {
        Some(33) if lines.iter().any(|l| l.contains("event=bench_done")) => Ok(()),
        code => Err(format!(
            "bench qemu: QEMU ended with {code:?} before event=bench_done; the log:\n{log}"
        )),
    }
}

fn demo() -> Result {
    step(
        "demo",
        cargo().args([
            "run",
            "--quiet",
            "-p",
            "xen",
            "--features",
            "sim",
            "--example",
            "sim_demo",
        ]),
    )
}

/// The two kernel images.
struct Images {
    /// `target/usbdom.elf`: what a driver domain runs (no demo mode, no self-tests).
    production: PathBuf,
    /// `target/usbdom-demo.elf`: the same with the `demo` feature (demo mode with simulated
    /// VMs, the `usbtest=` self-tests): what `run` and the boot tests boot.
    demo: PathBuf,
}

/// Builds both kernels and writes them as `target/usbdom.elf` and `target/usbdom-demo.elf`:
/// stripped, as ELF32 (`objcopy -O elf32-i386`), because Xen's device model
/// (`qemu-system-i386`) refuses a 64-bit ELF; the 64-bit code inside is unchanged and the
/// same file boots under plain QEMU and Xen PVH.
fn image() -> Result<Images> {
    install_rust()?;
    Ok(Images {
        production: kernel_image(&[], "usbdom.elf")?,
        demo: kernel_image(&["--features", "demo"], "usbdom-demo.elf")?,
    })
}

/// Builds the kernel with `features` and writes it to `target/<name>`.
fn kernel_image(features: &[&str], name: &str) -> Result<PathBuf> {
    step(
        "kernel build",
        cargo()
            .args([
                "build",
                "--profile",
                "kernel",
                "-p",
                "driver-domain",
                "--bin",
                "usbdom",
                "--target",
                KERNEL_TARGET,
            ])
            .args(features),
    )?;
    let built = root()
        .join("target")
        .join(KERNEL_TARGET)
        .join("kernel/usbdom");
    let out = root().join("target").join(name);
    step(
        "objcopy",
        Command::new("objcopy")
            .args(["--strip-all", "-O", "elf32-i386"])
            .arg(&built)
            .arg(&out),
    )?;
    let size = std::fs::metadata(&out)
        .map_err(|e| format!("{}: {e}", out.display()))?
        .len();
    eprintln!("xtask: image {} ({size} bytes)", out.display());
    if size >= 1 << 20 {
        return Err(format!("{name} is {size} bytes: it must stay under 1 MiB"));
    }
    Ok(out)
}

/// QEMU on q35 with 256 MiB, no display or default devices, the serial port on stdio: the
/// machine `run` and `bench qemu` boot the image on.
fn qemu_q35() -> Command {
    let mut qemu = Command::new("qemu-system-x86_64");
    qemu.args([
        "-machine",
        "q35",
        "-m",
        "256",
        "-display",
        "none",
        "-nodefaults",
        "-no-reboot",
        "-serial",
        "stdio",
    ]);
    qemu
}

/// Fills `bytes` with a xorshift64 stream from `seed` (8 bytes at a time; `bytes.len()` a
/// multiple of 8): stick contents whose hash a guest must reproduce.
fn pseudo_random(bytes: &mut [u8], seed: u64) {
    let mut x = seed;
    for chunk in bytes.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        chunk.copy_from_slice(&x.to_le_bytes());
    }
}

/// The demo's device assignment in `cargo xtask run`.
const DEFAULT_ASSIGN: &str = "assign=2-1:vm1,1-2:vm2";

/// Boots the image on q35 with a USB stick, a keyboard and a hub; the serial log streams to
/// the terminal. Ctrl-C reaches QEMU, which exits.
fn run(extra: &[String]) -> Result {
    if extra.first().map(String::as_str) == Some("--xen") {
        eprintln!("xtask: booting Xen with dom0, usbdom and two guests in QEMU (Ctrl-C to stop)");
        return nested_xen_program("xen_shell", "stick.img", 64, &[]);
    }
    install()?;
    let image = image()?.demo;
    let stick = root().join("target/usbstick.img");
    if !stick.exists() {
        let f = std::fs::File::create(&stick).map_err(|e| format!("{}: {e}", stick.display()))?;
        f.set_len(64 << 20)
            .map_err(|e| format!("{}: {e}", stick.display()))?;
    }
    let mut words: Vec<&str> = extra
        .iter()
        .map(String::as_str)
        .filter(|w| *w != "--")
        .collect();
    // Without a hypervisor usbdom runs its demo: the stick (SuperSpeed, bus 2 port 1) goes to
    // the simulated VM vm1, the keyboard (QEMU port 2, Linux's 1-2) to vm2.
    if !words.iter().any(|w| w.starts_with("assign=")) {
        words.push(DEFAULT_ASSIGN);
    }
    eprintln!("xtask: booting usbdom in QEMU (Ctrl-C to stop)");
    let mut qemu = qemu_q35();
    qemu.args(["-device", "qemu-xhci,id=xhci,addr=0x5"])
        .arg("-drive")
        .arg(format!(
            "if=none,id=stick,file={},format=raw",
            stick.display()
        ))
        .args(["-device", "usb-storage,bus=xhci.0,drive=stick,port=1"])
        .args(["-device", "usb-kbd,bus=xhci.0,port=2"])
        .args(["-device", "usb-hub,bus=xhci.0,port=3"])
        .args(["-device", "usb-mouse,bus=xhci.0,port=3.1"])
        .arg("-kernel")
        .arg(&image)
        .arg("-append")
        .arg(words.join(" "));
    let status = qemu
        .status()
        .map_err(|e| format!("qemu-system-x86_64: {e}"))?;
    // Ctrl-C ends QEMU by SIGINT: that is the normal way out.
    if status.success() || status.code().is_none() {
        Ok(())
    } else {
        Err(format!("QEMU exited with {status}"))
    }
}
