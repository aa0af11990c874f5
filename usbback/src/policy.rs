//! Which host device may go to which guest: an allow/deny list set on the driver domain's
//! command line.
//!
//! Syntax (`usbpolicy=` on the command line, `;` between rules, `:` between a rule's
//! matchers):
//!
//! ```text
//! usbpolicy=deny:class=08:dom=web;allow:class=03:dom=work;deny:class=03
//! ```
//!
//! A rule is `allow` or `deny` followed by matchers, all of which must hold: `busid=1-2`,
//! `vid=046d`, `pid=c52b` (4 hex digits each), `class=08` (2 hex digits) and
//! `dom=<domid or domain name>`. The first rule that matches decides; a device no rule
//! matches is allowed. The example keeps mass storage away from domain `web` and keyboards
//! and other HID devices away from every domain but `work`.
//!
//! What `class=` is checked against: the device's bDeviceClass and the bInterfaceClass of
//! every interface, alternate settings included, of every configuration the host offers
//! (the first [`crate::host::MAX_CONFIGURATIONS`]; a SET_CONFIGURATION of any other is
//! refused). A device cannot hide a class behind a configuration or alternate setting it is
//! not in when it is assigned: the backend checks again, against what the host activates,
//! on every SET_CONFIGURATION and SET_INTERFACE a guest sends (so a device that describes
//! itself differently later, or a policy changed since, is caught there), and refuses those
//! requests with any other bmRequestType, which a device might obey without the backend
//! seeing them (`crate::control`).
//!
//! The policy fails closed where it cannot know. Where a device's configurations could not
//! all be read ([`InterfaceClasses::Unknown`]), a `class=` matcher holds for a deny rule and
//! not for an allow rule. Domain names come from the toolstack (`usbctl` writes the guest's
//! name into the controller's backend directory); where a domain's name is unknown, a
//! `dom=<name>` matcher likewise holds for a deny rule and not for an allow rule.

use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;
use core::fmt;

use xen::abi::{parse_decimal, DomId};

use crate::host::{DeviceInfo, InterfaceClasses};

/// What a rule does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// The device may go to the domain.
    Allow,
    /// It may not.
    Deny,
}

/// A domain as a rule names it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DomainMatch {
    /// By id.
    Id(DomId),
    /// By name (xenstore's `/local/domain/<id>/name`).
    Name(String),
}

/// One rule: a verdict and the matchers that must all hold.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Rule {
    /// `allow` (false: `deny`).
    pub allow: bool,
    /// `busid=`.
    pub busid: Option<String>,
    /// `vid=`.
    pub vendor_id: Option<u16>,
    /// `pid=`.
    pub product_id: Option<u16>,
    /// `class=`.
    pub class: Option<u8>,
    /// `dom=`.
    pub domain: Option<DomainMatch>,
}

/// The policy: rules in order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Policy {
    /// Its rules, first match wins.
    pub rules: Vec<Rule>,
}

/// Why a policy text was refused: the rule (1-based) and what is wrong with it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PolicyError {
    /// The rule's position, from 1.
    pub rule: usize,
    /// What is wrong.
    pub reason: String,
}

impl fmt::Display for PolicyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "rule={} reason={}", self.rule, self.reason)
    }
}

fn hex<const DIGITS: usize>(s: &str) -> Option<u32> {
    if s.len() != DIGITS || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    u32::from_str_radix(s, 16).ok()
}

impl Policy {
    /// Parses the `usbpolicy=` value. An empty text is the empty policy (allow all).
    pub fn parse(text: &str) -> Result<Policy, PolicyError> {
        let mut rules = Vec::new();
        for (i, text) in text.split(';').enumerate().filter(|(_, t)| !t.is_empty()) {
            let rule = i + 1;
            let err = |reason: String| PolicyError { rule, reason };
            let mut parts = text.split(':');
            let allow = match parts.next() {
                Some("allow") => true,
                Some("deny") => false,
                other => {
                    return Err(err(format!(
                        "expected_allow_or_deny got={:?}",
                        other.unwrap_or("")
                    )))
                }
            };
            let mut r = Rule {
                allow,
                ..Rule::default()
            };
            for m in parts {
                let Some((key, value)) = m.split_once('=') else {
                    return Err(err(format!("matcher_without_value matcher={m:?}")));
                };
                let bad = || err(format!("bad_value key={key} value={value:?}"));
                match key {
                    "busid" if xen::pvusb::valid_busid(value) => r.busid = Some(value.into()),
                    "vid" => r.vendor_id = Some(hex::<4>(value).ok_or_else(bad)? as u16),
                    "pid" => r.product_id = Some(hex::<4>(value).ok_or_else(bad)? as u16),
                    "class" => r.class = Some(hex::<2>(value).ok_or_else(bad)? as u8),
                    "dom" if !value.is_empty() && value.len() <= 64 => {
                        r.domain = Some(
                            match parse_decimal(value).and_then(|v| u16::try_from(v).ok()) {
                                Some(id) => DomainMatch::Id(DomId(id)),
                                None => DomainMatch::Name(value.into()),
                            },
                        )
                    }
                    "busid" | "dom" => return Err(bad()),
                    _ => return Err(err(format!("unknown_matcher key={key:?}"))),
                }
            }
            rules.push(r);
        }
        Ok(Policy { rules })
    }

    /// Whether `device` may go to domain `dom` (named `name`, when it has one), and the
    /// rule that decided (1-based), if one did.
    pub fn check(
        &self,
        device: &DeviceInfo,
        dom: DomId,
        name: Option<&str>,
    ) -> (Verdict, Option<usize>) {
        for (i, r) in self.rules.iter().enumerate() {
            let holds = r.busid.as_ref().is_none_or(|b| *b == device.busid)
                && r.vendor_id.is_none_or(|v| v == device.vendor_id)
                && r.product_id.is_none_or(|p| p == device.product_id)
                && r.class.is_none_or(|c| match device.interface_classes {
                    InterfaceClasses::Checked(classes) => device.class == c || classes.contains(c),
                    // It may offer any class: one a deny rule names, not one an allow rule
                    // names. Fail closed.
                    InterfaceClasses::Unknown => !r.allow,
                })
                && r.domain.as_ref().is_none_or(|d| match d {
                    DomainMatch::Id(id) => *id == dom,
                    // A domain whose name is unknown may be the one a deny rule names,
                    // and may not be the one an allow rule names: fail closed.
                    DomainMatch::Name(n) => name.map_or(!r.allow, |name| name == n),
                });
            if holds {
                let verdict = if r.allow {
                    Verdict::Allow
                } else {
                    Verdict::Deny
                };
                return (verdict, Some(i + 1));
            }
        }
        (Verdict::Allow, None)
    }
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.allow { "allow" } else { "deny" })?;
        if let Some(b) = &self.busid {
            write!(f, ":busid={b}")?;
        }
        if let Some(v) = self.vendor_id {
            write!(f, ":vid={v:04x}")?;
        }
        if let Some(p) = self.product_id {
            write!(f, ":pid={p:04x}")?;
        }
        if let Some(c) = self.class {
            write!(f, ":class={c:02x}")?;
        }
        match &self.domain {
            Some(DomainMatch::Id(id)) => write!(f, ":dom={id}"),
            Some(DomainMatch::Name(n)) => write!(f, ":dom={n}"),
            None => Ok(()),
        }
    }
}

impl Rule {
    /// The rule as it would be written, for logs and error messages.
    pub fn text(&self) -> String {
        self.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use usb::Speed;

    fn device(busid: &str, vid: u16, pid: u16, class: u8, interfaces: &[u8]) -> DeviceInfo {
        DeviceInfo {
            id: 1,
            busid: busid.into(),
            speed: Speed::High,
            vendor_id: vid,
            product_id: pid,
            class,
            interface_classes: InterfaceClasses::Checked(interfaces.iter().copied().collect()),
            product: None,
            serial: None,
            is_hub: false,
        }
    }

    #[test]
    fn the_first_matching_rule_decides_and_no_match_allows() {
        let p =
            Policy::parse("deny:class=08:dom=web;allow:class=03:dom=work;deny:class=03").unwrap();
        let stick = device("2-1", 0x46f4, 1, 0, &[8]);
        let kbd = device("1-2", 0x0627, 1, 0, &[3]);
        let (web, work, other) = (DomId(3), DomId(4), DomId(5));
        assert_eq!(p.check(&stick, web, Some("web")), (Verdict::Deny, Some(1)));
        assert_eq!(p.check(&stick, work, Some("work")), (Verdict::Allow, None));
        assert_eq!(p.check(&kbd, work, Some("work")), (Verdict::Allow, Some(2)));
        assert_eq!(p.check(&kbd, other, None), (Verdict::Deny, Some(3)));
        assert_eq!(p.check(&kbd, web, Some("web")), (Verdict::Deny, Some(3)));
        let p = Policy::parse("deny:vid=0627:pid=0001;allow:busid=2-1:dom=7").unwrap();
        assert_eq!(p.check(&kbd, other, None).0, Verdict::Deny);
        assert_eq!(p.check(&stick, DomId(7), None), (Verdict::Allow, Some(2)));
        assert_eq!(p.rules[0].text(), "deny:vid=0627:pid=0001");
        assert_eq!(Policy::parse("").unwrap(), Policy::default());
    }

    #[test]
    fn a_domain_whose_name_is_unknown_fails_closed() {
        // "HID only to domain work, never mass storage to web."
        let p =
            Policy::parse("allow:class=03:dom=work;deny:class=03;deny:class=08:dom=web").unwrap();
        let stick = device("2-1", 0x46f4, 1, 0, &[8]);
        let kbd = device("1-2", 0x0627, 1, 0, &[3]);
        let unknown = DomId(9);
        // Not known to be `work`: the allow does not hold, the catch-all deny does.
        assert_eq!(p.check(&kbd, unknown, None), (Verdict::Deny, Some(2)));
        // Maybe `web`: denied.
        assert_eq!(p.check(&stick, unknown, None), (Verdict::Deny, Some(3)));
        assert_eq!(
            p.check(&stick, unknown, Some("work")),
            (Verdict::Allow, None)
        );
    }

    #[test]
    fn a_device_whose_classes_are_unknown_fails_closed() {
        let p = Policy::parse("allow:class=03:dom=work;deny:class=08;allow:vid=1234").unwrap();
        let mut unread = device("1-2", 0x1234, 1, 3, &[]);
        unread.interface_classes = InterfaceClasses::Unknown;
        let work = DomId(4);
        // Even with bDeviceClass 03, it is not known to be only HID: the allow does not
        // hold; it may be mass storage: the deny does.
        assert_eq!(
            p.check(&unread, work, Some("work")),
            (Verdict::Deny, Some(2))
        );
        // Rules without `class=` are unaffected.
        let p = Policy::parse("allow:vid=1234;deny").unwrap();
        assert_eq!(p.check(&unread, work, None), (Verdict::Allow, Some(1)));
        // Every configuration's classes count, not only the first's.
        let p = Policy::parse("deny:class=08").unwrap();
        let two_faced = device("1-3", 0x1234, 1, 0, &[3, 8]);
        assert_eq!(p.check(&two_faced, work, None), (Verdict::Deny, Some(1)));
    }

    #[test]
    fn malformed_rules_are_refused_with_their_position_and_reason() {
        let e = Policy::parse("allow;permit:class=03").unwrap_err();
        assert_eq!(e.rule, 2);
        assert!(e.reason.starts_with("expected_allow_or_deny"), "{e}");
        for (text, reason) in [
            ("deny:class=8", "bad_value key=class"),
            ("deny:vid=46f", "bad_value key=vid"),
            ("deny:pid=zzzz", "bad_value key=pid"),
            ("deny:busid=2-", "bad_value key=busid"),
            ("deny:dom=", "bad_value key=dom"),
            ("deny:color=red", "unknown_matcher"),
            ("deny:class", "matcher_without_value"),
        ] {
            let e = Policy::parse(text).unwrap_err();
            assert_eq!(e.rule, 1, "{text}");
            assert!(e.reason.starts_with(reason), "{text}: {e}");
        }
    }
}
