//! The kernel command line (`hvm_start_info.cmdline_paddr`, QEMU's `-append`, xl's `extra=`).
//!
//! Words are `key=value` or bare flags. Unknown words are kept so boot can log them instead
//! of silently ignoring a typo.

use heapless::{String, Vec};
use log::LevelFilter;

/// Most unknown words kept for the log.
pub const MAX_UNKNOWN: usize = 8;

/// A self-test of the USB stack the kernel runs after `event=ready`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UsbTest {
    /// `usbtest=storage`: configure the first mass-storage device, write a pattern and read
    /// it back through Bulk-Only Transport, then time a 4 MiB read.
    Storage,
    /// `usbtest=keyboard`: configure the first HID boot keyboard and log every report its
    /// interrupt IN endpoint delivers.
    Keyboard,
    /// `usbtest=hotplug`: keep reads running on every mass-storage device that arrives,
    /// and log how each loop ends when its device leaves.
    Hotplug,
    /// `usbtest=audio`: switch the first device with an isochronous OUT endpoint to the
    /// alternate setting that has it and stream packets to it.
    Audio,
    /// `usbtest=controller-error`: make the controller fail (QEMU asserts Host Controller
    /// Error on an invalid ERSTSZ), then run the storage test again on the restarted one.
    ControllerError,
}

/// What the command line asks for.
#[derive(Debug, PartialEq, Eq)]
pub struct Cmdline {
    /// `loglevel=error|warn|info|debug|trace` (default info).
    pub log_level: LevelFilter,
    /// `qemu_exit`: leave QEMU through `isa-debug-exit` after `event=ready` (and on panic);
    /// used by the boot tests.
    pub qemu_exit: bool,
    /// Words not understood, cut to 32 bytes each.
    pub unknown: Vec<String<32>, MAX_UNKNOWN>,
    /// A `loglevel=` value that is not a level.
    pub bad_log_level: bool,
    /// `usbtest=storage|keyboard|hotplug|audio|controller-error`.
    pub usb_test: Option<UsbTest>,
    /// `usbpolicy=…`: the device policy's text (usbback's `policy` module parses it).
    pub usb_policy: Option<String<MAX_POLICY>>,
    /// A `usbpolicy=` longer than [`MAX_POLICY`] bytes.
    pub policy_too_long: bool,
    /// `demo`: host `xen::sim` with simulated user VMs even on Xen (demo mode is the default
    /// without a hypervisor).
    pub demo: bool,
    /// `assign=<busid>:<vm>,…`: which device the demo gives which simulated VM.
    pub assign: Vec<Assignment, MAX_ASSIGN>,
    /// An `assign=` that does not parse (or has more than [`MAX_ASSIGN`] entries).
    pub bad_assign: bool,
    /// `demo_mib=N`: MiB the demo's storage workload reads and hashes (default 4).
    pub demo_mib: u32,
    /// `bench=N`: the demo measures instead, N rounds of each path.
    pub bench_rounds: Option<u32>,
    /// `demo_in_flight=N`: URBs of one bench command's data phase, on both paths: 16 (Linux
    /// xen-hcd's limit, the default) up to 256, a power of two; above 16 the simulated VMs
    /// ask for a multi-page URB ring.
    pub demo_in_flight: usize,
    /// `datapath=copy|map`: how transfers' data reaches the guests (usbback's
    /// [`usbback::DataPath`]; copy unless this says map).
    pub data_path: usbback::DataPath,
}

/// One `assign=` entry: device `busid` to the simulated VM named `vm`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Assignment {
    /// The device's bus id (`event=usb_device busid=`).
    pub busid: String<16>,
    /// The VM's name (`vm1`, …).
    pub vm: String<16>,
}

/// Most `assign=` entries.
pub const MAX_ASSIGN: usize = 8;

/// The demo reads this many MiB unless `demo_mib=` says otherwise.
pub const DEFAULT_DEMO_MIB: u32 = 4;

fn parse_assign(text: &str) -> Option<Vec<Assignment, MAX_ASSIGN>> {
    let mut out = Vec::new();
    for entry in text.split(',') {
        let (busid, vm) = entry.split_once(':')?;
        if busid.is_empty() || vm.is_empty() {
            return None;
        }
        let a = Assignment {
            busid: String::try_from(busid).ok()?,
            vm: String::try_from(vm).ok()?,
        };
        out.push(a).ok()?;
    }
    Some(out)
}

/// The longest `usbpolicy=` value kept.
pub const MAX_POLICY: usize = 512;

impl Default for Cmdline {
    fn default() -> Self {
        Cmdline {
            log_level: LevelFilter::Info,
            qemu_exit: false,
            unknown: Vec::new(),
            bad_log_level: false,
            usb_test: None,
            usb_policy: None,
            policy_too_long: false,
            demo: false,
            assign: Vec::new(),
            bad_assign: false,
            demo_mib: DEFAULT_DEMO_MIB,
            bench_rounds: None,
            demo_in_flight: xen::pvusb::URB_RING_SIZE as usize,
            data_path: usbback::DataPath::Copy,
        }
    }
}

/// A `demo_in_flight=` a URB ring can hold: a power of two from the stock ring's 16 to the
/// largest multi-page ring's 256 entries.
fn valid_in_flight(n: usize) -> bool {
    let (stock, most) = (xen::pvusb::URB_RING_SIZE, xen::pvusb::MAX_URB_RING_SIZE);
    n.is_power_of_two() && (stock as usize..=most as usize).contains(&n)
}

impl Cmdline {
    /// Parses the whole command line.
    pub fn parse(text: &str) -> Cmdline {
        let mut c = Cmdline::default();
        for word in text.split_ascii_whitespace() {
            let (key, value) = match word.split_once('=') {
                Some((k, v)) => (k, Some(v)),
                None => (word, None),
            };
            match (key, value) {
                ("loglevel", Some(v)) => match v.parse() {
                    Ok(level) => c.log_level = level,
                    Err(_) => c.bad_log_level = true,
                },
                ("qemu_exit", None) => c.qemu_exit = true,
                ("demo", None) => c.demo = true,
                ("assign", Some(v)) => match parse_assign(v) {
                    Some(a) => c.assign = a,
                    None => c.bad_assign = true,
                },
                ("demo_mib", Some(v))
                    if v.parse::<u32>().is_ok_and(|n| (1..=1024).contains(&n)) =>
                {
                    c.demo_mib = v.parse().unwrap_or(DEFAULT_DEMO_MIB)
                }
                ("bench", Some(v)) if v.parse::<u32>().is_ok_and(|n| n >= 1) => {
                    c.bench_rounds = v.parse().ok()
                }
                ("demo_in_flight", Some(v)) if v.parse().is_ok_and(valid_in_flight) => {
                    c.demo_in_flight = v.parse().unwrap_or(c.demo_in_flight)
                }
                ("datapath", Some(v)) if usbback::DataPath::parse(v).is_some() => {
                    c.data_path = usbback::DataPath::parse(v).unwrap_or_default()
                }
                ("usbpolicy", Some(v)) => match String::try_from(v) {
                    Ok(text) => c.usb_policy = Some(text),
                    Err(_) => c.policy_too_long = true,
                },
                ("usbtest", Some("storage")) => c.usb_test = Some(UsbTest::Storage),
                ("usbtest", Some("keyboard")) => c.usb_test = Some(UsbTest::Keyboard),
                ("usbtest", Some("hotplug")) => c.usb_test = Some(UsbTest::Hotplug),
                ("usbtest", Some("audio")) => c.usb_test = Some(UsbTest::Audio),
                ("usbtest", Some("controller-error")) => {
                    c.usb_test = Some(UsbTest::ControllerError)
                }
                _ => {
                    let mut s = String::new();
                    for ch in word.chars() {
                        if s.push(ch).is_err() {
                            break;
                        }
                    }
                    let _ = c.unknown.push(s);
                }
            }
        }
        c
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_known_words_and_keeps_the_rest() {
        let c = Cmdline::parse("  loglevel=debug qemu_exit  foo=bar baz ");
        assert_eq!(c.log_level, LevelFilter::Debug);
        assert!(c.qemu_exit && !c.bad_log_level);
        assert_eq!(
            c.unknown
                .iter()
                .map(|s| s.as_str())
                .collect::<std::vec::Vec<_>>(),
            ["foo=bar", "baz"]
        );
        let c = Cmdline::parse("loglevel=loud");
        assert!(c.bad_log_level);
        assert_eq!(c.log_level, LevelFilter::Info);
        assert_eq!(Cmdline::parse(""), Cmdline::default());
    }

    #[test]
    fn usbtest_storage_and_keyboard_are_understood_and_other_tests_are_unknown_words() {
        let c = Cmdline::parse("qemu_exit usbtest=storage");
        assert_eq!(c.usb_test, Some(UsbTest::Storage));
        assert!(c.unknown.is_empty());
        let c = Cmdline::parse("usbtest=keyboard");
        assert_eq!(c.usb_test, Some(UsbTest::Keyboard));
        let c = Cmdline::parse("usbtest=hotplug");
        assert_eq!(c.usb_test, Some(UsbTest::Hotplug));
        let c = Cmdline::parse("usbtest=audio");
        assert_eq!(c.usb_test, Some(UsbTest::Audio));
        let c = Cmdline::parse("usbtest=controller-error");
        assert_eq!(c.usb_test, Some(UsbTest::ControllerError));
        let c = Cmdline::parse("usbtest=hid");
        assert_eq!(c.usb_test, None);
        assert_eq!(c.unknown[0].as_str(), "usbtest=hid");
    }

    #[test]
    fn the_data_path_is_copy_unless_map_is_named() {
        assert_eq!(Cmdline::parse("").data_path, usbback::DataPath::Copy);
        assert_eq!(
            Cmdline::parse("datapath=map").data_path,
            usbback::DataPath::Map
        );
        let c = Cmdline::parse("datapath=dma");
        assert_eq!(c.data_path, usbback::DataPath::Copy);
        assert_eq!(c.unknown[0].as_str(), "datapath=dma");
    }

    #[test]
    fn demo_words_are_understood() {
        let c = Cmdline::parse("demo assign=2-1:vm1,1-2:vm2 demo_mib=8 bench=3");
        assert!(c.demo && !c.bad_assign && c.unknown.is_empty());
        let pairs: std::vec::Vec<(&str, &str)> = c
            .assign
            .iter()
            .map(|a| (a.busid.as_str(), a.vm.as_str()))
            .collect();
        assert_eq!(pairs, [("2-1", "vm1"), ("1-2", "vm2")]);
        assert_eq!((c.demo_mib, c.bench_rounds), (8, Some(3)));
        assert!(Cmdline::parse("assign=2-1").bad_assign);
        assert!(Cmdline::parse("assign=2-1:vm1,").bad_assign);
        let c = Cmdline::parse("demo_in_flight=64");
        assert_eq!(c.demo_in_flight, 64);
        for bad in [
            "demo_in_flight=48",
            "demo_in_flight=8",
            "demo_in_flight=512",
        ] {
            let c = Cmdline::parse(bad);
            assert_eq!((c.demo_in_flight, c.unknown.len()), (16, 1), "{bad}");
        }
        let c = Cmdline::parse("demo_mib=0 bench=x");
        assert_eq!((c.demo_mib, c.bench_rounds), (DEFAULT_DEMO_MIB, None));
        assert_eq!(c.unknown.len(), 2);
    }

    #[test]
    fn overlong_and_numerous_unknown_words_are_bounded() {
        let long = "x".repeat(100);
        let c = Cmdline::parse(&format!("{long} a b c d e f g h i j"));
        assert_eq!(c.unknown.len(), MAX_UNKNOWN);
        assert_eq!(c.unknown[0].len(), 32);
    }

    #[test]
    fn usbpolicy_is_kept_as_text_and_an_overlong_one_flagged() {
        let c = Cmdline::parse("usbpolicy=deny:class=08:dom=web;allow qemu_exit");
        assert_eq!(c.usb_policy.as_deref(), Some("deny:class=08:dom=web;allow"));
        assert!(c.qemu_exit);
        let long = format!("usbpolicy={}", "deny:class=08;".repeat(40));
        let c = Cmdline::parse(&long);
        assert!(c.policy_too_long && c.usb_policy.is_none());
    }
}
