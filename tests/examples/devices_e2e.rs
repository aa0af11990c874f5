//! `cargo xtask devices`: the device table on real Xen inside QEMU (tests/e2e/devices.sh).
//! QEMU's class devices on the outer machine's second xHCI go through usbdom to a Linux guest
//! with the stock xen-hcd and class drivers, which uses each as a user would; this side
//! checks what came out of QEMU. So far: `usb-audio`, a one-second tone played through
//! `/dev/dsp`, found in QEMU's wav file. Prints a line per device; exits 1 when the run did
//! not get through or a device did not do its part.

use std::path::Path;
use std::time::Duration;

use usbdom_tests::{field, run_qemu, NestedXen};

/// Where QEMU writes what the guest played.
fn wav_path() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/e2e/devices-audio.wav")
}

/// Seconds of sound in a wav file QEMU wrote (16-bit PCM), and how many of them are not
/// silence (a sample above 1/32 of full scale in any channel).
fn wav_seconds(bytes: &[u8]) -> Option<(f64, f64)> {
    let u16_at = |at: usize| Some(u16::from_le_bytes(bytes.get(at..at + 2)?.try_into().ok()?));
    let u32_at = |at: usize| Some(u32::from_le_bytes(bytes.get(at..at + 4)?.try_into().ok()?));
    if bytes.get(..4)? != b"RIFF" || bytes.get(8..12)? != b"WAVE" || u16_at(34)? != 16 {
        return None;
    }
    let channels = usize::from(u16_at(22)?.max(1));
    let rate = f64::from(u32_at(24)?.max(1));
    // The samples follow the 44-byte header QEMU writes (its length fields are filled in
    // only when QEMU exits cleanly, so the file's own length counts).
    let data = bytes.get(44..)?;
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
    let wav = wav_path();
    let _ = std::fs::remove_file(&wav);
    let mut qemu = machine.args("usbdom.mode=devices", None);
    qemu.extend([
        "-serial".to_string(),
        "stdio".into(),
        "-audiodev".into(),
        format!("wav,id=snd0,path={}", wav.display()),
        "-device".into(),
        "usb-audio,audiodev=snd0,bus=xhci2.0,port=2".into(),
    ]);
    eprintln!("devices e2e: one boot (about 5 minutes)");
    let out = run_qemu(&qemu, Duration::from_secs(15 * 60), |l| {
        if let Some(mark) = l.strip_prefix("E2E: ") {
            eprintln!("devices e2e: {mark}");
        }
        l.starts_with("E2E: done")
    });
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
        .filter(|(_, l)| l.starts_with("GUEST-D ") || l.starts_with("USBDOM "))
    {
        println!("{l}");
    }
    let mut ok = passed;
    let audio = marks.iter().find_map(|l| l.strip_prefix("device audio "));
    match audio {
        Some(a) => println!("devices audio guest: {a}"),
        None => {
            println!("devices audio guest: no line");
            ok = false;
        }
    }
    match std::fs::read(&wav).ok().as_deref().and_then(wav_seconds) {
        Some((total, tone)) => {
            println!("devices audio wav_seconds={total:.2} tone_seconds={tone:.2} (1.00 played)");
            ok &= tone >= 0.9 && audio.is_some_and(|a| field(a, "rc") == Some("0"));
        }
        None => {
            println!("devices audio wav: none or unreadable ({})", wav.display());
            ok = false;
        }
    }
    if !ok {
        std::process::exit(1);
    }
}
