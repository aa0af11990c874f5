//! A harness that boots the usbdom image in QEMU (TCG), collects the serial log line by line
//! with arrival times, and ends QEMU by `isa-debug-exit` or a time limit.
//!
//! The image is `target/usbdom.elf` (built by `cargo xtask image`; `cargo xtask test` builds
//! it first) or `$USBDOM_IMAGE`; a machine that runs the demo or a `usbtest=` self-test
//! boots `target/usbdom-demo.elf` ([`Machine::demo_image`], `$USBDOM_DEMO_IMAGE`).

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

mod qmp;
pub mod stall;

pub use qmp::{key_event, Qmp};
pub use stall::StallProbe;

/// QEMU's exit status when the guest wrote the success value (0x10) to `isa-debug-exit`.
pub const EXIT_SUCCESS: i32 = (0x10 << 1) | 1;

/// The image a driver domain runs.
pub fn image() -> PathBuf {
    built_image("USBDOM_IMAGE", "usbdom.elf")
}

/// The image with demo mode and the `usbtest=` self-tests.
pub fn demo_image() -> PathBuf {
    built_image("USBDOM_DEMO_IMAGE", "usbdom-demo.elf")
}

/// `$var`, or `target/<name>`.
fn built_image(var: &str, name: &str) -> PathBuf {
    let path = std::env::var_os(var).map(PathBuf::from).unwrap_or_else(|| {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../target")
            .join(name)
    });
    assert!(
        path.exists(),
        "{} is missing: build it with `cargo xtask image`",
        path.display()
    );
    path
}

/// A QEMU machine to boot the image on.
pub struct Machine {
    args: Vec<String>,
    append: String,
    limit: Duration,
    scratch: PathBuf,
    /// Boot the demo image.
    demo: bool,
}

impl Machine {
    /// A `machine` (q35, pc) with 256 MiB, no display or default devices, the serial on
    /// stdout, `isa-debug-exit`, and an xHCI controller `xhci`.
    pub fn new(machine: &str, name: &str) -> Machine {
        Self::bare(machine, name)
            .arg("-device")
            .arg("qemu-xhci,id=xhci")
    }

    /// The same machine without the xHCI controller.
    pub fn bare(machine: &str, name: &str) -> Machine {
        let scratch = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../target/tmp")
            .join(name);
        std::fs::create_dir_all(&scratch).unwrap();
        let args = [
            "-machine",
            machine,
            "-m",
            "256",
            "-display",
            "none",
            "-nodefaults",
            "-no-reboot",
            "-serial",
            "stdio",
            "-device",
            "isa-debug-exit,iobase=0xf4,iosize=0x04",
        ]
        .map(String::from)
        .to_vec();
        Machine {
            args,
            append: "qemu_exit".into(),
            limit: Duration::from_secs(60),
            scratch,
            demo: false,
        }
    }

    /// Boots the demo image (demo mode, the `usbtest=` self-tests) instead.
    pub fn demo_image(mut self) -> Machine {
        self.demo = true;
        self
    }

    /// Adds QEMU arguments.
    pub fn arg(mut self, a: &str) -> Machine {
        self.args.push(a.into());
        self
    }

    /// Attaches a USB stick backed by a fresh 16 MiB raw image.
    pub fn usb_stick(self, id: &str) -> Machine {
        let img = self.scratch.join(format!("{id}.img"));
        let f = std::fs::File::create(&img).unwrap();
        f.set_len(16 << 20).unwrap();
        let drive = format!("if=none,id={id},file={},format=raw", img.display());
        self.arg("-drive")
            .arg(&drive)
            .arg("-device")
            .arg(&format!("usb-storage,bus=xhci.0,drive={id}"))
    }

    /// Attaches a USB stick backed by a raw image holding `bytes`.
    pub fn usb_stick_with(self, id: &str, bytes: &[u8]) -> Machine {
        let img = self.scratch.join(format!("{id}.img"));
        std::fs::write(&img, bytes).unwrap();
        let drive = format!("if=none,id={id},file={},format=raw", img.display());
        self.arg("-drive")
            .arg(&drive)
            .arg("-device")
            .arg(&format!("usb-storage,bus=xhci.0,drive={id}"))
    }

    /// Adds words to the kernel command line.
    pub fn append(mut self, words: &str) -> Machine {
        self.append.push(' ');
        self.append.push_str(words);
        self
    }

    /// The directory for this machine's files.
    pub fn scratch(&self) -> &Path {
        &self.scratch
    }

    /// Lets the guest run on after `event=ready` (no `qemu_exit`): the run ends when the
    /// `done` of [`Machine::boot_until`] says so or at the time limit.
    pub fn keep_running(mut self) -> Machine {
        self.append = self
            .append
            .split_whitespace()
            .filter(|w| *w != "qemu_exit")
            .collect::<Vec<_>>()
            .join(" ");
        self
    }

    /// Sets the time limit.
    pub fn limit(mut self, limit: Duration) -> Machine {
        self.limit = limit;
        self
    }

    /// Boots and waits for QEMU to exit (or kills it at the time limit).
    pub fn boot(self) -> Run {
        self.boot_until(|_| false)
    }

    /// Boots and runs until QEMU exits, `done` returns true for a serial line (QEMU is then
    /// killed), or the time limit.
    pub fn boot_until(self, done: impl Fn(&str) -> bool) -> Run {
        let mut args = self.args.clone();
        let image = if self.demo { demo_image() } else { image() };
        args.extend([
            "-kernel".into(),
            image.display().to_string(),
            "-append".into(),
            self.append.clone(),
        ]);
        run_qemu(&args, self.limit, done)
    }
}

/// `qemu-system-x86_64`, or the unpacked QEMU `cargo xtask e2e` may point at
/// (`USBDOM_QEMU`, `USBDOM_QEMU_DATADIR`: see `qemu_for_nested_xen` there).
pub fn qemu() -> Command {
    let binary = std::env::var("USBDOM_QEMU").unwrap_or_else(|_| "qemu-system-x86_64".into());
    let mut c = Command::new(binary);
    if let Ok(d) = std::env::var("USBDOM_QEMU_DATADIR") {
        c.arg("-L").arg(d);
    }
    c
}

/// Runs `qemu-system-x86_64 args`, collecting its serial output (stdout) line by line, until
/// it exits, `done` returns true for a line (QEMU is then killed), or `limit` passes.
pub fn run_qemu(args: &[String], limit: Duration, done: impl Fn(&str) -> bool) -> Run {
    run_qemu_probed(args, limit, None, done)
}

/// [`run_qemu`], and once the serial line has been silent for `probe.after`, asks the machine
/// what it is doing ([`StallProbe`]); its findings are logged as [`stall::PREFIX`] lines.
/// The serial line's input is QEMU's stdin then (`-serial stdio`).
pub fn run_qemu_probed(
    args: &[String],
    limit: Duration,
    probe: Option<&StallProbe>,
    done: impl Fn(&str) -> bool,
) -> Run {
    run_qemu_timed(args, limit, probe, |_, l| done(l))
}

/// [`run_qemu_probed`], `done` also given the instant each line arrived (read from QEMU's
/// output, before the loop that calls `done` gets to it): what a benchmark times a line by.
pub fn run_qemu_timed(
    args: &[String],
    limit: Duration,
    probe: Option<&StallProbe>,
    done: impl Fn(Instant, &str) -> bool,
) -> Run {
    let started = Instant::now();
    let mut child = qemu()
        .args(args)
        .stdin(if probe.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("qemu-system-x86_64 (`cargo xtask test` installs Debian's qemu-system-x86)");
    let (tx, rx) = mpsc::channel();
    let stdout = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send((Instant::now(), line)).is_err() {
                break;
            }
        }
    });
    let mut stderr = child.stderr.take().unwrap();
    let err_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    let mut serial_input = child.stdin.take();
    let mut lines = Vec::new();
    let mut timed_out = false;
    let mut last_line = Duration::ZERO;
    let mut rounds = stall::Rounds::default();
    let status = loop {
        let now = started.elapsed();
        if let Some(probe) = probe.filter(|p| p.due(&rounds, now - last_line, now)) {
            let found = probe.probe(&mut rounds, now - last_line, now, serial_input.as_mut());
            lines.extend(
                found
                    .into_iter()
                    .map(|l| (now, format!("{}{l}", stall::PREFIX))),
            );
        }
        while let Ok((arrived, line)) = rx.try_recv() {
            let t = arrived - started;
            last_line = t;
            // A failed check in `done` must not leave QEMU running (holding its image
            // locks for the next run).
            let finished = match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                done(arrived, &line)
            })) {
                Ok(f) => f,
                Err(e) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    std::panic::resume_unwind(e);
                }
            };
            lines.push((t, line));
            if finished {
                let _ = child.kill();
            }
        }
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if started.elapsed() > limit {
            timed_out = true;
            let _ = child.kill();
            break child.wait().unwrap();
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    drop(serial_input);
    reader.join().unwrap();
    lines.extend(rx.try_iter().map(|(arrived, l)| (arrived - started, l)));
    Run {
        exit: status.code(),
        timed_out,
        lines,
        stderr: err_reader.join().unwrap(),
        command: format!("{:?} {}", qemu(), args.join(" ")),
    }
}

/// A finished boot.
pub struct Run {
    /// QEMU's exit status (`None` when killed by a signal).
    pub exit: Option<i32>,
    /// Whether the time limit ended it.
    pub timed_out: bool,
    /// Serial lines with their arrival time after QEMU started.
    pub lines: Vec<(Duration, String)>,
    /// QEMU's own messages.
    pub stderr: String,
    /// The command, for the failure report.
    pub command: String,
}

impl Run {
    /// The first line of `event`, with its arrival time.
    pub fn event(&self, event: &str) -> Option<(Duration, &str)> {
        let tag = format!("event={event}");
        self.lines
            .iter()
            .find(|(_, l)| l.split_whitespace().any(|w| w == tag))
            .map(|(t, l)| (*t, l.as_str()))
    }

    /// Every line of `event`.
    pub fn events<'a>(&'a self, event: &str) -> impl Iterator<Item = &'a str> + 'a {
        let tag = format!("event={event}");
        self.lines
            .iter()
            .map(|(_, l)| l.as_str())
            .filter(move |l| l.split_whitespace().any(|w| w == tag))
    }

    /// Checks `check`, printing the whole log and QEMU's messages if it fails.
    pub fn check(&self, check: impl FnOnce(&Run)) {
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| check(self)));
        if let Err(e) = result {
            eprintln!("---- {}", self.command);
            eprintln!("---- exit={:?} timed_out={}", self.exit, self.timed_out);
            for (t, l) in &self.lines {
                eprintln!("[{:>8.3}] {l}", t.as_secs_f64());
            }
            eprintln!("---- qemu stderr:\n{}", self.stderr);
            // Repeated last: a CI report shows only the tail of the output.
            let why = e
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| e.downcast_ref::<&str>().copied())
                .unwrap_or("(no message)");
            eprintln!("---- failed check: {why}");
            // A domain the emulated CPU ended (issue 13) explains many a later check.
            // So does a machine that went silent (the stall probe's findings).
            for (t, l) in self
                .lines
                .iter()
                .filter(|(_, l)| l.contains("Triple fault") || l.starts_with(stall::PREFIX))
            {
                eprintln!("---- meanwhile, at {:.0} s: {l}", t.as_secs_f64());
            }
            // What the silent machine answered the probe (Xen's debug keys), for a report
            // that shows only the tail.
            if let Some(probed) = self
                .lines
                .iter()
                .position(|(_, l)| l.starts_with(stall::PREFIX))
            {
                for (t, l) in self.lines[probed..]
                    .iter()
                    .filter(|(_, l)| !l.starts_with(stall::PREFIX))
                    .take(400)
                {
                    eprintln!("---- answered, at {:.0} s: {l}", t.as_secs_f64());
                }
            }
            std::panic::resume_unwind(e);
        }
    }
}

/// The value of `key=` in a log line.
pub fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(key)?.strip_prefix('='))
}

/// Sends QMP `commands` (JSON, one per line) over the monitor socket and waits for each
/// reply, so QEMU has acted on them before the socket closes.
pub fn qmp(socket: &Path, commands: &[&str]) {
    let mut qmp = Qmp::connect(socket, Duration::from_secs(5)).expect("QMP socket");
    for c in commands {
        let reply = qmp.execute(c).expect("QMP reply");
        assert!(!reply.contains("\"error\""), "QMP {c}: {reply}");
    }
}

/// The machine of the end-to-end run: Xen 4.17 with a Debian dom0 inside QEMU (TCG), the xHCI
/// controller with a USB stick on port 1, a keyboard on port 2 and a hub on port 3.
/// `cargo xtask e2e` prepares the files and passes them in `USBDOM_E2E_*`.
pub struct NestedXen {
    /// Xen, a multiboot ELF.
    pub xen: String,
    /// dom0's (and the guests') Linux kernel.
    pub kernel: String,
    /// dom0's initramfs, with the scenario (`tests/e2e/dom0-init.sh`).
    pub initrd: String,
    /// The stick's raw image.
    pub stick: String,
}

impl NestedXen {
    /// The files named by `USBDOM_E2E_XEN`, `_KERNEL`, `_INITRD` and `_STICK`.
    pub fn from_env() -> NestedXen {
        let var = |v: &str| {
            std::env::var(v).unwrap_or_else(|_| panic!("{v} is not set: run `cargo xtask e2e`"))
        };
        NestedXen {
            xen: var("USBDOM_E2E_XEN"),
            kernel: var("USBDOM_E2E_KERNEL"),
            initrd: var("USBDOM_E2E_INITRD"),
            stick: var("USBDOM_E2E_STICK"),
        }
    }

    /// QEMU's arguments. `dom0_args` go on dom0's kernel command line (`usbdom.mode=…` picks
    /// the scenario); `qmp` is a socket for the host's own actions (keys, unplugging).
    ///
    /// The outer machine of ../shared/docs/xen-in-qemu.md: q35, an IOMMU for passthrough,
    /// `max,-smap,-vgif` (plain max crashes the PV dom0; for Virtual GIF see below), the xHCI
    /// away from 00:02.0. No i8042:
    /// QMP's key events go to the first keyboard QEMU has, which must be the USB one.
    ///
    /// `iommu=no-sharept`: TCG's `-cpu max` is an AMD CPU (SVM, nested paging), the IOMMU an
    /// Intel VT-d — a pair no real machine has. Xen 4.17 would report "Intel VT-d Shared EPT
    /// tables enabled" and let the VT-d walk an HVM domain's p2m, which is in AMD's nested
    /// page table format, not EPT's; with separate tables Xen keeps VT-d's own and flushes
    /// them. (It was first taken for the cause of the crashes of dom0's and the guests'
    /// processes; `cargo xtask soak` shows those with no passthrough and no USB at all.)
    ///
    /// `spec-ctrl=eager-fpu`: on an AMD CPU Xen switches vCPUs' FPU state lazily (CR0.TS set,
    /// restored on the first #NM), and under QEMU 7.2's TCG a process then now and then
    /// computes with another context's XMM registers. Seen: malloc's `unlink_chunk` taking a
    /// pointer of another process's address space from `%xmm0`, TLS pointers that are garbage;
    /// processes dying in malloc, looping in libc until the run's limit, or exec'ing nothing.
    /// `cargo xtask soak --type pv`: 4-13 crashed processes per 2000-3600 before, none of
    /// 4148 with eager switching.
    ///
    /// `-vgif`: with the Virtual GIF QEMU 7.2's TCG offers, Xen's PVH guests ended now and then
    /// in a triple fault whose saved state is Xen's own, just after its VMRUN (RIP
    /// e008:ffff82d0402044a5, CR2 the same): one in three e2e runs lost a guest so.
    /// `cargo xtask soak --type pvh --usb usbdom`: 10 such triple faults in one run with it,
    /// none without.
    ///
    /// One CPU: with two, QEMU 7.2's two vCPU threads now and then get the emulated VMRUN
    /// back into a guest wrong, and the guest ends in a triple fault at the instruction after
    /// one that exited to Xen (`vmmcall`, `in`, `out`, `wrmsr` to the x2APIC EOI). `cargo
    /// xtask soak --type pvh --usb usbdom` counted 10 in 90 s with two CPUs and none with one,
    /// whose guests also got further (1026 processes and 30 reads against the two CPUs'
    /// guests' 6 reads, dying over and over).
    pub fn args(&self, dom0_args: &str, qmp: Option<&Path>) -> Vec<String> {
        // Experiments on the outer machine (`cargo xtask soak`): USBDOM_E2E_ACCEL and
        // USBDOM_E2E_CPU replace the accelerator's and the CPU's options, USBDOM_E2E_XEN_ARGS
        // is added to Xen's command line.
        let var = |name: &str, default: &str| std::env::var(name).unwrap_or(default.into());
        // USBDOM_E2E_DATAPATH=copy|map: usbdom's `datapath=` in every scenario.
        let mut dom0_args = match std::env::var("USBDOM_E2E_DATAPATH") {
            Ok(path) => format!("{dom0_args} usbdom.datapath={path}"),
            Err(_) => dom0_args.to_string(),
        };
        // USBDOM_E2E_MEMORY=<MiB>: usbdom's `memory` and `maxmem` instead of the config's.
        if let Ok(mib) = std::env::var("USBDOM_E2E_MEMORY") {
            dom0_args = format!("{dom0_args} usbdom.memory={mib}");
        }
        // USBDOM_E2E_SMP: the outer machine's CPUs (1 by default, see above); dom0 has as many
        // vCPUs.
        let smp = var("USBDOM_E2E_SMP", "1");
        let xen_args = format!(
            "console=com1 com1=115200,8n1 loglvl=all guest_loglvl=all dom0_mem=1024M,max:1024M dom0_max_vcpus={smp} noreboot iommu=no-sharept spec-ctrl=eager-fpu {}",
            var("USBDOM_E2E_XEN_ARGS", "")
        );
        let mut args: Vec<String> = [
            "-M",
            "q35,i8042=off",
            "-accel",
            &var("USBDOM_E2E_ACCEL", "tcg,thread=multi,tb-size=256"),
            "-cpu",
            &var("USBDOM_E2E_CPU", "max,-smap,-vgif"),
            "-smp",
            &smp,
            "-m",
            "2560",
            "-display",
            "none",
            "-nodefaults",
            "-no-reboot",
            "-device",
            "intel-iommu,intremap=on",
            "-device",
            "qemu-xhci,id=xhci,addr=0x5",
            "-device",
            "usb-storage,bus=xhci.0,port=1,drive=usbdisk,id=stick",
            // A second controller, the keyboard on it (usbdom drives both).
            "-device",
            "qemu-xhci,id=xhci2,addr=0x6",
            "-device",
            "usb-kbd,bus=xhci2.0,port=1,id=kbd",
            "-device",
            "usb-hub,bus=xhci.0,port=3",
            "-device",
            "usb-wacom-tablet,bus=xhci.0,port=3.1,id=tablet",
            "-append",
            xen_args.trim_end(),
        ]
        .map(String::from)
        .to_vec();
        args.extend([
            "-drive".into(),
            format!("if=none,id=usbdisk,file={},format=raw", self.stick),
            "-kernel".into(),
            self.xen.clone(),
            "-initrd".into(),
            format!(
                "{} console=hvc0 loglevel=6 rdinit=/init {dom0_args},{}",
                self.kernel, self.initrd
            ),
        ]);
        if let Some(socket) = qmp {
            args.extend([
                "-qmp".into(),
                format!("unix:{},server=on,wait=off", socket.display()),
            ]);
        }
        args
    }
}
