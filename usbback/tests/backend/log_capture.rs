//! The log lines the calling test's own thread wrote (tests run on threads of their own), so
//! a test can check what a user reading the log would see.

use std::cell::RefCell;

struct Capture;

thread_local! {
    static LINES: RefCell<Vec<String>> = const { RefCell::new(Vec::new()) };
}

impl log::Log for Capture {
    fn enabled(&self, _: &log::Metadata) -> bool {
        true
    }

    fn log(&self, record: &log::Record) {
        LINES.with(|l| l.borrow_mut().push(record.args().to_string()));
    }

    fn flush(&self) {}
}

static CAPTURE: Capture = Capture;

/// Captures from now on, every level included (the first call installs the logger).
pub fn start() {
    let _ = log::set_logger(&CAPTURE);
    log::set_max_level(log::LevelFilter::Trace);
    LINES.with(|l| l.borrow_mut().clear());
}

/// The lines of `event` this thread logged since [`start`].
pub fn events(event: &str) -> Vec<String> {
    let tag = format!("event={event} ");
    LINES.with(|l| {
        l.borrow()
            .iter()
            .filter(|line| line.starts_with(&tag))
            .cloned()
            .collect()
    })
}
