//! A nested machine that stops talking: what it was doing, asked of QEMU and of Xen before
//! the time limit ends it.
//!
//! The end-to-end run has now and then gone silent for minutes until its limit, dom0's
//! scenario mid-step. Its serial log alone cannot say whether QEMU stopped (a TCG deadlock),
//! Xen stopped, or only dom0 did. So after a long silence the harness asks, twice, 90 s
//! apart:
//! - QEMU over QMP: its run state, and each vCPU's RIP, CPL and HLT twice, two seconds apart
//!   (a vCPU whose RIP moves is running; one at the same RIP in Xen's text is spinning);
//! - Xen over the serial line (its console's input switch, Ctrl-A three times, once): debug
//!   keys `r` (run queues), `a` (timer queues), `i` (interrupt bindings), `q` (every
//!   domain's vCPUs and their pending events), `0` (dom0's vCPUs) and `d` (each CPU's
//!   registers and stack), then `r`, `a` and `0` again. Xen's answers come back as serial
//!   lines; a Xen that does not answer is itself stuck. Keys go a third of a second apart:
//!   Xen's serial input drops characters typed fast.

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use crate::qmp::Qmp;

/// The prefix of the lines the probe adds to a run's log.
pub const PREFIX: &str = "STALL ";

/// Xen's console input switch (see the module's note).
const XEN_SWITCH: &[u8] = b"\x01\x01\x01";
/// The debug keys of each round.
const XEN_KEYS: [&[u8]; 2] = [b"raiq0d", b"ra0"];
/// The time between rounds.
const ROUND_GAP: Duration = Duration::from_secs(90);

/// How and when to probe a silent machine.
pub struct StallProbe {
    /// The machine's QMP socket.
    pub qmp: PathBuf,
    /// How long without a serial line counts as silent.
    pub after: Duration,
}

/// The rounds a run's probe has done, and when the last one was.
#[derive(Default)]
pub struct Rounds {
    done: usize,
    last: Option<Duration>,
}

impl StallProbe {
    /// Whether a round is due, `silent_for` after the last serial line, at `now`.
    pub fn due(&self, rounds: &Rounds, silent_for: Duration, now: Duration) -> bool {
        rounds.done < XEN_KEYS.len()
            && silent_for > self.after
            && rounds.last.is_none_or(|t| now - t > ROUND_GAP)
    }

    /// Asks QEMU what its vCPUs are doing, then writes Xen's debug keys to `serial` (QEMU's
    /// stdin, the serial line's input). Returns the lines to log (without [`PREFIX`]).
    pub fn probe(
        &self,
        rounds: &mut Rounds,
        silent_for: Duration,
        now: Duration,
        serial: Option<&mut impl Write>,
    ) -> Vec<String> {
        let round = rounds.done;
        rounds.done += 1;
        rounds.last = Some(now);
        let keys = XEN_KEYS[round];
        let mut out = vec![format!(
            "round={} silent_for={:.0}s: asking QEMU (QMP) and Xen (debug keys {})",
            round + 1,
            silent_for.as_secs_f64(),
            String::from_utf8_lossy(keys)
        )];
        match self.ask_qemu() {
            Ok(lines) => out.extend(lines),
            Err(e) => out.push(format!("qmp: {e}")),
        }
        let Some(serial) = serial else {
            out.push("xen: no serial input to send keys on".into());
            return out;
        };
        let switch = if round == 0 { XEN_SWITCH } else { b"" };
        let sent = switch.iter().chain(keys).try_for_each(|k| {
            serial.write_all(&[*k])?;
            serial.flush()?;
            std::thread::sleep(Duration::from_millis(300));
            Ok::<(), std::io::Error>(())
        });
        out.push(match sent {
            Ok(()) => "xen: debug keys sent; its answers follow as (XEN) lines".into(),
            Err(e) => format!("xen: the serial line took no keys: {e}"),
        });
        out
    }

    fn ask_qemu(&self) -> Result<Vec<String>, String> {
        // A QEMU whose main loop is stuck never answers: that is an answer too.
        let mut qmp = Qmp::connect(&self.qmp, Duration::from_secs(10))?;
        let mut out = vec![format!(
            "qemu status: {}",
            qmp.execute(r#"{"execute":"query-status"}"#)?
        )];
        for sample in 1..=2 {
            if sample == 2 {
                std::thread::sleep(Duration::from_secs(2));
            }
            let registers = qmp.human("info registers -a")?;
            out.extend(vcpu_summary(&registers).map(|l| format!("sample={sample} {l}")));
        }
        Ok(out)
    }
}

/// Per vCPU, the line with RIP (EIP outside long mode), flags, CPL and HLT, and its CS, from
/// `info registers -a`.
fn vcpu_summary(registers: &str) -> impl Iterator<Item = String> + '_ {
    let mut cpu = String::new();
    registers.lines().filter_map(move |l| {
        if l.starts_with("CPU#") {
            cpu = l.trim().to_string();
            None
        } else if ["RIP=", "EIP=", "CS ="].iter().any(|p| l.starts_with(p)) {
            Some(format!("{cpu} {}", l.trim()))
        } else {
            None
        }
    })
}

#[cfg(test)]
mod tests {
    use super::vcpu_summary;

    #[test]
    fn the_summary_names_each_vcpu_with_its_rip_and_cs() {
        let registers = "\nCPU#0\nRAX=0000000000000000 RBX=0000000000000001\nRIP=ffff82d040201234 RFL=00000246 [---Z-P-] CPL=0 II=0 A20=1 SMM=0 HLT=1\nES =0000 0000000000000000 ffffffff 00c00000\nCS =e008 0000000000000000 ffffffff 00a09b00 DPL=0 CS64 [-RA]\nCPU#1\nEIP=0000e05b EFL=00000002 [-------] CPL=0 II=0 A20=1 SMM=0 HLT=0\nCS =7f98 0007f980 ffffffff 00809b00\n";
        let lines: Vec<String> = vcpu_summary(registers).collect();
        assert_eq!(lines.len(), 4);
        assert!(lines[0].starts_with("CPU#0 RIP=ffff82d040201234"));
        assert!(lines[0].ends_with("HLT=1"));
        assert!(lines[1].starts_with("CPU#0 CS =e008"));
        assert!(lines[2].starts_with("CPU#1 EIP=0000e05b"));
        assert!(lines[3].starts_with("CPU#1 CS =7f98"));
    }
}
