//! A QMP client: the tests' host-side actions (keys, plugging) and the stall probe's
//! questions.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

/// A QMP connection, past its greeting and capabilities negotiation.
pub struct Qmp {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

impl Qmp {
    /// Connects to `socket`; a reply that takes longer than `timeout` is an error.
    pub fn connect(socket: &Path, timeout: Duration) -> Result<Qmp, String> {
        let stream = UnixStream::connect(socket).map_err(|e| format!("connect: {e}"))?;
        stream
            .set_read_timeout(Some(timeout))
            .map_err(|e| e.to_string())?;
        let writer = stream.try_clone().map_err(|e| e.to_string())?;
        let mut qmp = Qmp {
            reader: BufReader::new(stream),
            writer,
        };
        let mut greeting = String::new();
        qmp.reader
            .read_line(&mut greeting)
            .map_err(|e| format!("no greeting: {e}"))?;
        let reply = qmp.execute(r#"{"execute":"qmp_capabilities"}"#)?;
        if reply.contains("\"error\"") {
            return Err(format!("qmp_capabilities: {reply}"));
        }
        Ok(qmp)
    }

    /// Sends `command` and returns its reply line (events before it are skipped).
    pub fn execute(&mut self, command: &str) -> Result<String, String> {
        writeln!(self.writer, "{command}").map_err(|e| e.to_string())?;
        let mut line = String::new();
        loop {
            line.clear();
            self.reader
                .read_line(&mut line)
                .map_err(|e| format!("no reply to {command}: {e}"))?;
            if line.is_empty() {
                return Err("QMP closed".into());
            }
            if line.contains("\"return\"") || line.contains("\"error\"") {
                return Ok(line.trim().to_string());
            }
        }
    }

    /// A human monitor command's output.
    pub fn human(&mut self, command: &str) -> Result<String, String> {
        let reply = self.execute(&format!(
            r#"{{"execute":"human-monitor-command","arguments":{{"command-line":"{command}"}}}}"#
        ))?;
        let text = reply
            .split_once("\"return\": \"")
            .and_then(|(_, rest)| rest.rsplit_once('"'))
            .map(|(text, _)| text)
            .ok_or(format!("{command}: {reply}"))?;
        Ok(text
            .replace("\\r\\n", "\n")
            .replace("\\n", "\n")
            .replace("\\t", " ")
            .replace("\\\"", "\""))
    }
}

/// The QMP command that presses (`down`) or releases `key`, a QEMU qcode ("a", "esc"), on the
/// machine's first keyboard.
pub fn key_event(key: &str, down: bool) -> String {
    format!(
        r#"{{"execute":"input-send-event","arguments":{{"events":[{{"type":"key","data":{{"down":{down},"key":{{"type":"qcode","data":"{key}"}}}}}}]}}}}"#
    )
}
