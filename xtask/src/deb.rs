//! `cargo xtask deb`: the Debian packages, built with `dpkg-deb` from a staged tree and checked
//! with `lintian`.
//!
//! - `usbdom` (dom0): the image in `/usr/lib/usbdom/`, `usbctl` in `/usr/sbin/`, the xl config
//!   in `/etc/xen/usbdom.cfg` (a conffile), usbctl's man page and shell completions (generated
//!   from its clap definitions), and `usbdom.service`.
//! - `usbdom-frontend-dkms` (guests): `pvusb-hcd`'s source in `/usr/src/pvusb-hcd-<version>/`
//!   with its `dkms.conf`; DKMS builds it for each kernel.
//!
//! Why `dpkg-deb` and not debhelper or cargo-deb: the files are built by cargo (the image for
//! a bare-metal target, through objcopy) and by `clap_mangen`; debhelper would need a source
//! package whose `debian/rules` runs that build again inside `dpkg-buildpackage`, and
//! cargo-deb makes one package per crate, not a DKMS package. What debhelper would add is
//! small and written out here: the maintainer scripts (`build/debian/`, in the form
//! `dh_installsystemd` and `dh_dkms` generate), `md5sums`, `conffiles`, compressed docs,
//! `dpkg-shlibdeps` for usbctl's libraries.

use std::path::{Path, PathBuf};
use std::process::Command;

use clap::CommandFactory;

use crate::{cargo, image, root, step, Result};

/// The address the packages name as their maintainer and changelog signer.
const MAINTAINER: &str = "usbdom developers <usbdom@users.noreply.github.com>";
const HOMEPAGE: &str = "https://github.com/usbdom/usbdom";

/// The packages `deb` built.
pub(crate) struct Debs {
    pub usbdom: PathBuf,
    pub frontend_dkms: PathBuf,
}

/// `cargo xtask deb`: builds both packages into `target/deb/`, runs lintian on them (an error
/// fails), prints their paths.
pub(crate) fn deb_command() -> Result {
    let debs = build()?;
    println!("{}", debs.usbdom.display());
    println!("{}", debs.frontend_dkms.display());
    Ok(())
}

/// Builds both packages and checks them with lintian.
pub(crate) fn build() -> Result<Debs> {
    crate::install()?;
    let out = root().join("target/deb");
    let _ = std::fs::remove_dir_all(&out);
    mkdir(&out)?;
    let debs = Debs {
        usbdom: usbdom_package(&out)?,
        frontend_dkms: frontend_package(&out)?,
    };
    lintian(&[&debs.usbdom, &debs.frontend_dkms])?;
    Ok(debs)
}

fn mkdir(dir: &Path) -> Result {
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))
}

/// Copies `from` to `stage/to` with `mode`.
fn install(from: &Path, stage: &Path, to: &str, mode: u32) -> Result {
    let bytes = std::fs::read(from).map_err(|e| format!("{}: {e}", from.display()))?;
    write(stage, to, &bytes, mode)
}

/// Writes `bytes` to `stage/to` with `mode`.
fn write(stage: &Path, to: &str, bytes: &[u8], mode: u32) -> Result {
    use std::os::unix::fs::PermissionsExt;
    let path = stage.join(to.trim_start_matches('/'));
    mkdir(path.parent().expect("a file in a directory"))?;
    std::fs::write(&path, bytes).map_err(|e| format!("{}: {e}", path.display()))?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode))
        .map_err(|e| format!("{}: {e}", path.display()))
}

/// `bytes` through `gzip -9n`, as Debian wants docs and man pages (no name, no time stamp).
fn gzip(bytes: &[u8]) -> Result<Vec<u8>> {
    use std::io::Write;
    let mut child = Command::new("gzip")
        .args(["-9n", "-c"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| format!("gzip: {e}"))?;
    child
        .stdin
        .take()
        .expect("piped")
        .write_all(bytes)
        .map_err(|e| format!("gzip: {e}"))?;
    let out = child.wait_with_output().map_err(|e| format!("gzip: {e}"))?;
    if out.status.success() {
        Ok(out.stdout)
    } else {
        Err("gzip failed".into())
    }
}

fn read(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))
}

/// The `version = "…"` of a Cargo.toml's package.
fn cargo_version(manifest: &Path) -> Result<String> {
    read(manifest)?
        .lines()
        .find_map(|l| l.strip_prefix("version = \"")?.strip_suffix('"'))
        .map(str::to_string)
        .ok_or_else(|| format!("{}: no version", manifest.display()))
}

/// The copyright file and the compressed changelog of `package`.
fn docs(stage: &Path, package: &str, copyright: &str) -> Result {
    let debian = root().join("build/debian");
    install(
        &debian.join(copyright),
        stage,
        &format!("usr/share/doc/{package}/copyright"),
        0o644,
    )?;
    let changelog = gzip(read(&debian.join("changelog"))?.as_bytes())?;
    write(
        stage,
        &format!("usr/share/doc/{package}/changelog.gz"),
        &changelog,
        0o644,
    )
}

/// `DEBIAN/`: the control file from `build/debian/<package>.control` with its fields filled
/// in, the maintainer scripts there are, `md5sums`, `conffiles`; then `dpkg-deb --build`.
fn finish(
    stage: &Path,
    package: &str,
    version: &str,
    arch: &str,
    shlibs: &str,
    conffiles: &[&str],
    out: &Path,
) -> Result<PathBuf> {
    let debian = root().join("build/debian");
    let mut sums = String::new();
    let mut kib = 0u64;
    for file in files(stage)? {
        let rel = file.strip_prefix(stage).expect("under stage");
        let bytes = std::fs::read(&file).map_err(|e| format!("{}: {e}", file.display()))?;
        kib += (bytes.len() as u64).div_ceil(1024);
        let sum = Command::new("md5sum")
            .arg(&file)
            .output()
            .map_err(|e| format!("md5sum: {e}"))?;
        let sum = String::from_utf8_lossy(&sum.stdout);
        let sum = sum.split_whitespace().next().unwrap_or_default();
        if !rel.starts_with("etc") {
            sums.push_str(&format!("{sum}  {}\n", rel.display()));
        }
    }
    let control = read(&debian.join(format!("{package}.control")))?
        .replace("@VERSION@", version)
        .replace("@MAINTAINER@", MAINTAINER)
        .replace("@HOMEPAGE@", HOMEPAGE)
        .replace("@SIZE@", &kib.to_string())
        .replace("@SHLIBS@", shlibs);
    write(stage, "DEBIAN/control", control.as_bytes(), 0o644)?;
    write(stage, "DEBIAN/md5sums", sums.as_bytes(), 0o644)?;
    if !conffiles.is_empty() {
        let list: String = conffiles.iter().map(|c| format!("{c}\n")).collect();
        write(stage, "DEBIAN/conffiles", list.as_bytes(), 0o644)?;
    }
    for script in ["postinst", "prerm", "postrm"] {
        let from = debian.join(format!("{package}.{script}"));
        if from.exists() {
            let text = read(&from)?.replace("@VERSION@", version);
            write(stage, &format!("DEBIAN/{script}"), text.as_bytes(), 0o755)?;
        }
    }
    let deb = out.join(format!("{package}_{version}_{arch}.deb"));
    step(
        &format!("dpkg-deb {package}"),
        Command::new("dpkg-deb")
            .args(["--root-owner-group", "-Zxz", "--build"])
            .arg(stage)
            .arg(&deb),
    )?;
    Ok(deb)
}

/// Every file under `dir` but `DEBIAN/`, sorted.
fn files(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).map_err(|e| format!("{}: {e}", d.display()))? {
            let p = e.map_err(|e| format!("{}: {e}", d.display()))?.path();
            if p.is_dir() {
                if p != dir.join("DEBIAN") {
                    todo.push(p);
                }
            } else {
                out.push(p);
            }
        }
    }
    out.sort();
    Ok(out)
}

/// The `usbdom` package.
fn usbdom_package(out: &Path) -> Result<PathBuf> {
    let image = image()?.production;
    step(
        "usbctl build",
        cargo().args(["build", "--release", "-p", "usbctl"]),
    )?;
    let stage = out.join("usbdom");
    let usbctl = stage.join("usr/sbin/usbctl");
    install(&image, &stage, "usr/lib/usbdom/usbdom.elf", 0o644)?;
    install(
        &root().join("target/release/usbctl"),
        &stage,
        "usr/sbin/usbctl",
        0o755,
    )?;
    // As dh_strip does: the symbols stay in the build tree.
    step(
        "strip usbctl",
        Command::new("strip")
            .args([
                "--remove-section=.comment",
                "--remove-section=.note",
                "--strip-unneeded",
            ])
            .arg(&usbctl),
    )?;
    install(
        &root().join("xen-cfg/usbdom.cfg"),
        &stage,
        "etc/xen/usbdom.cfg",
        0o644,
    )?;
    install(
        &root().join("build/debian/usbdom.service"),
        &stage,
        "lib/systemd/system/usbdom.service",
        0o644,
    )?;
    verify_unit(&stage.join("lib/systemd/system/usbdom.service"))?;
    // usbctl(8), and a page per command, usbctl-attach(8) …, which it lists.
    let mut cli = usbctl::cli::Cli::command();
    cli.build();
    let mut pages = vec![("usbctl".to_string(), cli.clone())];
    for sub in cli.get_subcommands().filter(|s| s.get_name() != "help") {
        let name = format!("usbctl-{}", sub.get_name());
        pages.push((name.clone(), sub.clone().name(name)));
    }
    for (name, command) in pages {
        let mut man = Vec::new();
        clap_mangen::Man::new(command)
            .section("8")
            .manual("usbdom")
            .render(&mut man)
            .map_err(|e| format!("{name}.8: {e}"))?;
        write(
            &stage,
            &format!("usr/share/man/man8/{name}.8.gz"),
            &gzip(&man)?,
            0o644,
        )?;
    }
    for (shell, to) in [
        (
            clap_complete::Shell::Bash,
            "usr/share/bash-completion/completions/usbctl",
        ),
        (
            clap_complete::Shell::Zsh,
            "usr/share/zsh/vendor-completions/_usbctl",
        ),
        (
            clap_complete::Shell::Fish,
            "usr/share/fish/vendor_completions.d/usbctl.fish",
        ),
    ] {
        let mut text = Vec::new();
        clap_complete::generate(shell, &mut cli, "usbctl", &mut text);
        write(&stage, to, &text, 0o644)?;
    }
    install(
        &root().join("build/debian/usbdom.lintian-overrides"),
        &stage,
        "usr/share/lintian/overrides/usbdom",
        0o644,
    )?;
    docs(&stage, "usbdom", "copyright")?;
    let shlibs = shlibs(&usbctl)?;
    let version = cargo_version(&root().join("usbctl/Cargo.toml"))?;
    finish(
        &stage,
        "usbdom",
        &version,
        "amd64",
        &shlibs,
        &["/etc/xen/usbdom.cfg"],
        out,
    )
}

/// What `dpkg-shlibdeps` says `binary` depends on (`libc6 (>= 2.34), …`).
fn shlibs(binary: &Path) -> Result<String> {
    // It wants to be in a source package: a minimal one in a scratch directory.
    let dir = root().join("target/deb/shlibdeps");
    write(
        &dir,
        "debian/control",
        b"Source: usbdom\n\nPackage: usbdom\nArchitecture: any\n",
        0o644,
    )?;
    let out = Command::new("dpkg-shlibdeps")
        .args(["-O", "-e"])
        .arg(binary)
        .current_dir(&dir)
        .output()
        .map_err(|e| format!("dpkg-shlibdeps: {e}"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    let deps = text
        .lines()
        .find_map(|l| l.strip_prefix("shlibs:Depends="))
        .map(str::to_string);
    let _ = std::fs::remove_dir_all(&dir);
    match deps {
        Some(d) if out.status.success() => Ok(d),
        _ => Err(format!(
            "dpkg-shlibdeps found no dependencies of {}: {}",
            binary.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        )),
    }
}

/// The `usbdom-frontend-dkms` package.
fn frontend_package(out: &Path) -> Result<PathBuf> {
    let src = root().join("frontend-linux/pvusb-hcd");
    let conf = read(&src.join("dkms.conf"))?;
    let field = |key: &str| {
        conf.lines()
            .find_map(|l| l.strip_prefix(key)?.strip_prefix("=\"")?.strip_suffix('"'))
            .map(str::to_string)
            .ok_or_else(|| format!("{}: no {key}", src.join("dkms.conf").display()))
    };
    let (name, version) = (field("PACKAGE_NAME")?, field("PACKAGE_VERSION")?);
    let stage = out.join("usbdom-frontend-dkms");
    let mut sources: Vec<PathBuf> = std::fs::read_dir(&src)
        .map_err(|e| format!("{}: {e}", src.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    sources.sort();
    for file in sources {
        let base = file
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        let wanted = base.ends_with(".c")
            || base.ends_with(".h")
            || ["Kbuild", "Makefile", "dkms.conf"].contains(&base);
        if wanted {
            install(
                &file,
                &stage,
                &format!("usr/src/{name}-{version}/{base}"),
                0o644,
            )?;
        }
    }
    docs(&stage, "usbdom-frontend-dkms", "copyright-frontend")?;
    finish(
        &stage,
        "usbdom-frontend-dkms",
        &version,
        "all",
        "",
        &[],
        out,
    )
}

/// systemd's own reading of the unit (`systemd-analyze verify`): a line it names with its
/// number (an unknown key, a value it cannot parse) fails. What it says of the machine (the
/// command and the man page are not installed here) does not.
fn verify_unit(unit: &Path) -> Result {
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(unit)
        .output()
        .map_err(|e| format!("systemd-analyze: {e}"))?;
    let text = String::from_utf8_lossy(&out.stderr);
    let prefix = format!("{}:", unit.display());
    let problems: Vec<&str> = text
        .lines()
        .filter(|l| {
            l.strip_prefix(&prefix)
                .and_then(|rest| rest.split(':').next())
                .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
        })
        .collect();
    if problems.is_empty() {
        eprintln!("xtask: systemd-analyze verify: usbdom.service reads cleanly");
        Ok(())
    } else {
        Err(format!("usbdom.service: {}", problems.join("; ")))
    }
}

/// lintian on `debs`: its report is printed; an error fails.
fn lintian(debs: &[&Path]) -> Result {
    step(
        "lintian",
        Command::new("lintian")
            .args(["--fail-on", "error", "--info", "--tag-display-limit", "0"])
            .args(debs),
    )
}
