//! `cargo xtask …`: the project's two README commands.
//!
//! - `cargo xtask test`: installs what the checks need on a Debian machine (apt packages, the
//!   rustup target and components), then runs everything CI checks.
//! - `cargo xtask run`: runs what usbdom can show today (see README).

use std::env;
use std::path::{Path, PathBuf};
use std::process::{exit, Command};

/// Debian packages the tests need, with a file that proves each is installed.
const APT_PACKAGES: &[(&str, &str)] = &[
    // Xen's public headers: the wire ABI test compiles them.
    ("libxen-dev", "/usr/include/xen/io/usbif.h"),
    // The C compiler that compiles them.
    ("gcc", "/usr/bin/gcc"),
];

/// The bare-metal target the unikernel and its no_std crates build for.
const KERNEL_TARGET: &str = "x86_64-unknown-none";

fn main() {
    let args: Vec<String> = env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("test") => test(),
        Some("run") => run(),
        Some("install") => install(),
        _ => {
            eprintln!(
                "usage: cargo xtask <command>\n\n\
                 \x20 test     install prerequisites, then fmt, clippy, every test, no_std build\n\
                 \x20 run      run the in-process demo (xen::sim)\n\
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
            "--features",
            "sim",
            "--target",
            KERNEL_TARGET,
        ]),
    )?;
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
            "--",
            "--skip",
            "abi_matches_xen_headers",
        ]),
    )?;
    eprintln!("xtask: all checks passed");
    Ok(())
}

fn run() -> Result {
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
