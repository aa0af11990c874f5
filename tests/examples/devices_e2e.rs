//! `cargo xtask devices`: the device table on real Xen inside QEMU (tests/e2e/devices.sh).
//! QEMU's class devices on the outer machine's second xHCI go to a Linux guest with the
//! stock xen-hcd and class drivers, which uses each as a user would, first through QEMU's
//! `qusb` backend in dom0 (what users have), then through usbdom; this side checks what came
//! out of QEMU for each:
//! - `usb-audio`: a one-second tone played through `/dev/dsp`, found in QEMU's wav file
//!   (what the file grew by while each path played);
//! - `usb-serial` (FTDI): a line written to `/dev/ttyUSB0`, found in the file QEMU's
//!   character device writes;
//! - `usb-ccid` behind the hub: the reader's slot status read through usbfs by the guest's
//!   `ccidprobe` (a GetSlotStatus answered as CCID says);
//! - a full-speed `usb-storage` behind the hub: 4 MiB read while the SuperSpeed stick is
//!   read flat out beside it, in MB/s (a figure, not a check);
//! - `usb-uas` (high speed, on a third controller with USB 2 ports only) to a guest with
//!   our `pvusb-hcd`: the driver that took it, and its first MiB's sha256 against the
//!   image's;
//! - two `usb-net` adapters on one QEMU-internal network hub, one to each of two guests
//!   (one behind the USB hub): the guests ping each other.
//!
//! Prints a line per device and path (the table of `docs/tested-devices.md`); exits 1 when
//! the run did not get through or a device did not do its part through usbdom.

use std::path::Path;
use std::time::Duration;

use usbdom_tests::{field, run_qemu, NestedXen};

/// Where QEMU writes what a device sent out: `audio.wav`, `serial.txt`.
fn out_path(name: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("../target/e2e/devices-{name}"))
}

/// Seconds of sound in a wav file QEMU wrote (16-bit PCM), and how many of them are not
/// silence (a sample above 1/32 of full scale in any channel), from byte `from` of its
/// samples on (what was written after that point).
fn wav_seconds(bytes: &[u8], from: usize) -> Option<(f64, f64)> {
    let u16_at = |at: usize| Some(u16::from_le_bytes(bytes.get(at..at + 2)?.try_into().ok()?));
    let u32_at = |at: usize| Some(u32::from_le_bytes(bytes.get(at..at + 4)?.try_into().ok()?));
    if bytes.get(..4)? != b"RIFF" || bytes.get(8..12)? != b"WAVE" || u16_at(34)? != 16 {
        return None;
    }
    let channels = usize::from(u16_at(22)?.max(1));
    let rate = f64::from(u32_at(24)?.max(1));
    // The samples follow the 44-byte header QEMU writes (its length fields are filled in
    // only when QEMU exits cleanly, so the file's own length counts).
    let data = bytes.get(44 + from.min(bytes.len().saturating_sub(44))..)?;
    let frames: Vec<&[u8]> = data.chunks_exact(2 * channels).collect();
    let loud = frames
        .iter()
        .filter(|f| {
            f.chunks_exact(2)
                .any(|s| i16::from_le_bytes([s[0], s[1]]).unsigned_abs() > 1024)
        })
        .count();
    Some((frames.len() as f64 / rate, loud as f64 / rate))
}

fn main() {
    let machine = NestedXen::from_env();
    let (wav, serial) = (out_path("audio.wav"), out_path("serial.txt"));
    let _ = std::fs::remove_file(&wav);
    let _ = std::fs::remove_file(&serial);
    // The full-speed stick: 8 MiB (the guest tells it from the other by its size).
    let fs_stick = out_path("fs-stick.img");
    std::fs::write(&fs_stick, vec![0x5au8; 8 << 20]).expect("the full-speed stick's image");
    // The UAS disk: 32 MiB, its first MiB numbered so a wrong block shows.
    let uas_disk = out_path("uas.img");
    let mut uas = vec![0u8; 32 << 20];
    for (i, b) in uas.iter_mut().take(1 << 20).enumerate() {
        *b = (i % 251) as u8;
    }
    std::fs::write(&uas_disk, &uas).expect("the UAS disk's image");
    let uas_sum: String = {
        use sha2::{Digest, Sha256};
        Sha256::digest(&uas[..1 << 20])
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    };
    let mut qemu = machine.args("usbdom.mode=devices", None);
    qemu.extend([
        "-serial".to_string(),
        "stdio".into(),
        "-audiodev".into(),
        format!("wav,id=snd0,path={}", wav.display()),
        "-device".into(),
        "usb-audio,audiodev=snd0,bus=xhci2.0,port=2".into(),
        "-chardev".into(),
        format!("file,id=ser0,path={}", serial.display()),
        "-device".into(),
        "usb-serial,chardev=ser0,bus=xhci2.0,port=3".into(),
        "-drive".into(),
        format!("if=none,id=fsdisk,file={},format=raw", fs_stick.display()),
        "-device".into(),
        "usb-storage,bus=xhci.0,port=3.2,drive=fsdisk".into(),
        "-drive".into(),
        format!("if=none,id=uasdisk,file={},format=raw", uas_disk.display()),
        // A third controller, with USB 2 ports only: the UAS device is high speed there,
        // where Linux's uas driver needs no streams (which no PVUSB frontend offers).
        "-device".into(),
        "qemu-xhci,id=xhci3,p3=0,addr=0x7".into(),
        "-device".into(),
        "usb-uas,id=uas,bus=xhci3.0,port=1".into(),
        "-device".into(),
        "scsi-hd,bus=uas.0,scsi-id=0,lun=0,drive=uasdisk".into(),
        // Two USB Ethernet adapters on one QEMU-internal hub (nothing leaves QEMU): one on
        // the second controller (3-4), one behind the first's hub (1-3.3), a guest each.
        "-netdev".into(),
        "hubport,id=usbnet1,hubid=7".into(),
        "-device".into(),
        "usb-net,netdev=usbnet1,bus=xhci2.0,port=4,mac=52:54:00:75:73:01".into(),
        "-netdev".into(),
        "hubport,id=usbnet2,hubid=7".into(),
        "-device".into(),
        "usb-net,netdev=usbnet2,bus=xhci.0,port=3.3,mac=52:54:00:75:73:02".into(),
        // A smartcard reader behind the hub, no card in it.
        "-device".into(),
        "usb-ccid,bus=xhci.0,port=3.4".into(),
    ]);
    // How far the wav file's samples had got when the qusb guest was done: what the
    // usbdom guest played comes after.
    let qusb_done_at = std::sync::Mutex::new(0usize);
    eprintln!("devices e2e: one boot (about 5 minutes)");
    let out = run_qemu(&qemu, Duration::from_secs(15 * 60), |l| {
        if let Some(mark) = l.strip_prefix("E2E: ") {
            eprintln!("devices e2e: {mark}");
            if mark.starts_with("phase=qusb_done") {
                let len = std::fs::metadata(&wav).map_or(44, |m| m.len() as usize);
                *qusb_done_at.lock().unwrap() = len.saturating_sub(44);
            }
        }
        l.starts_with("E2E: done")
    });
    let qusb_done_at = *qusb_done_at.lock().unwrap();
    let marks: Vec<&str> = out
        .lines
        .iter()
        .filter_map(|(_, l)| l.strip_prefix("E2E: "))
        .collect();
    let passed = marks.iter().any(|l| l.starts_with("result=pass"));
    if !passed {
        for (t, l) in &out.lines {
            if l.starts_with("LOG ") || l.starts_with("E2E") || l.contains("Triple fault") {
                eprintln!("[{:8.3}] {l}", t.as_secs_f64());
            }
        }
    }
    for (_, l) in out
        .lines
        .iter()
        .filter(|(_, l)| l.starts_with("GUEST-") || l.starts_with("USBDOM "))
    {
        println!("{l}");
    }
    let guest = |device: &str, path: &str| {
        marks
            .iter()
            .filter_map(|l| l.strip_prefix(&format!("device {device} ")))
            .find(|l| field(l, "path") == Some(path))
            .map(str::to_string)
    };
    let wav_bytes = std::fs::read(&wav).unwrap_or_default();
    let sent = std::fs::read_to_string(&serial).unwrap_or_default();
    let mut ok = passed;
    for path in ["qusb", "usbdom"] {
        // Audio: the tone in what the wav file grew by while this path's guest played.
        let (from, end) = if path == "qusb" {
            (0, 44 + qusb_done_at)
        } else {
            (qusb_done_at, wav_bytes.len())
        };
        let part = &wav_bytes[..end.min(wav_bytes.len())];
        let (total, tone) = wav_seconds(part, from).unwrap_or((0.0, 0.0));
        let a = guest("audio", path);
        let played = tone >= 0.9 && a.as_deref().is_some_and(|a| field(a, "rc") == Some("0"));
        println!(
            "devices device=audio path={path} result={} wav_seconds={total:.2} tone_seconds={tone:.2} guest=\"{}\"",
            if played { "plays" } else { "fails" },
            a.as_deref().unwrap_or("no line")
        );
        // Serial: this path's line in the host file.
        let s = guest("serial", path);
        let arrived = sent.contains(&format!("usbdom-device-table serial path={path}"));
        println!(
            "devices device=serial path={path} result={} guest=\"{}\"",
            if arrived { "arrives" } else { "fails" },
            s.as_deref().unwrap_or("no line")
        );
        // The full-speed stick behind the hub, beside a busy SuperSpeed one.
        let f = guest("fs_stick", path);
        let rate = f.as_deref().and_then(|f| {
            let bytes: f64 = field(f, "bytes")?.parse().ok()?;
            let secs: f64 = field(f, "seconds")?.parse().ok()?;
            (field(f, "rc") == Some("0") && secs > 0.0).then(|| bytes / secs / 1e6)
        });
        println!(
            "devices device=fs_stick_behind_hub path={path} mb_s={} guest=\"{}\"",
            rate.map_or("none".into(), |r| format!("{r:.3}")),
            f.as_deref().unwrap_or("no line")
        );
        // The smartcard reader answered a GetSlotStatus through usbfs (no card: status 2).
        let c = guest("ccid", path);
        let answered = c.as_deref().is_some_and(|c| field(c, "rc") == Some("0"));
        println!(
            "devices device=ccid path={path} result={} guest=\"{}\"",
            if answered { "answers" } else { "fails" },
            c.as_deref().unwrap_or("no line")
        );
        if path == "usbdom" {
            ok &= played && arrived && rate.is_some() && answered;
        }
    }
    // UAS through pvusb-hcd: Linux's uas driver (not usb-storage) took it and read it right.
    let u = guest("uas", "usbdom");
    let uas_ok = u.as_deref().is_some_and(|u| {
        field(u, "driver") == Some("uas") && field(u, "sha256") == Some(uas_sum.as_str())
    });
    println!(
        "devices device=uas path=usbdom hcd=pvusb-hcd result={} guest=\"{}\"",
        if uas_ok { "reads" } else { "fails" },
        u.as_deref().unwrap_or("no line")
    );
    ok &= uas_ok;
    // USB Ethernet: each guest's pings of the other answered.
    let nets = [guest("net", "usbdom"), guest("net", "uas")];
    let pinged = nets.iter().all(|n| {
        n.as_deref()
            .and_then(|n| field(n, "received")?.parse::<u32>().ok())
            .is_some_and(|r| r > 0)
    });
    println!(
        "devices device=net path=usbdom result={} guest_d=\"{}\" guest_p=\"{}\"",
        if pinged { "pings" } else { "fails" },
        nets[0].as_deref().unwrap_or("no line"),
        nets[1].as_deref().unwrap_or("no line")
    );
    ok &= pinged;
    if !ok {
        std::process::exit(1);
    }
}
