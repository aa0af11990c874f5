//! The binary's exit statuses, as scripts and systemd see them: help is not a failure, a
//! mistake on the command line is 2 with one line on stderr.

use std::process::{Command, Output};

fn usbctl(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_usbctl"))
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn help_exits_0() {
    for args in [&["--help"][..], &["help", "attach"], &["attach", "--help"]] {
        let out = usbctl(args);
        assert_eq!(out.status.code(), Some(0), "{args:?}");
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("Usage: usbctl"),
            "{args:?}"
        );
    }
}

#[test]
fn a_missing_argument_exits_2_with_one_line() {
    let out = usbctl(&["attach", "guest", "0"]);
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "usbctl: the following required arguments were not provided: <PORT> <DEVICE>; \
         usage: usbctl attach <DOMAIN> <DEVID> <PORT> <DEVICE>\n"
    );
    assert!(out.stdout.is_empty());
}

#[test]
fn a_driver_domain_config_that_cannot_start_exits_2_before_anything_runs() {
    // usbdom.service does not retry status 2 (RestartPreventExitStatus=2).
    let dir = std::env::temp_dir().join(format!("usbctl-exit-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cfg = dir.join("usbdom.cfg");
    std::fs::write(&cfg, "name = \"usbdom\"\npci = [ ]\n").unwrap();
    let out = usbctl(&["start", cfg.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        format!(
            "usbctl: {} passes no USB controller through: set pci = [ \"0000:00:14.0\" ] \
             (`lspci -D -d ::0c03` lists them)\n",
            cfg.display()
        )
    );
    let missing = dir.join("none.cfg");
    let out = usbctl(&["stop", missing.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr).lines().count(),
        1,
        "{out:?}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
