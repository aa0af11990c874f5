//! Each phase against usbback's real `Backend` on `xen::sim`, while a well-behaved victim
//! (the conformance [`Frontend`]) reads its own stick through the same backend: the victim
//! sees every URB answered with the right data, the attacker is refused or cut off, and the
//! backend maps only the victim's rings once the attacker is gone.

use super::*;
use crate::{Completion, Frontend, Urb};
use alloc::boxed::Box;
use alloc::string::ToString;
use alloc::vec;
use testkit::sim_host::{Keyboard, MassStorage, SimHost, BLOCK_SIZE};
use usb::mass_storage::read_write_10_cbw;
use usb::{Direction, Speed, TransferType};
use xen::page::LocalPage;
use xen::pvusb::{ControllerNodes, Pipe};
use xen::sim::{Domain, SimXsTransport, Xen};

type Backend = usbback::Backend<Domain, SimXsTransport>;

/// Blocks the victim reads at a time, from this block on.
const READ_BLOCKS: u16 = 8;
const READ_LBA: u32 = 32;

fn add_controller(xen: &Xen, be: DomId, fe: DomId, busid: Option<&str>) {
    let nodes = ControllerNodes {
        frontend: fe,
        backend: be,
        devid: 0,
        usb_ver: 2,
        ports: 4,
    };
    let mut xs = xen.dom0().xenstore();
    xs.transaction(3, |xs, tx| nodes.write(xs, tx)).unwrap();
    if let Some(busid) = busid {
        let key = format!("{}/{}/1", nodes.backend_dir(), xen::pvusb::ASSIGN_DIR);
        xs.write(TxId::NONE, &key, busid.as_bytes()).unwrap();
    }
}

/// A guest reading blocks of its stick over and over, checking every byte.
struct Victim {
    fe: Frontend<Domain, SimXsTransport>,
    disk: Vec<u8>,
    configured: bool,
    waiting: usize,
    done: Vec<Completion>,
    reads: u64,
    bad: Vec<String>,
}

fn bulk(direction: Direction, endpoint: u8, buffer: Vec<u8>) -> Urb {
    let pipe = Pipe {
        port: 1,
        unlink: false,
        direction,
        device: 5,
        endpoint,
        transfer_type: TransferType::Bulk,
    };
    Urb::new(pipe, buffer)
}

impl Victim {
    fn step(&mut self) {
        let _ = self.fe.poll_xenstore();
        self.fe.handle_event();
        self.fe.kick();
        while let Some(c) = self.fe.take_completed() {
            self.done.push(c);
        }
        if self.fe.state() != XenbusState::Connected || self.fe.port_speed(1) != Some(3) {
            return;
        }
        if self.waiting > 0 && self.done.len() < self.waiting {
            return;
        }
        let done = core::mem::take(&mut self.done);
        if done.iter().any(|c| c.status != 0) {
            self.bad.push(format!("{done:?}"));
        }
        if self.waiting == 3 && self.configured {
            let start = READ_LBA as usize * 512;
            if done[1].data != self.disk[start..start + 4096] || done[2].data[12] != 0 {
                self.bad.push("wrong data or failed CSW".to_string());
            }
            self.reads += 1;
        } else if self.waiting == 3 {
            self.configured = true;
        }
        let urbs = if self.configured {
            vec![
                bulk(
                    Direction::Out,
                    2,
                    read_write_10_cbw(
                        self.reads as u32,
                        false,
                        READ_LBA,
                        READ_BLOCKS,
                        BLOCK_SIZE as u32,
                    )
                    .to_vec(),
                ),
                bulk(Direction::In, 1, vec![0; 4096]),
                bulk(Direction::In, 1, vec![0; 13]),
            ]
        } else {
            // What Linux's USB core does first: the descriptor, the address, the configuration.
            vec![
                Urb::control(1, 0, [0x80, 6, 0, 1, 0, 0, 18, 0], Vec::new()),
                Urb::control(1, 0, [0, 5, 5, 0, 0, 0, 0, 0], Vec::new()),
                Urb::control(1, 5, [0, 9, 1, 0, 0, 0, 0, 0], Vec::new()),
            ]
        };
        self.waiting = urbs.len();
        for urb in urbs {
            self.fe.submit(urb).unwrap();
        }
    }
}

/// The machine: usbback with a stick for the victim and (maybe) a keyboard for the
/// attacker; each pause is one round of everybody but the attacker, and one millisecond.
struct Machine {
    xen: Xen,
    be: Backend,
    host: SimHost<LocalPage>,
    victim: Victim,
    clock: u64,
    events: Vec<String>,
}

impl Machine {
    fn round(&mut self) {
        testkit::main_loop::turn(&mut self.be, &mut self.host);
        self.victim.step();
    }
}

impl AttackEnv for Machine {
    fn now_ms(&mut self) -> u64 {
        self.clock
    }

    fn pause(&mut self, _ms: u64) {
        self.clock += 1;
        // The driver domain's main loop logs its counters every second, which also opens
        // each frontend's budgets for the next one.
        if self.clock % 1000 == 0 {
            self.be.log_stats();
        }
        self.round();
    }

    fn event(&mut self, line: &str) {
        self.events.push(line.into());
    }
}

type SimAttacker = Attacker<Domain, SimXsTransport>;

/// The victim connected and reading; the attacker probed, with a keyboard on its port 1 if
/// `attacker_device`.
fn machine(attacker_device: bool) -> (Machine, SimAttacker) {
    let xen = Xen::new();
    let be_dom = xen.create_domain();
    let be = Backend::new(be_dom.clone(), be_dom.xenstore(), be_dom.domid()).unwrap();
    let mut host = SimHost::new();
    let stick = host.plug(Box::new(MassStorage::new(256)), "1-1", Speed::High);
    let disk: Vec<u8> = (0..256 * 512u32)
        .map(|i| (i.wrapping_mul(131) >> 3) as u8)
        .collect();
    host.model_mut::<MassStorage>(stick)
        .unwrap()
        .disk_mut()
        .copy_from_slice(&disk);
    if attacker_device {
        host.plug(Box::new(Keyboard::new()), "1-2", Speed::Full);
    }
    let victim_dom = xen.create_domain();
    add_controller(&xen, be_dom.domid(), victim_dom.domid(), Some("1-1"));
    let fe = Frontend::new(
        victim_dom.clone(),
        victim_dom.xenstore(),
        victim_dom.domid(),
        0,
    );
    let attacker_dom = xen.create_domain();
    add_controller(
        &xen,
        be_dom.domid(),
        attacker_dom.domid(),
        attacker_device.then_some("1-2"),
    );
    let mut w = Machine {
        xen,
        be,
        host,
        victim: Victim {
            fe: fe.unwrap(),
            disk,
            configured: false,
            waiting: 0,
            done: Vec::new(),
            reads: 0,
            bad: Vec::new(),
        },
        clock: 0,
        events: Vec::new(),
    };
    for _ in 0..10 {
        w.round();
    }
    assert!(w.victim.reads > 0, "the victim reads before the attack");
    let a = Attacker::new(
        attacker_dom.clone(),
        attacker_dom.xenstore(),
        attacker_dom.domid(),
        0,
    )
    .unwrap();
    (w, a)
}

/// Runs `phase` for 1000 simulated milliseconds (a held request waits 300 of them); checks
/// the victim was served meanwhile.
fn attack(w: &mut Machine, a: &mut SimAttacker, phase: Phase) -> Report {
    let before = w.victim.reads;
    let r = a.run(phase, w, 1000);
    assert!(
        w.events
            .iter()
            .any(|e| e.starts_with(&format!("attack: phase={}", phase.name()))),
        "{:?}",
        w.events
    );
    assert!(
        w.victim.reads > before,
        "{}: the victim read nothing during the attack",
        phase.name()
    );
    r
}

/// The attacker leaves; the victim goes on reading, untouched, and the backend maps only
/// the victim's two ring pages.
fn finish(mut w: Machine, mut a: SimAttacker) {
    assert_eq!(a.close(&mut w), 0, "every attacker grant ended");
    let before = w.victim.reads;
    for _ in 0..20 {
        w.round();
    }
    assert!(w.victim.reads > before);
    assert_eq!(
        w.victim.bad,
        Vec::<String>::new(),
        "the victim saw only success"
    );
    assert_eq!(
        w.victim.fe.error(),
        None,
        "the victim saw no protocol error"
    );
    assert_eq!(
        w.be.hypervisor().mappings(),
        2,
        "only the victim's rings stay mapped"
    );
    let _ = &w.xen;
}

fn only(r: &Report, status: i32) -> bool {
    r.statuses.keys().all(|s| *s == status) && r.answered > 0
}

#[test]
fn flood_is_answered_in_full_and_the_victim_keeps_its_share() {
    let (mut w, mut a) = machine(false);
    let r = attack(&mut w, &mut a, Phase::Flood);
    assert!(r.as_expected, "{r}");
    assert!(r.sent > 100 * u64::from(URB_RING_SIZE), "{r}");
    assert!(only(&r, USBIF_STATUS_NODEV), "{r}");
    assert!(r.detail.contains("peak_outstanding=16"), "{r}");
    finish(w, a);
}

#[test]
fn a_response_written_before_rsp_prod_is_seen_in_its_slot() {
    let (mut w, mut a) = machine(false);
    let mut r = Report::new(Phase::Flood);
    assert!(a.ensure_connected(&mut w, &mut r));
    let id = a.free_id().unwrap();
    a.put(
        &request(id, pipe(1, true, phases::NO_DEVICE, 1, 3), [0; 8]),
        Vec::new(),
        &mut r,
    );
    // The backend's write of the answer, not yet published.
    let rsp = UsbifUrbResponse {
        id,
        start_frame: 0,
        status: USBIF_STATUS_NODEV,
        actual_length: 0,
        error_count: 0,
    };
    let page = a.link.as_ref().unwrap().urb.clone();
    page.write(SRING_ENTRIES, rsp.as_bytes());
    a.collect(&mut r);
    assert_eq!(
        (r.answered, r.seen_in_slot, a.room()),
        (1, 1, URB_RING_SIZE)
    );
    assert_eq!(r.statuses.get(&USBIF_STATUS_NODEV), Some(&1));
    finish(w, a);
}

#[test]
fn bogus_grefs_are_refused_one_by_one() {
    let (mut w, mut a) = machine(true);
    let r = attack(&mut w, &mut a, Phase::BogusGrefs);
    assert!(r.as_expected && r.device, "{r}");
    assert!(only(&r, USBIF_STATUS_INVAL), "{r}");
    finish(w, a);
}

#[test]
fn foreign_and_read_only_grants_are_refused_and_never_written() {
    let (mut w, mut a) = machine(true);
    let r = attack(&mut w, &mut a, Phase::ForeignGrefs);
    assert!(r.as_expected && r.device, "{r}");
    assert!(r.detail.contains("read_only_intact=yes"), "{r}");
    // Refused before the device, or, for a reference a copy wrote to lately (each round
    // grants anew and gets the numbers back), when the data is copied out: never written.
    assert!(
        r.statuses
            .keys()
            .all(|s| [USBIF_STATUS_INVAL, USBIF_STATUS_IOERROR].contains(s)),
        "{r}"
    );
    finish(w, a);
}

#[test]
fn each_ring_overrun_costs_the_connection() {
    let (mut w, mut a) = machine(false);
    let r = attack(&mut w, &mut a, Phase::Overrun);
    assert!(r.as_expected, "{r}");
    assert_eq!(
        (r.violations, r.disconnects, r.reconnects),
        (3, 3, 2),
        "{r}"
    );
    assert!(w
        .events
        .iter()
        .any(|e| e.contains("event=disconnected backend_state=6")));
    finish(w, a);
}

#[test]
fn reused_ids_cost_the_connection() {
    let (mut w, mut a) = machine(true);
    let r = attack(&mut w, &mut a, Phase::ReusedIds);
    assert!(r.as_expected && r.device, "{r}");
    assert_eq!((r.violations, r.disconnects), (3, 3), "{r}");
    for v in ["same_push", "held_then_reused", "unlink_reusing_id"] {
        assert!(r.detail.contains(&format!("{v}=disconnected")), "{r}");
    }
    finish(w, a);
}

#[test]
fn reused_ids_without_a_device_are_two_answers() {
    let (mut w, mut a) = machine(false);
    let r = attack(&mut w, &mut a, Phase::ReusedIds);
    assert!(r.as_expected && !r.device, "{r}");
    assert_eq!((r.disconnects, r.answered), (0, 2), "{r}");
    finish(w, a);
}

#[test]
fn unlink_storm_answers_every_request_once() {
    let (mut w, mut a) = machine(true);
    let r = attack(&mut w, &mut a, Phase::UnlinkStorm);
    assert!(r.as_expected && r.device, "{r}");
    assert!(r.detail.contains("held=8 originals_answered=8"), "{r}");
    assert!(
        r.detail
            .contains(&format!("stray_unlinks={}", phases::STRAY_UNLINKS)),
        "{r}"
    );
    finish(w, a);
}

#[test]
fn malformed_isochronous_requests_are_refused() {
    let (mut w, mut a) = machine(true);
    let r = attack(&mut w, &mut a, Phase::BadIso);
    assert!(r.as_expected && r.device, "{r}");
    assert!(only(&r, USBIF_STATUS_INVAL), "{r}");
    assert_eq!(
        r.sent as usize,
        phases::ROUNDS * phases::ISO_CASES.len(),
        "{r}"
    );
    finish(w, a);
}

#[test]
fn state_flapping_ends_with_a_clean_reconnect() {
    let (mut w, mut a) = machine(false);
    let r = attack(&mut w, &mut a, Phase::StateFlap);
    assert!(r.as_expected, "{r}");
    assert!(r.detail.contains("served_after=yes"), "{r}");
    finish(w, a);
}

#[test]
fn every_phase_in_a_row() {
    for device in [false, true] {
        let (mut w, mut a) = machine(device);
        for phase in Phase::ALL {
            let r = attack(&mut w, &mut a, phase);
            assert!(r.as_expected, "device={device}: {r}");
        }
        finish(w, a);
    }
}

#[test]
fn phases_parse_by_name() {
    for p in Phase::ALL {
        assert_eq!(Phase::parse(p.name()), Some(p));
    }
    assert_eq!(Phase::parse("nope"), None);
    assert_eq!(status_name(-19), "nodev");
    assert_eq!(status_name(-104), "errno104");
}
