//! `usbctl monitor` on a driver-domain log recorded from the end-to-end run (usbdom on Xen
//! 4.17 serving two Linux guests: the stick to domain 2, the keyboard to domain 3; the stick
//! unplugged and replugged; domain 2 destroyed; domain 3's controller removed).

use std::io::Cursor;
use std::process::Command;

use usbctl::monitor::{watch, State};

const LOG: &str = include_str!("data/usbdom-e2e.log");

fn state_until(t: &str) -> State {
    let end = LOG.find(&format!("t={t} ")).expect("a line of the log");
    let mut out = Vec::new();
    watch(
        &mut Cursor::new(&LOG[..end]),
        &mut || false,
        false,
        &|_| None,
        &mut out,
    )
    .unwrap()
}

#[test]
fn mid_run_both_guests_own_their_devices_and_the_reader_moves_data() {
    // While domain 2 reads the stick in a loop (after the replug).
    let s = state_until("41.573136");
    assert_eq!(s.platform.as_deref(), Some("xen-hvm"));
    assert!(s.ready);
    assert_eq!(s.devices["2-1"].owner, Some((2, 0, 1)));
    assert_eq!(s.devices["2-1"].vid, "46f4");
    assert_eq!(s.devices["2-1"].speed, "super");
    assert_eq!(s.devices["1-2"].owner, Some((3, 0, 1)));
    assert_eq!(s.devices["1-2"].product, "QEMU USB Keyboard");
    assert!(s.devices["1-3"].hub);
    let reader = &s.frontends[&(2, 0)];
    assert!(reader.connected);
    assert_eq!((reader.ports, reader.usb_ver), (8, 2));
    assert_eq!(reader.errors, 0);
    assert!(reader.bytes > 16 << 20, "{reader:?}");
    assert!(reader.bytes_per_s > 1e6, "{reader:?}");
    assert!(s.frontends[&(3, 0)].connected);
}

#[test]
fn while_unplugged_the_stick_is_gone_and_the_end_leaves_everything_free() {
    let s = state_until("30.366018");
    assert!(!s.devices.contains_key("2-1"), "the stick was pulled out");
    let end = state_until("46.909039");
    assert!(end.devices.values().all(|d| d.owner.is_none()));
    assert_eq!(end.frontends.keys().collect::<Vec<_>>(), [&(3, 0)]);
    let mut all = Vec::new();
    let s = watch(
        &mut Cursor::new(LOG),
        &mut || false,
        true,
        &|_| None,
        &mut all,
    )
    .unwrap();
    assert!(s.frontends.is_empty());
    // JSON lines, one object each, the devices with their IDs.
    let text = String::from_utf8(all).unwrap();
    let devices: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .filter(|v: &serde_json::Value| v["type"] == "device")
        .collect();
    assert_eq!(devices.len(), 3);
    assert_eq!(devices[2]["busid"], "2-1");
    assert_eq!(devices[2]["product"], "QEMU USB HARDDRIVE");
}

#[test]
fn a_panic_ends_the_monitor_with_its_text_and_status_2() {
    let dir = std::env::temp_dir().join(format!("usbctl-monitor-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let log = dir.join("usbdom.log");
    let upto = &LOG[..LOG.find("t=20.067544 ").unwrap()];
    std::fs::write(
        &log,
        format!("{upto}t=20.1 level=error event=panic location=usbback/src/lib.rs:42:5 message=\"index out of bounds\"\nt=21 level=info event=ready\n"),
    )
    .unwrap();
    let run = Command::new(env!("CARGO_BIN_EXE_usbctl"))
        .args(["monitor", log.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(run.status.code(), Some(2));
    assert_eq!(
        String::from_utf8_lossy(&run.stderr),
        "usbctl: usbdom panicked at usbback/src/lib.rs:42:5: index out of bounds\n"
    );
    assert!(String::from_utf8_lossy(&run.stdout).contains("QEMU USB HARDDRIVE"));
    let clean = Command::new(env!("CARGO_BIN_EXE_usbctl"))
        .args([
            "monitor",
            "--json",
            log.to_str().unwrap().trim_end_matches("usbdom.log"),
        ])
        .output()
        .unwrap();
    assert_eq!(clean.status.code(), Some(1), "a directory is no log");
    std::fs::remove_dir_all(&dir).unwrap();
}
