//! `keyprobe`: the guest's end of `cargo xtask bench keys` (tests/examples/bench_keys.rs).
//! It reads a keyboard's evdev device and writes one line per key press to Xen's debug I/O
//! port (0xe9), which Xen prints on its own serial console at once, as
//! `(d<domid>) keyprobe press=<n> code=<code>`: the host reads that console, so it times a
//! QMP key press to the guest's evdev event with nothing between but the hypervisor — no
//! console daemon, no dom0 process. A `rep outsb` is one exit to Xen for the whole line.
//!
//! The Escape key (code 1) ends a phase of the benchmark: it is also reported on stdout, the
//! guest's console, as `guest: keyprobe phase_end presses=<n>` for dom0's scenario to wait for.
//!
//! ```text
//! keyprobe /dev/input/event0
//! ```

use std::fs::File;
use std::io::{Read, Write};
use std::process::ExitCode;

/// Xen's debug console port for HVM and PVH guests (`XEN_HVM_DEBUGCONS_IOPORT`).
const XEN_DEBUG_PORT: u16 = 0xe9;
/// `struct input_event` on x86-64: a 16-byte `timeval`, then `type` and `code` (u16) and
/// `value` (s32).
const EVENT_BYTES: usize = 24;
/// `EV_KEY`, and its value for a press (0 is a release, 2 a repeat).
const EV_KEY: u16 = 1;
const KEY_PRESSED: i32 = 1;
/// `KEY_ESC`: the end of a phase.
const KEY_ESC: u16 = 1;

/// The key code of `event` if it is a key press.
fn pressed(event: &[u8; EVENT_BYTES]) -> Option<u16> {
    let kind = u16::from_le_bytes([event[16], event[17]]);
    let code = u16::from_le_bytes([event[18], event[19]]);
    let value = i32::from_le_bytes([event[20], event[21], event[22], event[23]]);
    (kind == EV_KEY && value == KEY_PRESSED).then_some(code)
}

/// Writes `line` to Xen's debug port.
fn debug_port_write(line: &[u8]) {
    // SAFETY: `ioperm` gave this process port 0xe9, so `outsb` does not fault; it reads
    // exactly `line.len()` bytes from `line` (the direction flag is clear, as the ABI
    // requires between calls) and writes no memory.
    unsafe {
        core::arch::asm!(
            "rep outsb",
            in("dx") XEN_DEBUG_PORT,
            inout("rsi") line.as_ptr() => _,
            inout("rcx") line.len() => _,
            options(nostack, readonly, preserves_flags)
        );
    }
}

fn main() -> ExitCode {
    let Some(path) = std::env::args().nth(1) else {
        eprintln!("usage: keyprobe /dev/input/eventN");
        return ExitCode::from(2);
    };
    // SAFETY: changes only this process's I/O permission bitmap.
    if unsafe { libc::ioperm(XEN_DEBUG_PORT.into(), 1, 1) } != 0 {
        println!(
            "guest: keyprobe error=ioperm reason=\"{}\"",
            std::io::Error::last_os_error()
        );
        return ExitCode::from(2);
    }
    let mut device = match File::open(&path) {
        Ok(f) => f,
        Err(e) => {
            println!("guest: keyprobe error=open dev={path} reason=\"{e}\"");
            return ExitCode::from(2);
        }
    };
    println!("guest: keyprobe ready dev={path}");
    let mut presses = 0u64;
    let mut event = [0u8; EVENT_BYTES];
    loop {
        // The keyboard leaving ends the read with an error (ENODEV).
        if let Err(e) = device.read_exact(&mut event) {
            println!("guest: keyprobe end presses={presses} reason=\"{e}\"");
            return ExitCode::SUCCESS;
        }
        let Some(code) = pressed(&event) else {
            continue;
        };
        presses += 1;
        debug_port_write(format!("keyprobe press={presses} code={code}\n").as_bytes());
        if code == KEY_ESC {
            println!("guest: keyprobe phase_end presses={presses}");
            let _ = std::io::stdout().flush();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(kind: u16, code: u16, value: i32) -> [u8; EVENT_BYTES] {
        let mut e = [0u8; EVENT_BYTES];
        e[16..18].copy_from_slice(&kind.to_le_bytes());
        e[18..20].copy_from_slice(&code.to_le_bytes());
        e[20..24].copy_from_slice(&value.to_le_bytes());
        e
    }

    #[test]
    fn only_key_presses_count() {
        assert_eq!(pressed(&event(EV_KEY, 30, 1)), Some(30));
        assert_eq!(pressed(&event(EV_KEY, 30, 0)), None, "a release");
        assert_eq!(pressed(&event(EV_KEY, 30, 2)), None, "a repeat");
        // EV_MSC (MSC_SCAN) and EV_SYN come with every key.
        assert_eq!(pressed(&event(4, 4, 0x70004)), None);
        assert_eq!(pressed(&event(0, 0, 0)), None);
    }
}
