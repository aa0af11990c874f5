//! The `log` backend: one line per event (see `platform::logfmt`) to every sink.

use core::fmt::{self, Write};
use core::sync::atomic::{AtomicBool, Ordering};

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

struct Sinks;

impl Write for Sinks {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        serial::write(s.as_bytes(), COM1_PRESENT.load(Ordering::Relaxed));
        if let Some(console) = XEN_CONSOLE.try_lock().as_ref().and_then(|c| c.as_ref()) {
            console.write(s.as_bytes());
        } else if let Some(early) = EARLY.try_lock().as_mut().and_then(|e| e.as_mut()) {
            // Whatever does not fit is still on COM1 and the debug port.
            let room = early.capacity() - early.len();
            let _ = early.extend_from_slice(&s.as_bytes()[..s.len().min(room)]);
        }
        Ok(())
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
        // Interrupt handlers log too: keep them out while a line is half written.
        super::cpu::without_interrupts(|| {
            let _guard = LOCK.lock();
            let _ = platform::logfmt::write_line(
                &mut Sinks,
                time::now_micros(),
                record.level(),
                record.args(),
            );
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

/// Writes a line for a panic even if the logger's lock is held (the panic may have struck
/// inside a log call): the line may interleave, but it is never lost.
pub fn emergency(args: fmt::Arguments<'_>) {
    let guard = LOCK.try_lock();
    let _ = platform::logfmt::write_line(&mut Sinks, time::now_micros(), log::Level::Error, &args);
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
