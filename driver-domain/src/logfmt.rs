//! The serial log's line format: `t=<seconds.micros> level=<level> <message>`.
//!
//! Messages themselves are `event=<name> key=value …` (one event per line); this adds the
//! monotonic timestamp and level in the same `key=value` form so scripts can split every
//! field the same way.

use core::fmt::{self, Write};

/// Writes one log line (with its trailing newline).
pub fn write_line(
    out: &mut impl Write,
    micros: u64,
    level: log::Level,
    args: &fmt::Arguments<'_>,
) -> fmt::Result {
    let level = match level {
        log::Level::Error => "error",
        log::Level::Warn => "warn",
        log::Level::Info => "info",
        log::Level::Debug => "debug",
        log::Level::Trace => "trace",
    };
    writeln!(
        out,
        "t={}.{:06} level={level} {args}",
        micros / 1_000_000,
        micros % 1_000_000
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_carry_time_level_and_message() {
        let mut s = std::string::String::new();
        write_line(
            &mut s,
            12_003_004,
            log::Level::Info,
            &format_args!("event=boot x={}", 5),
        )
        .unwrap();
        assert_eq!(s, "t=12.003004 level=info event=boot x=5\n");
    }
}
