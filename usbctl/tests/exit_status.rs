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
