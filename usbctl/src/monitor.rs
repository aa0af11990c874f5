//! `usbctl monitor`: the driver domain's live state, read from its serial log. The events and
//! fields used here are listed in `docs/log-events.md`; a change to them is a change to that
//! document and to this reader.

use std::collections::BTreeMap;

use serde_json::{json, Value};

/// One `event=` line: its name, the `t=` of the line (seconds since usbdom booted), and its
/// fields, `"…"` values unquoted.
#[derive(Debug, PartialEq)]
pub struct Event {
    /// The event's name.
    pub name: String,
    /// `t=`.
    pub t: Option<f64>,
    fields: Vec<(String, String)>,
}

impl Event {
    /// A field's value.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.fields
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    fn num<T: std::str::FromStr>(&self, key: &str) -> Option<T> {
        self.get(key)?.parse().ok()
    }
}

/// Reads a log line. Whatever precedes `t=` (a console's own prefix, `(d1) ` from `xl dmesg`)
/// is skipped; a line without `event=` is none.
pub fn parse_line(line: &str) -> Option<Event> {
    let start = line
        .find("t=")
        .filter(|&i| i == 0 || line[..i].ends_with(' '));
    let text = &line[start.unwrap_or(0)..];
    let mut fields = Vec::new();
    let mut rest = text.trim_end_matches(['\r', '\n']);
    while !rest.is_empty() {
        rest = rest.trim_start();
        let Some(eq) = rest.find('=') else { break };
        let key = &rest[..eq];
        if key.is_empty() || key.contains(char::is_whitespace) {
            // Not key=value: skip the word.
            rest = rest.split_once(' ').map_or("", |(_, r)| r);
            continue;
        }
        rest = &rest[eq + 1..];
        let value = if let Some(quoted) = rest.strip_prefix('"') {
            // Rust's `{:?}`: backslash escapes inside double quotes.
            let mut v = String::new();
            let mut chars = quoted.char_indices();
            let mut end = quoted.len();
            while let Some((i, c)) = chars.next() {
                match c {
                    '"' => {
                        end = i + 1;
                        break;
                    }
                    '\\' => match chars.next() {
                        Some((_, 'n')) => v.push('\n'),
                        Some((_, 't')) => v.push('\t'),
                        Some((_, e)) => v.push(e),
                        None => {}
                    },
                    c => v.push(c),
                }
            }
            rest = &quoted[end.min(quoted.len())..];
            v
        } else {
            let end = rest.find(' ').unwrap_or(rest.len());
            let v = rest[..end].to_string();
            rest = &rest[end..];
            v
        };
        fields.push((key.to_string(), value));
    }
    let name = fields.iter().find(|(k, _)| k == "event")?.1.clone();
    let t = fields
        .iter()
        .find(|(k, _)| k == "t")
        .and_then(|(_, v)| v.parse().ok());
    Some(Event { name, t, fields })
}

/// A host device usbdom enumerated.
#[derive(Clone, Debug, PartialEq)]
pub struct Device {
    /// idVendor, idProduct (hex).
    pub vid: String,
    /// idProduct.
    pub pid: String,
    /// `low`, `full`, `high`, `super`.
    pub speed: String,
    /// The product string.
    pub product: String,
    /// Hubs are never assigned.
    pub hub: bool,
    /// (domid, devid, port) it is connected to.
    pub owner: Option<(u32, u32, u32)>,
}

/// A guest's virtual controller.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Frontend {
    /// Whether its rings are connected.
    pub connected: bool,
    /// Root-hub ports.
    pub ports: u32,
    /// USB version.
    pub usb_ver: u32,
    /// `event=stats` counters.
    pub completed: u64,
    /// Requests answered with an error.
    pub errors: u64,
    /// Unlinks that found their request.
    pub unlinked: u64,
    /// Times its URB ring was found full.
    pub ring_full: u64,
    /// Bytes moved.
    pub bytes: u64,
    /// Requests in flight at the last stats line.
    pub in_flight: u64,
    /// Bytes per second between its last two stats lines.
    pub bytes_per_s: f64,
    last: Option<(f64, u64)>,
}

/// What the log has told so far.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct State {
    /// `t=` of the last event.
    pub t: f64,
    /// usbdom's platform (`xen-hvm`, `xen-pvh`, `qemu`) since its last boot.
    pub platform: Option<String>,
    /// Whether it reached `event=ready`.
    pub ready: bool,
    /// Host devices by bus id.
    pub devices: BTreeMap<String, Device>,
    /// Virtual controllers by (domid, devid).
    pub frontends: BTreeMap<(u32, u32), Frontend>,
    /// Assignments refused: (domid, devid, port) → reason.
    pub refused: BTreeMap<(u32, u32, u32), String>,
    /// `event=panic`: where and what.
    pub panic: Option<(String, String)>,
}

impl State {
    /// Takes one event in; returns whether it is one the state follows (the others change
    /// nothing but `t`).
    pub fn apply(&mut self, e: &Event) -> bool {
        if let Some(t) = e.t {
            self.t = t;
        }
        let port_id = |e: &Event| -> Option<(u32, u32, u32)> {
            Some((e.num("domid")?, e.num("devid")?, e.num("port")?))
        };
        let fe_id = |e: &Event| -> Option<(u32, u32)> { Some((e.num("domid")?, e.num("devid")?)) };
        match e.name.as_str() {
            "boot" => {
                // A new run of usbdom: nothing of the last one holds.
                *self = State {
                    t: self.t,
                    platform: e.get("platform").map(String::from),
                    ..State::default()
                };
            }
            "ready" => self.ready = true,
            "usb_device" => {
                if let Some(busid) = e.get("busid") {
                    self.devices.insert(
                        busid.to_string(),
                        Device {
                            vid: e.get("vid").unwrap_or("").into(),
                            pid: e.get("pid").unwrap_or("").into(),
                            speed: e.get("speed").unwrap_or("").into(),
                            product: e.get("product").unwrap_or("").into(),
                            hub: e.get("class") == Some("09"),
                            owner: None,
                        },
                    );
                }
            }
            "usb_device_gone" => {
                if let Some(busid) = e.get("busid") {
                    self.devices.remove(busid);
                }
            }
            "port_connected" => {
                if let (Some(busid), Some(at)) = (e.get("busid"), port_id(e)) {
                    self.refused.remove(&at);
                    if let Some(d) = self.devices.get_mut(busid) {
                        d.owner = Some(at);
                    }
                }
            }
            "port_disconnected" => {
                if let Some(at) = port_id(e) {
                    for d in self.devices.values_mut() {
                        if d.owner == Some(at) {
                            d.owner = None;
                        }
                    }
                }
            }
            "port_refused" => {
                if let Some(at) = port_id(e) {
                    let mut why = e.get("reason").unwrap_or("").to_string();
                    if let Some(text) = e.get("text") {
                        why = format!("{why} {} {text}", e.get("rule").unwrap_or(""));
                    }
                    self.refused.insert(at, why);
                }
            }
            "frontend_connected" => {
                if let Some(id) = fe_id(e) {
                    let f = self.frontends.entry(id).or_default();
                    f.connected = true;
                    f.ports = e.num("ports").unwrap_or(0);
                    f.usb_ver = e.num("usb_ver").unwrap_or(0);
                }
            }
            "vusb_initwait" => {
                if let Some(id) = fe_id(e) {
                    let f = self.frontends.entry(id).or_default();
                    f.ports = e.num("ports").unwrap_or(f.ports);
                    f.usb_ver = e.num("usb_ver").unwrap_or(f.usb_ver);
                }
            }
            "frontend_disconnected" => {
                if let Some(f) = fe_id(e).and_then(|id| self.frontends.get_mut(&id)) {
                    f.connected = false;
                    f.in_flight = 0;
                    f.bytes_per_s = 0.0;
                }
            }
            "vusb_removed" => {
                if let Some(id) = fe_id(e) {
                    self.frontends.remove(&id);
                    for d in self.devices.values_mut() {
                        if d.owner.is_some_and(|(dom, dev, _)| (dom, dev) == id) {
                            d.owner = None;
                        }
                    }
                    self.refused.retain(|(dom, dev, _), _| (*dom, *dev) != id);
                }
            }
            "stats" => {
                if let Some(id) = fe_id(e) {
                    let f = self.frontends.entry(id).or_default();
                    f.completed = e.num("completed").unwrap_or(f.completed);
                    f.errors = e.num("errors").unwrap_or(f.errors);
                    f.unlinked = e.num("unlinked").unwrap_or(f.unlinked);
                    f.ring_full = e.num("ring_full").unwrap_or(f.ring_full);
                    f.in_flight = e.num("in_flight").unwrap_or(f.in_flight);
                    let bytes = e.num("bytes").unwrap_or(f.bytes);
                    if let (Some((t0, b0)), Some(t)) = (f.last, e.t) {
                        if t > t0 {
                            f.bytes_per_s = bytes.saturating_sub(b0) as f64 / (t - t0);
                        }
                    }
                    f.bytes = bytes;
                    f.last = e.t.map(|t| (t, bytes));
                }
            }
            "panic" => {
                self.panic = Some((
                    e.get("location").unwrap_or("").into(),
                    e.get("message").unwrap_or("").into(),
                ));
            }
            _ => return false,
        }
        true
    }

    /// The state for a person: devices with owners, then controllers with their counters.
    /// `name` gives a domain's name when it is known.
    pub fn text(&self, name: &dyn Fn(u32) -> Option<String>) -> String {
        let dom = |d: u32| name(d).map_or(format!("domain {d}"), |n| format!("{n} ({d})"));
        let mut out = format!(
            "usbdom at t={:.1} s: {}{}\n",
            self.t,
            self.platform.as_deref().unwrap_or("not booted"),
            if self.ready { ", ready" } else { "" }
        );
        out += &format!(
            "{:<8} {:<9} {:<6} {:<28} {}\n",
            "BUSID", "VID:PID", "SPEED", "OWNER", "PRODUCT"
        );
        for (busid, d) in &self.devices {
            let owner = match d.owner {
                _ if d.hub => "hub".to_string(),
                Some((domid, devid, port)) => format!("{} ctl {devid} port {port}", dom(domid)),
                None => "free".into(),
            };
            out += &format!(
                "{busid:<8} {:<9} {:<6} {owner:<28} {}\n",
                format!("{}:{}", d.vid, d.pid),
                d.speed,
                d.product
            );
        }
        if !self.frontends.is_empty() {
            out += &format!(
                "{:<24} {:<6} {:<10} {:>10} {:>7} {:>9} {:>10} {:>9}\n",
                "CONTROLLER", "PORTS", "STATE", "URBS", "ERRORS", "IN_FLIGHT", "MB", "MB/S"
            );
        }
        for ((domid, devid), f) in &self.frontends {
            out += &format!(
                "{:<24} {:<6} {:<10} {:>10} {:>7} {:>9} {:>10.1} {:>9.2}\n",
                format!("{} ctl {devid}", dom(*domid)),
                format!("{}x{}", f.ports, if f.usb_ver == 1 { "1.1" } else { "2.0" }),
                if f.connected { "connected" } else { "waiting" },
                f.completed,
                f.errors,
                f.in_flight,
                f.bytes as f64 / 1e6,
                f.bytes_per_s / 1e6
            );
        }
        for ((domid, devid, port), why) in &self.refused {
            out += &format!("refused: {} ctl {devid} port {port}: {why}\n", dom(*domid));
        }
        out
    }

    /// The same as JSON values, one per line of output: a `state` header, then a `device`
    /// per host device and a `controller` per virtual controller.
    pub fn json(&self, name: &dyn Fn(u32) -> Option<String>) -> Vec<Value> {
        let mut out = vec![json!({
            "type": "state",
            "t": self.t,
            "platform": self.platform,
            "ready": self.ready,
        })];
        for (busid, d) in &self.devices {
            let owner = d.owner.map(|(domid, devid, port)| {
                json!({"domid": domid, "domain": name(domid), "devid": devid, "port": port})
            });
            out.push(json!({
                "type": "device",
                "busid": busid,
                "vid": d.vid,
                "pid": d.pid,
                "speed": d.speed,
                "product": d.product,
                "hub": d.hub,
                "owner": owner,
            }));
        }
        for ((domid, devid), f) in &self.frontends {
            out.push(json!({
                "type": "controller",
                "domid": domid,
                "domain": name(*domid),
                "devid": devid,
                "connected": f.connected,
                "ports": f.ports,
                "usb_ver": f.usb_ver,
                "completed": f.completed,
                "errors": f.errors,
                "unlinked": f.unlinked,
                "ring_full": f.ring_full,
                "in_flight": f.in_flight,
                "bytes": f.bytes,
                "bytes_per_s": f.bytes_per_s,
            }));
        }
        for ((domid, devid, port), why) in &self.refused {
            out.push(json!({
                "type": "refused", "domid": domid, "devid": devid, "port": port, "reason": why,
            }));
        }
        out
    }
}

/// Reads log lines from `input` and prints the state to `out`: once at the end, or, when
/// `more` says to wait for more lines (`--follow`), each time a batch of lines changed it.
/// Returns the state; one with a panic ends the reading at once.
pub fn watch(
    input: &mut dyn std::io::BufRead,
    more: &mut dyn FnMut() -> bool,
    json: bool,
    name: &dyn Fn(u32) -> Option<String>,
    out: &mut dyn std::io::Write,
) -> std::io::Result<State> {
    let mut state = State::default();
    // Printed once at least, then again after lines that changed it.
    let mut dirty = true;
    // A line without its end yet stays here until the rest is read.
    let mut line = Vec::new();
    loop {
        input.read_until(b'\n', &mut line)?;
        if line.ends_with(b"\n") {
            if let Some(e) = parse_line(&String::from_utf8_lossy(&line)) {
                dirty |= state.apply(&e);
                if state.panic.is_some() {
                    print(&state, json, name, out)?;
                    return Ok(state);
                }
            }
            line.clear();
            continue;
        }
        // The end of what is there now.
        if dirty {
            print(&state, json, name, out)?;
            dirty = false;
        }
        if !more() {
            return Ok(state);
        }
    }
}

fn print(
    state: &State,
    json: bool,
    name: &dyn Fn(u32) -> Option<String>,
    out: &mut dyn std::io::Write,
) -> std::io::Result<()> {
    if json {
        for v in state.json(name) {
            writeln!(out, "{v}")?;
        }
    } else {
        writeln!(out, "{}", state.text(name))?;
    }
    out.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_read_past_prefixes_and_quotes() {
        let e = parse_line(
            "(d1) t=1.5 level=info event=usb_device busid=1-2 vid=0627 product=\"QEMU \\\"USB\\\" Keyboard\" mps0=64\r",
        )
        .unwrap();
        assert_eq!(e.name, "usb_device");
        assert_eq!(e.t, Some(1.5));
        assert_eq!(e.get("product"), Some("QEMU \"USB\" Keyboard"));
        assert_eq!(e.get("mps0"), Some("64"));
        assert_eq!(parse_line("[  12.5] usb 1-1: new device"), None);
        assert_eq!(parse_line(""), None);
        let e =
            parse_line("t=9 level=error event=panic location=src/x.rs:3 message=\"boom\"").unwrap();
        assert_eq!(
            (e.get("location"), e.get("message")),
            (Some("src/x.rs:3"), Some("boom"))
        );
    }

    #[test]
    fn stats_give_throughput_and_a_new_boot_forgets() {
        let mut s = State::default();
        for l in [
            "t=1 event=boot platform=xen-hvm",
            "t=2 event=usb_device busid=2-1 vid=46f4 pid=0001 speed=super class=00 product=\"Stick\"",
            "t=3 event=frontend_connected domid=5 devid=0 ports=8 usb_ver=2",
            "t=4 event=port_connected domid=5 devid=0 port=1 busid=2-1",
            "t=5 event=stats domid=5 devid=0 completed=10 errors=0 bytes=1000000 in_flight=2",
            "t=7 event=stats domid=5 devid=0 completed=30 errors=1 bytes=5000000 in_flight=0",
        ] {
            assert!(s.apply(&parse_line(l).unwrap()), "{l}");
        }
        assert_eq!(s.devices["2-1"].owner, Some((5, 0, 1)));
        let f = &s.frontends[&(5, 0)];
        assert_eq!((f.completed, f.errors, f.in_flight), (30, 1, 0));
        assert_eq!(f.bytes_per_s, 2e6);
        assert!(!s.apply(&parse_line("t=8 event=memmap addr=0x0").unwrap()));
        assert!(s.apply(&parse_line("t=9 event=boot platform=qemu").unwrap()));
        assert!(s.devices.is_empty() && s.frontends.is_empty());
    }
}
