//! The `log` backend: one line per event (see `driver_domain::logfmt`) to every sink.
//!
//! Once Xen's PV console exists it carries every line at once: a line is a copy into a
//! shared ring and one notification. COM1 then gets the same lines through a queue that the
//! main loop drains a few bytes at a time when it has nothing else to do ([`drain_serial`]):
//! every byte to an emulated UART is a trap to the device model in dom0, which under nested
//! virtualisation costs about a millisecond, so a line written at once took 0.2–0.5 s of
//! the driver domain, and a guest that made usbdom log could take all of its time. A line
//! that finds the queue full is dropped from COM1 only, and the next one says how many were
//! (`event=log_dropped`).
//!
//! The PV console's ring is filled as far as it has room, the rest queued and moved on each
//! main-loop turn ([`flush_console`]): writing never waits for xenconsoled in dom0 (a full
//! ring used to hold the driver domain up to 50 ms a line, notifying dom0 all the while).

use core::fmt::{self, Write};
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use heapless::{Deque, String};
use log::{LevelFilter, Log, Metadata, Record};

use super::{serial, time};

static COM1_PRESENT: AtomicBool = AtomicBool::new(false);
static LOCK: spin::Mutex<()> = spin::Mutex::new(());
static XEN_CONSOLE: spin::Mutex<Option<super::xen_guest::XenConsole>> = spin::Mutex::new(None);

/// Bytes of the boot log kept until the Xen console exists, so `xl console -t pv` and
/// xenconsoled's file show the whole boot.
const EARLY_BYTES: usize = 16 * 1024;
static EARLY: spin::Mutex<Option<heapless::Vec<u8, EARLY_BYTES>>> =
    spin::Mutex::new(Some(heapless::Vec::new()));

/// Bytes waiting for COM1 while the Xen console carries the log.
const SERIAL_QUEUE_BYTES: usize = 16 * 1024;
static SERIAL_QUEUE: spin::Mutex<Deque<u8, SERIAL_QUEUE_BYTES>> = spin::Mutex::new(Deque::new());
/// Lines dropped from COM1 since the last `event=log_dropped`.
static SERIAL_DROPPED: AtomicU64 = AtomicU64::new(0);

/// Bytes waiting for room in the PV console's ring.
const CONSOLE_QUEUE_BYTES: usize = 16 * 1024;
static CONSOLE_QUEUE: spin::Mutex<Deque<u8, CONSOLE_QUEUE_BYTES>> = spin::Mutex::new(Deque::new());
/// Lines dropped from the PV console since the last `event=log_dropped sink=console`.
static CONSOLE_DROPPED: AtomicU64 = AtomicU64::new(0);

/// The longest line kept whole; a longer one is cut.
const LINE_BYTES: usize = 768;

/// One formatted line; what does not fit is cut.
struct Line(String<LINE_BYTES>);

impl Write for Line {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        for c in s.chars() {
            if self.0.push(c).is_err() {
                break;
            }
        }
        Ok(())
    }
}

fn format(level: log::Level, args: &fmt::Arguments<'_>) -> Line {
    let mut line = Line(String::new());
    let _ = driver_domain::logfmt::write_line(&mut line, time::now_micros(), level, args);
    if !line.0.ends_with('\n') {
        // Cut: still one line.
        line.0.pop();
        let _ = line.0.push('\n');
    }
    line
}

/// Queues `line` for a sink (`sink`), or counts it in `dropped` when it does not fit; a
/// line saying how many were dropped goes first once there is room again.
fn queue_line<const N: usize>(q: &mut Deque<u8, N>, line: &str, dropped: &AtomicU64, sink: &str) {
    let lost = dropped.load(Ordering::Relaxed);
    if lost > 0 && q.capacity() - q.len() >= LINE_BYTES + line.len() {
        dropped.store(0, Ordering::Relaxed);
        let note = format(
            log::Level::Warn,
            &format_args!("event=log_dropped sink={sink} lines={lost}"),
        );
        for &b in note.0.as_bytes() {
            let _ = q.push_back(b);
        }
    }
    if q.capacity() - q.len() < line.len() {
        dropped.fetch_add(1, Ordering::Relaxed);
        return;
    }
    for &b in line.as_bytes() {
        let _ = q.push_back(b);
    }
}

/// Moves what the PV console's ring has room for out of the queue.
fn flush_console_queue<const N: usize>(
    console: &super::xen_guest::XenConsole,
    q: &mut Deque<u8, N>,
) {
    while !q.is_empty() {
        let (front, _) = q.as_slices();
        let n = console.write_some(front);
        if n == 0 {
            return;
        }
        for _ in 0..n {
            q.pop_front();
        }
    }
}

/// Writes a line to every sink; with the Xen console, COM1 gets it later, and never a
/// `periodic` one (counters logged every second: on COM1 they took most of its share).
fn emit(line: &str, periodic: bool) {
    let com1 = COM1_PRESENT.load(Ordering::Relaxed);
    if let Some(console) = XEN_CONSOLE.try_lock().as_ref().and_then(|c| c.as_ref()) {
        {
            let mut q = CONSOLE_QUEUE.lock();
            queue_line(&mut q, line, &CONSOLE_DROPPED, "console");
            flush_console_queue(console, &mut q);
        }
        if com1 && !periodic {
            queue_line(&mut SERIAL_QUEUE.lock(), line, &SERIAL_DROPPED, "com1");
        }
        return;
    }
    serial::write(line.as_bytes(), com1);
    if let Some(early) = EARLY.try_lock().as_mut().and_then(|e| e.as_mut()) {
        // Whatever does not fit is still on COM1 and the debug port.
        let room = early.capacity() - early.len();
        let _ = early.extend_from_slice(&line.as_bytes()[..line.len().min(room)]);
    }
}

struct Logger;

impl Log for Logger {
    fn enabled(&self, metadata: &Metadata) -> bool {
        metadata.level() <= log::max_level()
    }

    fn log(&self, record: &Record) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let line = format(record.level(), record.args());
        let periodic = record.target() == usbback::PERIODIC_TARGET;
        // Interrupt handlers log too: keep them out while a line is half written.
        super::cpu::without_interrupts(|| {
            let _guard = LOCK.lock();
            emit(&line.0, periodic);
        });
    }

    fn flush(&self) {}
}

static LOGGER: Logger = Logger;

/// Sets up the sinks and installs the logger.
pub fn init(level: LevelFilter) {
    COM1_PRESENT.store(serial::init(), Ordering::Relaxed);
    // Only fails if a logger is already set, which nothing else does.
    let _ = log::set_logger(&LOGGER);
    log::set_max_level(level);
}

/// The share of the driver domain's time COM1 may take while the Xen console carries the
/// log, in percent. Every byte to an emulated UART is a trap to dom0's device model: some
/// microseconds on hardware (thousands of bytes a second within the share), about a
/// millisecond under nested virtualisation (some 50). A byte budget of 1 KB/s let COM1 take
/// a third of usbdom's time with guests reading, and all of it under a logging attack.
const SERIAL_SHARE_PERCENT: u64 = 5;
/// The most COM1 time saved up while it had nothing to write, in µs.
const SERIAL_BURST_US: i64 = 20_000;
/// COM1's time credit in µs (negative after a turn that cost more) and when it was last
/// earned.
static SERIAL_CREDIT: spin::Mutex<(i64, u64)> = spin::Mutex::new((0, 0));

/// Moves what the PV console's ring has room for out of its queue (the main loop calls this
/// once a turn).
pub fn flush_console() {
    super::cpu::without_interrupts(|| {
        if let Some(console) = XEN_CONSOLE.try_lock().as_ref().and_then(|c| c.as_ref()) {
            if let Some(mut q) = CONSOLE_QUEUE.try_lock() {
                flush_console_queue(console, &mut q);
            }
        }
    });
}

/// COM1's time credit now, in µs, brought up to date.
fn serial_credit() -> i64 {
    let now = time::now_micros();
    let mut credit = SERIAL_CREDIT.lock();
    let (us, at) = *credit;
    let earned = (now.saturating_sub(at) * SERIAL_SHARE_PERCENT / 100) as i64;
    let us = us.saturating_add(earned).min(SERIAL_BURST_US);
    *credit = (us, now);
    us
}

/// Whether bytes wait for COM1 and COM1 is within its share of the time: the main loop
/// then moves some ([`drain_serial`]) instead of halting. Every byte traps to dom0's device
/// model, so this is done only when nothing else waits: a guest's request never queues
/// behind the serial port.
pub fn serial_due() -> bool {
    !SERIAL_QUEUE.lock().is_empty() && serial_credit() > 0
}

/// Moves up to `max` queued bytes to COM1 while COM1 is within its [`SERIAL_SHARE_PERCENT`]
/// of the time, measured.
pub fn drain_serial(max: usize) {
    let max = if serial_credit() > 0 { max } else { 0 };
    let mut chunk: heapless::Vec<u8, 64> = heapless::Vec::new();
    super::cpu::without_interrupts(|| {
        let mut q = SERIAL_QUEUE.lock();
        while chunk.len() < max.min(chunk.capacity()) {
            match q.pop_front() {
                Some(b) => {
                    let _ = chunk.push(b);
                }
                None => break,
            }
        }
    });
    if !chunk.is_empty() {
        let before = time::now_micros();
        serial::write(&chunk, true);
        let cost = time::now_micros().saturating_sub(before) as i64;
        let mut credit = SERIAL_CREDIT.lock();
        credit.0 = credit.0.saturating_sub(cost);
    }
}

/// Writes a line for a panic even if the logger's lock is held (the panic may have struck
/// inside a log call): the line may interleave, but it is never lost. COM1 gets what was
/// queued for it first.
pub fn emergency(args: fmt::Arguments<'_>) {
    let guard = LOCK.try_lock();
    let line = format(log::Level::Error, &args);
    if let Some(mut q) = SERIAL_QUEUE.try_lock() {
        while let Some(b) = q.pop_front() {
            serial::write(&[b], COM1_PRESENT.load(Ordering::Relaxed));
        }
    }
    serial::write(line.0.as_bytes(), COM1_PRESENT.load(Ordering::Relaxed));
    if let Some(console) = XEN_CONSOLE.try_lock().as_ref().and_then(|c| c.as_ref()) {
        console.write(line.0.as_bytes());
    }
    drop(guard);
}

/// Adds the Xen PV console ring as a sink.
/// The boot log so far is written to it first.
pub fn set_xen_console(console: super::xen_guest::XenConsole) {
    super::cpu::without_interrupts(|| {
        let _guard = LOCK.lock();
        if let Some(early) = EARLY.lock().take() {
            console.write(&early);
        }
        *XEN_CONSOLE.lock() = Some(console);
    });
}

/// Whether COM1 answered at boot (a Xen HVM domU and plain QEMU have one, a PVH domU not).
pub fn com1_present() -> bool {
    COM1_PRESENT.load(Ordering::Relaxed)
}
