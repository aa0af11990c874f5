//! The original PVUSB's boot-time syntax in a guest's own `xl` config file, which `xl` ignores
//! (it skips keys it does not know):
//!
//! ```text
//! vusb = [ 'usbver=2, numports=8, port_1=1-1, port_2=2-4.3',
//!          'port_1=0627:0001, backend=usbdom' ]
//! ```
//!
//! One string per virtual controller: `usbver` 1 or 2 (default 2), `numports` 1..=31 (default
//! 8), `port_<N>` a device to give port N — a bus id, or `vid:pid[:serial]` to follow the
//! device to whatever port it is plugged into — and `backend`, the driver domain (default
//! `usbdom`). The file is read as `xl` reads it: `key = value` statements, `#` comments,
//! strings in single or double quotes, lists in brackets over several lines.

use xen::pvusb::DeviceSelector;

use crate::Error;

/// One virtual controller of a `vusb` list.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Vusb {
    /// USB version, 1, 2 or 3 (3: a USB 3 controller, for guests whose frontend knows it,
    /// `docs/pvusb-features.md`).
    pub usb_ver: u32,
    /// Root-hub ports.
    pub ports: u32,
    /// The driver domain serving it, when the entry names one.
    pub backend: Option<String>,
    /// Devices for ports, by port number.
    pub assigned: Vec<(u32, DeviceSelector)>,
}

/// What usbctl takes from an xl config file: a guest's, or the driver domain's (`usbctl start`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GuestConfig {
    /// `name`.
    pub name: Option<String>,
    /// `vusb`, in order.
    pub vusb: Vec<Vusb>,
    /// `pci`: the devices passed through (the driver domain's USB controllers), each as xl
    /// takes it (`0000:00:14.0`, maybe with `,option=…`).
    pub pci: Vec<String>,
    /// `serial` (the driver domain's log: `file:/var/log/xen/usbdom-serial.log`).
    pub serial: Option<String>,
}

#[derive(Clone, Debug, PartialEq)]
enum Token {
    Word(String),
    Str(String),
    Sym(char),
    /// The end of a statement: a newline outside brackets, or `;`.
    End,
}

/// Splits `text` into tokens, each with its 1-based line.
fn tokens(file: &str, text: &str) -> Result<Vec<(usize, Token)>, Error> {
    let mut out = Vec::new();
    let mut chars = text.chars().peekable();
    let mut line = 1;
    let mut depth = 0u32;
    while let Some(c) = chars.next() {
        match c {
            '\n' => {
                if depth == 0 {
                    out.push((line, Token::End));
                }
                line += 1;
            }
            ';' if depth == 0 => out.push((line, Token::End)),
            '#' => {
                while chars.peek().is_some_and(|c| *c != '\n') {
                    chars.next();
                }
            }
            '\'' | '"' => {
                let start = line;
                let mut s = String::new();
                loop {
                    match chars.next() {
                        Some(q) if q == c => break,
                        Some('\\') => match chars.next() {
                            Some(e) => s.push(e),
                            None => break,
                        },
                        Some('\n') | None => {
                            return Err(Error(format!("{file}:{start}: unterminated string")))
                        }
                        Some(ch) => s.push(ch),
                    }
                }
                out.push((start, Token::Str(s)));
            }
            '[' | ']' | '=' | ',' => {
                if c == '[' {
                    depth += 1;
                } else if c == ']' {
                    depth = depth.saturating_sub(1);
                }
                out.push((line, Token::Sym(c)));
            }
            c if c.is_whitespace() => {}
            c => {
                let mut w = String::from(c);
                while let Some(&n) = chars.peek() {
                    if n.is_whitespace() || "[]=,;#'\"".contains(n) {
                        break;
                    }
                    w.push(n);
                    chars.next();
                }
                out.push((line, Token::Word(w)));
            }
        }
    }
    out.push((line, Token::End));
    Ok(out)
}

/// A statement's value: a string or bare word, or a list of them (each with its line).
enum Value {
    One(String),
    List(Vec<(usize, String)>),
}

/// Reads a guest's config file's text; `file` names it in errors.
pub fn parse(file: &str, text: &str) -> Result<GuestConfig, Error> {
    let toks = tokens(file, text)?;
    let mut cfg = GuestConfig::default();
    let mut i = 0;
    let syntax = |line: usize, what: &str| Error(format!("{file}:{line}: {what}"));
    while i < toks.len() {
        let (line, ref t) = toks[i];
        let key = match t {
            Token::End => {
                i += 1;
                continue;
            }
            Token::Word(k) => k.clone(),
            _ => return Err(syntax(line, "expected `key = value`")),
        };
        if toks.get(i + 1).map(|t| &t.1) != Some(&Token::Sym('=')) {
            return Err(syntax(line, &format!("expected `=` after {key}")));
        }
        i += 2;
        let value = match toks.get(i) {
            Some((_, Token::Str(s) | Token::Word(s))) => {
                i += 1;
                Value::One(s.clone())
            }
            Some((_, Token::Sym('['))) => {
                i += 1;
                let mut items = Vec::new();
                loop {
                    match toks.get(i) {
                        Some((_, Token::Sym(']'))) => {
                            i += 1;
                            break;
                        }
                        Some((_, Token::Sym(','))) => i += 1,
                        Some((l, Token::Str(s) | Token::Word(s))) => {
                            items.push((*l, s.clone()));
                            i += 1;
                        }
                        Some((_, Token::End)) | None => {
                            return Err(syntax(line, &format!("unterminated {key} list")))
                        }
                        Some((l, _)) => {
                            return Err(syntax(*l, &format!("unexpected token in the {key} list")))
                        }
                    }
                }
                Value::List(items)
            }
            _ => return Err(syntax(line, &format!("{key} has no value"))),
        };
        if !matches!(toks.get(i), Some((_, Token::End))) {
            return Err(syntax(line, &format!("more after the value of {key}")));
        }
        match (key.as_str(), value) {
            ("name", Value::One(n)) => cfg.name = Some(n),
            ("name", Value::List(_)) => return Err(syntax(line, "name must be a string")),
            ("vusb", Value::List(entries)) => {
                for (n, (l, e)) in entries.iter().enumerate() {
                    let v = entry(e).map_err(|why| {
                        Error(format!("{file}:{l}: vusb entry {} ('{e}'): {why}", n + 1))
                    })?;
                    cfg.vusb.push(v);
                }
            }
            ("vusb", Value::One(_)) => {
                return Err(syntax(line, "vusb must be a list: vusb = [ '...' ]"))
            }
            ("pci", Value::List(devices)) => cfg.pci = devices.into_iter().map(|d| d.1).collect(),
            ("pci", Value::One(_)) => {
                return Err(syntax(line, "pci must be a list: pci = [ '0000:00:14.0' ]"))
            }
            ("serial", Value::One(s)) => cfg.serial = Some(s),
            ("serial", Value::List(l)) => cfg.serial = l.into_iter().next().map(|s| s.1),
            _ => {}
        }
    }
    Ok(cfg)
}

/// One `vusb` string.
fn entry(text: &str) -> Result<Vusb, String> {
    let mut v = Vusb {
        usb_ver: 2,
        ports: 8,
        backend: None,
        assigned: Vec::new(),
    };
    let mut seen: Vec<String> = Vec::new();
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (k, val) = part
            .split_once('=')
            .map(|(k, v)| (k.trim(), v.trim()))
            .ok_or_else(|| format!("'{part}' is not key=value"))?;
        if seen.iter().any(|s| s == k) {
            return Err(format!("{k} is given twice"));
        }
        seen.push(k.into());
        let number = |range: core::ops::RangeInclusive<u32>| {
            val.parse::<u32>()
                .ok()
                .filter(|n| range.contains(n))
                .ok_or_else(|| {
                    format!(
                        "{k} must be {} to {}, not '{val}'",
                        range.start(),
                        range.end()
                    )
                })
        };
        match k {
            "usbver" => v.usb_ver = number(1..=xen::pvusb::USB_VER_SUPERSPEED)?,
            "numports" => v.ports = number(1..=31)?,
            "backend" if !val.is_empty() => v.backend = Some(val.into()),
            _ => {
                let Some(port) = k.strip_prefix("port_") else {
                    return Err(format!(
                        "unknown key {k} (usbver, numports, port_<N>, backend)"
                    ));
                };
                let port = port
                    .parse::<u32>()
                    .ok()
                    .filter(|p| (1..=31).contains(p))
                    .ok_or_else(|| format!("{k}: ports are port_1 to port_31"))?;
                let device = DeviceSelector::parse(val).ok_or_else(|| {
                    format!("{k}={val}: not a bus id (1-2, 2-4.3) nor vid:pid[:serial]")
                })?;
                if v.assigned.iter().any(|(_, d)| *d == device) {
                    return Err(format!("{val} is given to two ports"));
                }
                v.assigned.push((port, device));
            }
        }
    }
    if let Some((p, _)) = v.assigned.iter().find(|(p, _)| *p > v.ports) {
        return Err(format!("port_{p} is beyond numports={}", v.ports));
    }
    v.assigned.sort_by_key(|(p, _)| *p);
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn busid(b: &str) -> DeviceSelector {
        DeviceSelector::BusId(b.into())
    }

    #[test]
    fn a_guest_config_with_vusb_entries() {
        let text = r#"# a guest
name = "work"
type = "pvh"
kernel = "/boot/vmlinuz"   # the kernel
memory = 256; vcpus = 1
disk = [ 'phy:/dev/vg/work,xvda,w',
         "file:/tmp/x.img,xvdb,r" ]
vusb = [ 'usbver=2, numports=8, port_1=1-1, port_2=2-4.3',
         'usbver=1,numports=2,port_2=0627:0001:SN-1, backend=usbdom2', ]
"#;
        let cfg = parse("work.cfg", text).unwrap();
        assert_eq!(cfg.name.as_deref(), Some("work"));
        assert_eq!(
            cfg.vusb,
            [
                Vusb {
                    usb_ver: 2,
                    ports: 8,
                    backend: None,
                    assigned: vec![(1, busid("1-1")), (2, busid("2-4.3"))],
                },
                Vusb {
                    usb_ver: 1,
                    ports: 2,
                    backend: Some("usbdom2".into()),
                    assigned: vec![(
                        2,
                        DeviceSelector::Ids {
                            vendor_id: 0x0627,
                            product_id: 1,
                            serial: Some("SN-1".into()),
                        }
                    )],
                },
            ]
        );
        // Defaults, and a config without vusb.
        let cfg = parse("a.cfg", "vusb = [ '' ]\nname='a'").unwrap();
        assert_eq!((cfg.vusb[0].usb_ver, cfg.vusb[0].ports), (2, 8));
        assert_eq!(parse("b.cfg", "name = 'b'\n").unwrap().vusb, []);
    }

    #[test]
    fn errors_name_the_file_the_line_and_the_entry() {
        for (text, want) in [
            (
                "name='g'\nvusb = [ 'usbver=2',\n  'usbver=4' ]",
                "g.cfg:3: vusb entry 2 ('usbver=4'): usbver must be 1 to 3, not '4'",
            ),
            (
                "vusb = [ 'numports=2, port_3=1-1' ]",
                "g.cfg:1: vusb entry 1 ('numports=2, port_3=1-1'): port_3 is beyond numports=2",
            ),
            (
                "vusb = [ 'port_1=1-1, port_2=1-1' ]",
                "g.cfg:1: vusb entry 1 ('port_1=1-1, port_2=1-1'): 1-1 is given to two ports",
            ),
            (
                "vusb = [ 'port_1=usb1' ]",
                "g.cfg:1: vusb entry 1 ('port_1=usb1'): port_1=usb1: not a bus id (1-2, 2-4.3) nor vid:pid[:serial]",
            ),
            (
                "vusb = [ 'port_0=1-1' ]",
                "g.cfg:1: vusb entry 1 ('port_0=1-1'): port_0: ports are port_1 to port_31",
            ),
            (
                "vusb = [ 'speed=high' ]",
                "g.cfg:1: vusb entry 1 ('speed=high'): unknown key speed (usbver, numports, port_<N>, backend)",
            ),
            (
                "vusb = [ 'usbver' ]",
                "g.cfg:1: vusb entry 1 ('usbver'): 'usbver' is not key=value",
            ),
            (
                "vusb = [ 'usbver=1, usbver=2' ]",
                "g.cfg:1: vusb entry 1 ('usbver=1, usbver=2'): usbver is given twice",
            ),
            ("vusb = 'usbver=2'", "g.cfg:1: vusb must be a list: vusb = [ '...' ]"),
            ("\n\nvusb = [ 'usbver=2'", "g.cfg:3: unterminated vusb list"),
            ("name = 'g", "g.cfg:1: unterminated string"),
            ("name 'g'", "g.cfg:1: expected `=` after name"),
            ("memory =", "g.cfg:1: memory has no value"),
            ("memory = 1 2", "g.cfg:1: more after the value of memory"),
        ] {
            assert_eq!(parse("g.cfg", text), Err(Error(want.into())), "{text:?}");
        }
    }
}
