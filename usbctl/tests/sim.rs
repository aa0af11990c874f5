//! usbctl's xenstore writes and its error messages, against `xen::sim` with the real usbback
//! answering as the driver domain.

use std::cell::RefCell;
use std::rc::Rc;
use std::time::Duration;

use testkit::sim_host::{Keyboard, MassStorage, SimHost};
use usb::Speed;
use usbback::host::{HostEvent, UsbHost};
use usbback::policy::Policy;
use usbback::Backend;
use usbctl::cli::{self, Cli, Command};
use usbctl::{Attached, Error, Usbctl};
use xen::abi::DomId;
use xen::page::LocalPage;
use xen::sim::{Domain, SimXsTransport, Xen};
use xen::xenbus::XenbusState;
use xen::xenstore::{Access, Perm, TxId};

type Be = Rc<RefCell<Option<Backend<Domain, SimXsTransport>>>>;
type Host = Rc<RefCell<SimHost<LocalPage>>>;

/// A Xen with usbdom's backend, a user VM and the simulated devices.
struct Machine {
    xen: Xen,
    backend: Be,
    /// A keyboard at 1-1 (1209:0002, serial 000000000002) and a stick at 1-4.1 (1209:0001).
    host: Host,
    guest: DomId,
    usbdom: DomId,
}

fn name(xen: &Xen, dom: DomId, n: &str) {
    xen.dom0()
        .xenstore()
        .write(
            TxId::NONE,
            &format!("/local/domain/{dom}/name"),
            n.as_bytes(),
        )
        .unwrap();
}

fn machine(with_backend: bool) -> Machine {
    let xen = Xen::new();
    let usbdom = xen.create_domain();
    let guest = xen.create_domain();
    name(&xen, usbdom.domid(), "usbdom");
    name(&xen, guest.domid(), "guest");
    let backend = Rc::new(RefCell::new(with_backend.then(|| {
        Backend::new(usbdom.clone(), usbdom.xenstore(), usbdom.domid()).unwrap()
    })));
    let mut host = SimHost::new();
    host.plug(Box::new(Keyboard::new()), "1-1", Speed::Full);
    host.plug(Box::new(MassStorage::new(64)), "1-4.1", Speed::High);
    let host = Rc::new(RefCell::new(host));
    Machine {
        xen,
        backend,
        host,
        guest: guest.domid(),
        usbdom: usbdom.domid(),
    }
}

/// What usbdom's main loop does between two looks of usbctl.
fn ticker(w: &Machine) -> Box<dyn FnMut()> {
    let (be, host) = (w.backend.clone(), w.host.clone());
    Box::new(move || {
        if let Some(b) = be.borrow_mut().as_mut() {
            let mut host = host.borrow_mut();
            b.poll_xenstore(&mut *host).unwrap();
            let mut events: Vec<HostEvent> = Vec::new();
            host.poll(&mut events);
            b.host_events(&mut *host, &mut events);
            b.publish_inventory();
        }
    })
}

fn usbctl(w: &Machine) -> Usbctl<SimXsTransport> {
    Usbctl::new(w.xen.dom0().xenstore(), ticker(w)).with_timeout(Duration::from_millis(200))
}

#[test]
fn hc_create_writes_what_libxl_writes_and_waits_for_initwait() {
    let w = machine(true);
    let mut u = usbctl(&w);
    assert_eq!(u.domain("guest"), Ok(w.guest));
    assert_eq!(u.domain(&w.usbdom.to_string()), Ok(w.usbdom));
    assert_eq!(u.hc_create(w.guest, w.usbdom, 2, 8), Ok(0));
    assert_eq!(u.hc_create(w.guest, w.usbdom, 1, 4), Ok(1));

    let xs = u.xenstore();
    let b = format!("/local/domain/{}/backend/vusb/{}/0", w.usbdom, w.guest);
    let f = format!("/local/domain/{}/device/vusb/0", w.guest);
    let read = |xs: &mut xen::xenstore::XenStore<SimXsTransport>, p: &str| {
        xs.read_string(TxId::NONE, p).unwrap()
    };
    assert_eq!(read(xs, &format!("{b}/frontend")), f);
    assert_eq!(read(xs, &format!("{b}/frontend-id")), w.guest.to_string());
    assert_eq!(read(xs, &format!("{b}/num-ports")), "8");
    assert_eq!(read(xs, &format!("{b}/usb-ver")), "2");
    assert_eq!(read(xs, &format!("{b}/online")), "1");
    assert_eq!(read(xs, &format!("{b}/type")), "pv");
    assert_eq!(read(xs, &format!("{b}/port/8")), "");
    assert_eq!(
        read(xs, &format!("{b}/state")),
        "2",
        "the backend reached InitWait"
    );
    assert_eq!(read(xs, &format!("{f}/backend")), b);
    assert_eq!(read(xs, &format!("{f}/backend-id")), w.usbdom.to_string());
    assert_eq!(read(xs, &format!("{f}/state")), "1");
    assert_eq!(
        xs.get_perms(TxId::NONE, &b).unwrap(),
        [
            Perm {
                domid: w.usbdom,
                access: Access::None
            },
            Perm {
                domid: w.guest,
                access: Access::Read
            }
        ]
    );
    assert_eq!(
        xs.get_perms(TxId::NONE, &f).unwrap(),
        [
            Perm {
                domid: w.guest,
                access: Access::None
            },
            Perm {
                domid: w.usbdom,
                access: Access::Read
            }
        ]
    );
    // The guest may read its backend directory but not write it.
    let mut gx = w.xen.domain(w.guest).unwrap().xenstore();
    assert!(gx.read(TxId::NONE, &format!("{b}/num-ports")).is_ok());
    assert!(gx
        .write(TxId::NONE, &format!("{b}/num-ports"), b"31")
        .is_err());

    let list = u.list(w.guest).unwrap();
    assert_eq!(list.len(), 2);
    assert_eq!(
        (
            list[0].devid,
            list[0].usb_ver,
            list[0].ports,
            list[0].states.0
        ),
        (0, 2, 8, XenbusState::InitWait)
    );
}

#[test]
fn hc_destroy_follows_libxl_and_the_backend_removes_its_directory() {
    let w = machine(true);
    let mut u = usbctl(&w);
    u.hc_create(w.guest, w.usbdom, 2, 8).unwrap();
    assert_eq!(u.hc_destroy(w.guest, 0), Ok(()));
    let b = format!("/local/domain/{}/backend/vusb/{}/0", w.usbdom, w.guest);
    let f = format!("/local/domain/{}/device/vusb/0", w.guest);
    assert!(u.xenstore().read(TxId::NONE, &b).is_err());
    assert!(u.xenstore().read(TxId::NONE, &f).is_err());
    assert_eq!(w.backend.borrow().as_ref().unwrap().devices().count(), 0);
    assert!(u.list(w.guest).unwrap().is_empty());
}

#[test]
fn hc_destroy_frees_the_assigned_ports_first() {
    let w = machine(true);
    let mut u = usbctl(&w);
    u.hc_create(w.guest, w.usbdom, 2, 8).unwrap();
    let b = format!("/local/domain/{}/backend/vusb/{}/0", w.usbdom, w.guest);
    let assigned = format!("{b}/usbdom-port/3");
    let status = format!("{b}/usbdom-port-status/3");
    u.xenstore().write(TxId::NONE, &assigned, b"1-4").unwrap();
    // The backend takes the assignment up (its device is absent here).
    if let Some(be) = w.backend.borrow_mut().as_mut() {
        be.poll_xenstore(&mut usbback::host::Absent).unwrap();
    }
    assert_eq!(
        u.xenstore().read_string(TxId::NONE, &status).unwrap(),
        "waiting device_absent"
    );
    assert_eq!(u.hc_destroy(w.guest, 0), Ok(()));
    assert!(u.xenstore().read(TxId::NONE, &b).is_err());
}

#[test]
fn every_wrong_input_has_its_message() {
    let w = machine(true);
    let mut u = usbctl(&w);
    let msg = |r: Result<u32, Error>| r.unwrap_err().0;
    assert_eq!(
        u.domain("nosuch").unwrap_err().0,
        "no running domain is called 'nosuch' (see `xl list`)"
    );
    assert_eq!(
        msg(u.hc_create(w.guest, w.usbdom, 4, 8)),
        "usb version must be 1, 2 or 3 (3 only for guests whose frontend knows it), not 4"
    );
    assert_eq!(
        msg(u.hc_create(w.guest, w.usbdom, 2, 0)),
        "ports must be 1 to 31, not 0"
    );
    assert_eq!(
        msg(u.hc_create(w.guest, w.usbdom, 2, 32)),
        "ports must be 1 to 31, not 32"
    );
    assert_eq!(
        msg(u.hc_create(w.usbdom, w.usbdom, 2, 8)),
        "a domain cannot be its own USB backend"
    );
    assert_eq!(
        u.hc_destroy(w.guest, 7).unwrap_err().0,
        format!(
            "domain {} has no USB controller 7 (see `usbctl list`)",
            w.guest
        )
    );
}

#[test]
fn a_backend_that_does_not_answer_is_reported_and_nothing_is_left_behind() {
    let w = machine(false);
    let mut u = usbctl(&w);
    let e = u.hc_create(w.guest, w.usbdom, 2, 8).unwrap_err();
    assert_eq!(
        e.0,
        "the backend did not reach state 2 (InitWait) within 0 s: is usbdom running and serving xenstore? (`xl list`, its log)"
    );
    assert!(u.list(w.guest).unwrap().is_empty());
}

#[test]
fn attach_and_detach_record_assignments_and_refuse_what_cannot_be() {
    let w = machine(true);
    let mut u = usbctl(&w);
    u.hc_create(w.guest, w.usbdom, 2, 4).unwrap();
    u.hc_create(w.guest, w.usbdom, 2, 4).unwrap();

    // usbdom's own inventory, as its main loop publishes it.
    let offered = u.list_assignable(w.usbdom).unwrap();
    assert_eq!(
        offered.iter().map(|d| d.busid.as_str()).collect::<Vec<_>>(),
        ["1-1", "1-4.1"]
    );
    assert!(offered.iter().all(|d| d.assigned.is_none()));
    assert_eq!(offered[0].field("serial"), Some("000000000002"));

    assert_eq!(
        u.attach(w.guest, 0, 2, "1-1", false),
        Ok(Attached::Connected)
    );
    let b = format!("/local/domain/{}/backend/vusb/{}/0", w.usbdom, w.guest);
    assert_eq!(
        u.xenstore()
            .read_string(TxId::NONE, &format!("{b}/usbdom-port/2"))
            .unwrap(),
        "1-1"
    );
    assert_eq!(
        u.list(w.guest).unwrap()[0].assigned,
        [(2, "1-1".to_string())]
    );
    assert_eq!(
        u.list_assignable(w.usbdom).unwrap()[0].assigned,
        Some((w.guest, 0, 2))
    );

    let e = |r: Result<Attached, Error>| r.unwrap_err().0;
    assert_eq!(
        e(u.attach(w.guest, 1, 1, "1-1", false)),
        format!(
            "1-1 is already assigned to domain {} controller 0 port 2",
            w.guest
        )
    );
    assert_eq!(
        e(u.attach(w.guest, 1, 1, "1209:0002", false)),
        format!(
            "1209:0002 is already assigned to domain {} controller 0 port 2",
            w.guest
        )
    );
    assert_eq!(
        e(u.attach(w.guest, 0, 2, "1-4.1", false)),
        "port 2 already has 1-1; detach it first"
    );
    assert_eq!(
        e(u.attach(w.guest, 0, 5, "1-4.1", false)),
        format!(
            "port must be 1 to 4 on controller 0 of domain {}, not 5",
            w.guest
        )
    );
    assert_eq!(
        e(u.attach(w.guest, 0, 1, "2-9", false)),
        format!(
            "domain {} offers no USB device 2-9 (see `usbctl list-assignable-devices`)",
            w.usbdom
        )
    );
    for bad in ["usb1", "1-0", "1209:2"] {
        assert_eq!(
            e(u.attach(w.guest, 0, 1, bad, false)),
            format!("'{bad}' is neither a bus id (like 1-2 or 1-4.3) nor vid:pid[:serial] (like 0627:0001); see `usbctl list-assignable-devices`")
        );
    }
    assert_eq!(
        e(u.attach(w.guest, 7, 1, "1-1", false)),
        format!(
            "domain {} has no USB controller 7 (see `usbctl list`)",
            w.guest
        )
    );
    // By IDs and serial: the stick, wherever it is.
    assert_eq!(
        u.attach(w.guest, 1, 3, "1209:0001:000000000001", false),
        Ok(Attached::Connected)
    );
    // Absent, kept when asked to (persistent assignments).
    assert_eq!(
        u.attach(w.guest, 1, 4, "1209:00ff", true),
        Ok(Attached::Waiting("device_absent".into()))
    );

    assert_eq!(u.detach(w.guest, 0, 2), Ok("1-1".to_string()));
    assert_eq!(
        u.detach(w.guest, 0, 2).unwrap_err().0,
        format!("port 2 of controller 0 in domain {} has no device", w.guest)
    );
    assert_eq!(
        u.attach(w.guest, 1, 1, "1-1", false),
        Ok(Attached::Connected)
    );
}

#[test]
fn a_denied_attach_names_the_rule_and_leaves_no_assignment() {
    let w = machine(true);
    w.backend
        .borrow_mut()
        .as_mut()
        .unwrap()
        .set_policy(Policy::parse("allow:class=03:dom=work;deny:class=03").unwrap());
    let mut u = usbctl(&w);
    u.hc_create(w.guest, w.usbdom, 2, 4).unwrap();
    // usbctl tells usbdom the guest's name, which usbdom may not read for itself.
    let b = format!("/local/domain/{}/backend/vusb/{}/0", w.usbdom, w.guest);
    assert_eq!(
        u.xenstore()
            .read_string(TxId::NONE, &format!("{b}/usbdom-frontend-name"))
            .unwrap(),
        "guest"
    );
    assert_eq!(
        u.attach(w.guest, 0, 1, "1-1", false).unwrap_err().0,
        format!(
            "domain {} refused 1-1 for port 1: policy rule=2 text=deny:class=03",
            w.usbdom
        )
    );
    assert!(u.list(w.guest).unwrap()[0].assigned.is_empty());
    // The stick is no HID device: allowed.
    assert_eq!(
        u.attach(w.guest, 0, 1, "1-4.1", false),
        Ok(Attached::Connected)
    );
}

#[test]
fn apply_creates_the_controllers_of_vusb_entries_and_keeps_absent_devices() {
    let w = machine(true);
    let dir = std::env::temp_dir().join(format!("usbctl-apply-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cfg = dir.join("guest.cfg");
    std::fs::write(
        &cfg,
        "name = 'guest'\nvusb = [ 'usbver=2, numports=4, port_1=1-1, port_3=1209:0009' ]\n",
    )
    .unwrap();
    let out = cli(&w, &["apply", "guest", cfg.to_str().unwrap()]).unwrap();
    assert_eq!(
        out,
        "usbctl: guest: controller 0: USB 2, 4 ports, backend usbdom\n\
         usbctl: guest:   port 1: 1-1 connected\n\
         usbctl: guest:   port 3: 1209:0009 waiting (device_absent): attached when it is plugged in\n"
    );
    let mut u = usbctl(&w);
    assert_eq!(
        u.list(w.guest).unwrap()[0].assigned,
        [(1, "1-1".to_string()), (3, "1209:0009".to_string())]
    );
    std::fs::write(&cfg, "vusb = [ 'usbver=4' ]\n").unwrap();
    let e = cli(&w, &["apply", "guest", cfg.to_str().unwrap()])
        .unwrap_err()
        .0;
    assert_eq!(
        e,
        format!(
            "{}:1: vusb entry 1 ('usbver=4'): usbver must be 1 to 3, not '4'",
            cfg.display()
        )
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

fn cli(w: &Machine, args: &[&str]) -> Result<String, Error> {
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    let tick = ticker(w);
    let mut out = Vec::new();
    let xen = w.xen.clone();
    let cli = Cli::parse_args(&args)?;
    let Command::Xenstore(command) = cli.command else {
        panic!("not a xenstore command: {args:?}");
    };
    cli::run(
        &cli.backend,
        command,
        move || Ok(xen.dom0().xenstore()),
        tick,
        &mut out,
    )?;
    Ok(String::from_utf8(out).unwrap())
}

#[test]
fn the_command_line_reports_what_is_wrong() {
    let w = machine(true);
    let e = |r: Result<String, Error>| r.unwrap_err().0;
    let not_a_number = e(cli(&w, &["hc-create", "guest", "two", "8"]));
    assert!(
        not_a_number.contains("'two'") && not_a_number.contains("<USB_VER>"),
        "{not_a_number}"
    );
    let negative = e(cli(&w, &["hc-create", "guest", "2", "-1"]));
    assert!(negative.contains("'-1'"), "{negative}");
    assert_eq!(
        e(cli(&w, &["hc-create", "nosuch", "2", "8"])),
        "no running domain is called 'nosuch' (see `xl list`)"
    );
    assert_eq!(
        e(cli(
            &w,
            &["--backend", "usbdom2", "hc-create", "guest", "2", "8"]
        )),
        "the backend domain 'usbdom2' is not running (start it: xl create usbdom.cfg)"
    );
    let no_domain = e(cli(&w, &["--backend"]));
    assert!(no_domain.contains("--backend <DOMAIN>"), "{no_domain}");
    let unknown = e(cli(&w, &["frobnicate"]));
    assert!(
        unknown.contains("unrecognized subcommand 'frobnicate'")
            && unknown.contains("; usage: usbctl [OPTIONS] <COMMAND>")
            && !unknown.contains('\n'),
        "one line: {unknown}"
    );
    assert_eq!(
        e(cli(&w, &["attach", "guest", "0"])),
        "the following required arguments were not provided: <PORT> <DEVICE>; \
         usage: usbctl attach <DOMAIN> <DEVID> <PORT> <DEVICE>"
    );

    let created = cli(&w, &["hc-create", "guest", "2", "8"]).unwrap();
    assert!(created.contains("created controller 0"), "{created}");
    let listed = cli(&w, &["list", "guest"]).unwrap();
    assert!(
        listed
            .lines()
            .nth(1)
            .is_some_and(|l| l.split_whitespace().collect::<Vec<_>>()[..4]
                == ["0", &w.usbdom.to_string(), "2", "8"]),
        "{listed}"
    );
    assert!(cli(&w, &["hc-destroy", "guest", "0"])
        .unwrap()
        .contains("destroyed controller 0"));
}

#[test]
fn hc_create_accepts_a_backend_that_already_went_past_initwait() {
    // A backend that connects before usbctl looks: its state is Connected, not InitWait.
    let w = machine(false);
    let usbdom = w.usbdom;
    let guest = w.guest;
    let xen = w.xen.clone();
    let tick = Box::new(move || {
        let b = format!("/local/domain/{usbdom}/backend/vusb/{guest}/0/state");
        let _ = xen.dom0().xenstore().write(TxId::NONE, &b, b"4");
    });
    let mut u = Usbctl::new(w.xen.dom0().xenstore(), tick).with_timeout(Duration::from_millis(200));
    assert_eq!(u.hc_create(w.guest, w.usbdom, 2, 8), Ok(0));
}

#[test]
fn start_gives_a_guest_its_controllers_back_from_a_new_driver_domain() {
    let w = machine(true);
    let cfg = usbctl::xlcfg::parse(
        "guest.cfg",
        "name = 'guest'\nvusb = [ 'usbver=2, numports=4, port_1=1-1' ]\n",
    )
    .unwrap();
    let mut u = usbctl(&w);
    let first = u.reapply(w.guest, &cfg.vusb, "usbdom").unwrap();
    assert_eq!(
        first,
        [
            "controller 0: USB 2, 4 ports, backend usbdom",
            "  port 1: 1-1 connected"
        ]
    );
    // The service started again with usbdom still running: nothing changes.
    assert_eq!(
        u.reapply(w.guest, &cfg.vusb, "usbdom").unwrap(),
        ["served by usbdom already"]
    );
    assert_eq!(u.served_by(w.usbdom).unwrap(), [(w.guest, 0)]);

    // usbdom dies without `usbctl stop` (libxl removes its directory) and a new one starts
    // under the same name: the guest's dead controller goes and devid 0 comes back, served
    // by the new domain, its keyboard on port 1.
    w.xen.destroy_domain(w.usbdom);
    w.xen
        .dom0()
        .xenstore()
        .rm(TxId::NONE, &format!("/local/domain/{}", w.usbdom))
        .unwrap();
    let usbdom2 = w.xen.create_domain();
    name(&w.xen, usbdom2.domid(), "usbdom");
    *w.backend.borrow_mut() =
        Some(Backend::new(usbdom2.clone(), usbdom2.xenstore(), usbdom2.domid()).unwrap());
    // The new driver domain enumerates the controller's devices afresh.
    let mut host = SimHost::new();
    host.plug(Box::new(Keyboard::new()), "1-1", Speed::Full);
    *w.host.borrow_mut() = host;
    let again = u.reapply(w.guest, &cfg.vusb, "usbdom").unwrap();
    assert_eq!(
        again,
        [
            "controller 0 removed: its backend domain is gone",
            "controller 0: USB 2, 4 ports, backend usbdom",
            "  port 1: 1-1 connected"
        ]
    );
    let list = u.list(w.guest).unwrap();
    assert_eq!(list.len(), 1);
    assert_eq!(list[0].backend, usbdom2.domid());
    assert_eq!(list[0].assigned, [(1, "1-1".to_string())]);
    assert_eq!(u.served_by(usbdom2.domid()).unwrap(), [(w.guest, 0)]);
}

#[test]
fn start_finds_recorded_configs_then_xendomains_ones() {
    use usbctl::service::{guest_configs, record_guest};
    let dir = std::env::temp_dir().join(format!("usbctl-service-{}", std::process::id()));
    let (recorded, auto, files) = (dir.join("guests"), dir.join("auto"), dir.join("files"));
    for d in [&auto, &files] {
        std::fs::create_dir_all(d).unwrap();
    }
    let write = |path: &std::path::Path, name: &str| {
        let text = format!("name = \"{name}\"\nvusb = [ 'port_1=1-1' ]\n");
        std::fs::write(path, text).unwrap();
    };
    write(&files.join("b.cfg"), "guest-b");
    write(&files.join("gone.cfg"), "guest-gone");
    record_guest(&recorded, "guest-b", &files.join("b.cfg")).unwrap();
    record_guest(&recorded, "guest-gone", &files.join("gone.cfg")).unwrap();
    std::fs::remove_file(files.join("gone.cfg")).unwrap();
    // xendomains' copy of guest-b: the recorded one counts.
    write(&auto.join("b.cfg"), "guest-b");
    write(&auto.join("c.cfg"), "guest-c");
    std::fs::write(auto.join("broken.cfg"), "name = [\n").unwrap();
    let found: Vec<_> = guest_configs(&recorded, &auto)
        .into_iter()
        .map(|r| r.map_err(|e| e.0))
        .collect();
    assert_eq!(
        found,
        [
            Ok(("guest-b".to_string(), recorded.join("guest-b.cfg"))),
            Err(format!(
                "{}:1: unterminated name list",
                auto.join("broken.cfg").display()
            )),
            Ok(("guest-c".to_string(), auto.join("c.cfg"))),
        ]
    );
    assert!(record_guest(&recorded, "../x", &files.join("b.cfg")).is_err());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_guest_gets_one_controller_from_two_usbctls_and_new_domains_are_seen_once() {
    use usbctl::service::NewDomains;
    let w = machine(true);
    let cfg = usbctl::xlcfg::parse(
        "g.cfg",
        "vusb = [ 'usbver=2, numports=4', 'usbver=1, numports=2' ]\n",
    )
    .unwrap();
    // `up` and `start --follow` both giving the guest its controllers: the second finds the
    // backend serving it and makes nothing; the config's second entry came with the first.
    let mut up = usbctl(&w);
    let mut follow = usbctl(&w);
    assert_eq!(
        up.apply_unless_served(w.guest, &cfg.vusb, "usbdom")
            .unwrap(),
        [
            "controller 0: USB 2, 4 ports, backend usbdom",
            "controller 1: USB 1, 2 ports, backend usbdom"
        ]
    );
    assert_eq!(
        follow.reapply(w.guest, &cfg.vusb, "usbdom").unwrap(),
        ["served by usbdom already", "served by usbdom already"]
    );
    assert_eq!(up.list(w.guest).unwrap().len(), 2);
    assert_eq!(
        up.hc_create_unless_served(w.guest, w.usbdom, 2, 8),
        Ok(None)
    );

    let mut seen = NewDomains::default();
    let dom = |id: u16, name: &str| (DomId(id), name.to_string());
    assert_eq!(
        seen.since_last(&[dom(0, "Domain-0"), dom(3, "guest-b")]),
        [dom(0, "Domain-0"), dom(3, "guest-b")]
    );
    // guest-b rebooted: xl made it again as domain 7, its name written after its directory.
    assert_eq!(seen.since_last(&[dom(0, "Domain-0"), dom(7, "")]), []);
    assert_eq!(
        seen.since_last(&[dom(0, "Domain-0"), dom(7, "guest-b")]),
        [dom(7, "guest-b")]
    );
    assert_eq!(
        seen.since_last(&[dom(0, "Domain-0"), dom(7, "guest-b")]),
        []
    );
}

#[test]
fn the_ready_line_counts_whole_and_from_this_boot() {
    use std::io::Write;
    use usbctl::service::ReadyWatch;
    let path = std::env::temp_dir().join(format!("usbctl-ready-{}", std::process::id()));
    let old = path.with_extension("old");
    let last_boot = "t=1 level=info event=ready uptime_us=5 xhci=old\n";
    std::fs::write(&path, last_boot).unwrap();
    // The last boot's log is set aside, whole; its line does not count.
    let watch = ReadyWatch::fresh(&path).unwrap();
    assert_eq!(std::fs::read_to_string(&old).unwrap(), last_boot);
    assert_eq!(watch.ready_line(), None);
    let mut f = std::fs::File::create(&path).unwrap();
    f.write_all(b"t=0 level=info event=boot\nt=2 level=info event=ready upt")
        .unwrap();
    assert_eq!(watch.ready_line(), None, "half a line");
    f.write_all(b"ime_us=7 xhci=0000:00:05.0\r\n").unwrap();
    assert_eq!(
        watch.ready_line().as_deref(),
        Some("t=2 level=info event=ready uptime_us=7 xhci=0000:00:05.0")
    );
    // No log yet is no error.
    std::fs::remove_file(&path).unwrap();
    assert!(ReadyWatch::fresh(&path).is_ok());
    std::fs::remove_file(&old).unwrap();
}

#[test]
fn a_guest_pointing_its_backend_node_at_another_guests_controller_reaches_only_its_own() {
    let w = machine(true);
    let victim = w.xen.create_domain().domid();
    name(&w.xen, victim, "victim");
    let mut u = usbctl(&w);
    assert_eq!(u.hc_create(victim, w.usbdom, 2, 8), Ok(0));
    assert!(matches!(
        u.attach(victim, 0, 1, "1-1", false),
        Ok(Attached::Connected)
    ));
    assert_eq!(u.hc_create(w.guest, w.usbdom, 2, 8), Ok(0));
    let victim_dir = format!("/local/domain/{}/backend/vusb/{victim}/0", w.usbdom);
    // The guest writes its own frontend directory, as it may.
    w.xen
        .domain(w.guest)
        .unwrap()
        .xenstore()
        .write(
            TxId::NONE,
            &format!("/local/domain/{}/device/vusb/0/backend", w.guest),
            victim_dir.as_bytes(),
        )
        .unwrap();
    // What the administrator (or `usbctl stop`) does to the guest's controller stays there.
    assert_eq!(u.list(w.guest).unwrap()[0].assigned, []);
    assert!(
        u.detach(w.guest, 0, 1).is_err(),
        "the guest's port 1 is empty"
    );
    u.hc_destroy(w.guest, 0).unwrap();
    assert_eq!(u.list(w.guest).unwrap(), []);
    let victims = u.list(victim).unwrap();
    assert_eq!(victims.len(), 1);
    assert_eq!(victims[0].assigned, [(1, "1-1".to_string())]);
    assert_eq!(
        u.xenstore()
            .read_string(TxId::NONE, &format!("{victim_dir}/online"))
            .unwrap(),
        "1"
    );
}
