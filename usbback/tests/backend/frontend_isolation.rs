//! What one frontend, or one device, can do to the others: each test plays an attacker
//! beside a well-behaved frontend and checks what that frontend observes.

use super::*;
use xen::abi::ring::{SRING_ENTRIES, SRING_REQ_PROD};
use xen::pvusb::{URB_RING_ENTRY_SIZE, URB_RING_SIZE};
use zerocopy::IntoBytes;

/// A hostile frontend on a second vCPU: it writes requests straight into its URB ring and
/// refills each slot as soon as the backend has written that slot's answer, never more than
/// a ring ahead (so no overrun is ever seen), up to `cap` requests in all.
struct Flooder {
    page: LocalPage,
    /// The pipe of every request it sends: bulk IN to an endpoint the host refuses at once.
    pipe: u32,
    prod: u32,
    answered: u32,
    next_id: u16,
    cap: usize,
    sent: usize,
}

impl Flooder {
    fn slot(index: u32) -> usize {
        SRING_ENTRIES + (index % URB_RING_SIZE) as usize * URB_RING_ENTRY_SIZE
    }

    /// Counts the answers written since it last looked (a response's status sits where a
    /// request's pipe does), then fills the ring up again.
    fn top_up(&mut self) {
        while self.answered < self.prod
            && self.page.load_u32(Self::slot(self.answered) + 4) != self.pipe
        {
            self.answered += 1;
        }
        while self.prod - self.answered < URB_RING_SIZE && self.sent < self.cap {
            let mut r = urb(0, 1, 0, 5, Direction::In, TransferType::Bulk);
            r.id = self.next_id;
            self.next_id = self.next_id.wrapping_add(1);
            self.pipe = r.pipe;
            self.page.write(Self::slot(self.prod), r.as_bytes());
            self.prod += 1;
            self.sent += 1;
            self.page.store_u32(SRING_REQ_PROD, self.prod);
        }
    }
}

/// The model host, plus the flooder acting between two of the backend's calls into the host
/// (as a frontend on another vCPU would), and refusing its requests at once as the xHCI
/// host refuses a transfer to an endpoint the configuration lacks.
struct FloodHost {
    model: Model,
    flooder: Flooder,
    attacker_device: u32,
    /// Requests of the attacker that reached the host.
    attacker_submits: usize,
}

impl UsbHost<LocalPage> for FloodHost {
    fn devices(&self) -> Vec<DeviceInfo> {
        self.model.devices()
    }
    fn poll(&mut self, events: &mut Vec<HostEvent>) {
        self.model.poll(events)
    }
    fn submit(&mut self, device: u32, t: host::Transfer<LocalPage>) -> Result<(), TransferError> {
        if device == self.attacker_device {
            self.attacker_submits += 1;
            self.flooder.top_up();
            return Err(TransferError::Invalid);
        }
        self.model.submit(device, t)
    }
    fn cancel(&mut self, device: u32, token: u64) -> bool {
        self.model.cancel(device, token)
    }
    fn set_configuration(
        &mut self,
        device: u32,
        value: u8,
        token: u64,
        vet: &mut host::Vet<'_>,
    ) -> Result<(), TransferError> {
        self.model.set_configuration(device, value, token, vet)
    }
    fn set_interface(
        &mut self,
        device: u32,
        i: u8,
        alt: u8,
        token: u64,
        vet: &mut host::Vet<'_>,
    ) -> Result<(), TransferError> {
        self.model.set_interface(device, i, alt, token, vet)
    }
    fn clear_halt(&mut self, device: u32, address: u8, token: u64) -> Result<(), TransferError> {
        self.model.clear_halt(device, address, token)
    }
    fn reset(&mut self, device: u32) -> Result<(), TransferError> {
        self.model.reset(device)
    }
}

/// One turn of the driver domain's main loop: the host's events, every pending port once,
/// then the frontends left with work.
fn main_loop_turn<U: UsbHost<LocalPage>>(be: &mut Backend<Domain, SimXsTransport>, host: &mut U) {
    let mut events = Vec::new();
    host.poll(&mut events);
    be.host_events(host, &mut events);
    let mut ports = Vec::new();
    be.hypervisor().take_pending(&mut |p| ports.push(p));
    for p in ports {
        be.handle_event(p, host);
    }
    be.serve_busy(host);
}

#[test]
fn a_refill_flood_gets_one_ring_per_turn_and_the_other_frontend_its_answers() {
    let mut w = machine(8);
    let (be_id, attacker) = (DomId(1), w.fe.domid());
    let victim = w.xen.create_domain();
    toolstack_add(&w.xen, be_id, victim.domid(), 8);
    let mut model = Model::default();
    model.plug(info(1, "1-1", Speed::High, 0, &[8]));
    model.plug(info(2, "1-2", Speed::High, 0, &[8]));
    settle(&mut w.be, &mut model);
    let front = RawFrontend::connect(&w.fe, be_id, None);
    let mut vfront = RawFrontend::connect(&victim, be_id, None);
    settle(&mut w.be, &mut model);
    assign(&w.xen, be_id, attacker, 1, "1-1");
    assign(&w.xen, be_id, victim.domid(), 1, "1-2");
    settle(&mut w.be, &mut model);
    let mut host = FloodHost {
        model,
        flooder: Flooder {
            page: front.urb_page.clone(),
            pipe: 0,
            prod: 0,
            answered: 0,
            next_id: 0,
            cap: 20_000,
            sent: 0,
        },
        attacker_device: 1,
        attacker_submits: 0,
    };

    // The attacker's ring fills with instantly refused requests it refills as fast as the
    // backend answers; the victim asks for 16 KiB at the same moment.
    host.flooder.top_up();
    w.fe.clone().send(front.port).unwrap();
    let mut attacker_port = Vec::new();
    w.be.hypervisor()
        .take_pending(&mut |p| attacker_port.push(p));
    let b = buffer(&victim, be_id, 0, &[0; 16384], false);
    send(
        &victim,
        &mut vfront,
        &[with_buffer(
            urb(7, 1, 0, 1, Direction::In, TransferType::Bulk),
            &b,
        )],
    );
    let mut victim_port = Vec::new();
    w.be.hypervisor().take_pending(&mut |p| victim_port.push(p));
    assert_eq!((attacker_port.len(), victim_port.len()), (1, 1));
    // One notification of the attacker is one budget of work, however fast it refills.
    w.be.handle_event(attacker_port[0], &mut host);
    assert!(
        host.attacker_submits <= URB_RING_SIZE as usize,
        "one pass took {} of the attacker's requests",
        host.attacker_submits
    );
    w.be.handle_event(victim_port[0], &mut host);
    // The victim's read is answered on the next turn, with its data, while the attacker
    // goes on being served a ring at a time.
    let mut victim_answers = Vec::new();
    for turn in 0..3 {
        main_loop_turn(&mut w.be, &mut host);
        host.flooder.top_up();
        w.fe.clone().send(front.port).unwrap();
        victim_answers.extend(responses(&mut vfront));
        assert!(
            host.attacker_submits <= (turn + 2) * URB_RING_SIZE as usize,
            "turn {turn}: {} attacker requests",
            host.attacker_submits
        );
    }
    assert_eq!(victim_answers.len(), 1);
    assert_eq!(
        (victim_answers[0].id, victim_answers[0].status),
        (7, USBIF_STATUS_OK)
    );
    let expected: Vec<u8> = (0..16384).map(|i| (i % 251) as u8).collect();
    assert!(b.read() == expected, "the victim's data arrived whole");
    assert!(
        host.attacker_submits > 2 * URB_RING_SIZE as usize,
        "the attacker is served too, not starved"
    );
    // Nothing of either grows: the rings are all that is mapped, and no frame is held.
    assert_eq!(w.be.hypervisor().mappings(), 4);
    assert_eq!(w.be.bounce_frames_held(), 0);
}

/// Two frontends, A (the world's) and B (a new domain), each connected with device 1-1
/// (A's, interfaces `a_classes`) or 1-2 (B's, mass storage) of `host` on its port 1.
struct Pair {
    w: Machine,
    be_id: DomId,
    a: Domain,
    b: Domain,
    afront: RawFrontend,
    bfront: RawFrontend,
}

fn pair(host: &mut Model, a_classes: &[u8]) -> Pair {
    let mut w = machine(8);
    let be_id = DomId(1);
    let (a, b) = (w.fe.clone(), w.xen.create_domain());
    toolstack_add(&w.xen, be_id, b.domid(), 8);
    host.plug(info(1, "1-1", Speed::High, 0, a_classes));
    host.plug(info(2, "1-2", Speed::High, 0, &[8]));
    settle(&mut w.be, host);
    let mut afront = RawFrontend::connect(&a, be_id, None);
    let mut bfront = RawFrontend::connect(&b, be_id, None);
    settle(&mut w.be, host);
    assign(&w.xen, be_id, a.domid(), 1, "1-1");
    assign(&w.xen, be_id, b.domid(), 1, "1-2");
    settle(&mut w.be, host);
    responses(&mut afront);
    responses(&mut bfront);
    Pair {
        w,
        be_id,
        a,
        b,
        afront,
        bfront,
    }
}

#[test]
fn a_transfer_that_outlives_its_frontend_never_writes_into_anyones_pages() {
    // Its cancel fails as a Stop Endpoint command can: the transfer stays queued.
    let mut host = Model {
        cancel_fails: true,
        ..Model::default()
    };
    let Pair {
        mut w,
        be_id,
        a,
        b: b_dom,
        mut afront,
        mut bfront,
    } = pair(&mut host, &[8]);
    host.hold = true;

    // A reads 8 KiB; the device has not answered when A's domain is destroyed.
    let abuf = buffer(&a, be_id, 0, &[0x11; 8192], false);
    send(
        &a,
        &mut afront,
        &[with_buffer(
            urb(1, 1, 0, 1, Direction::In, TransferType::Bulk),
            &abuf,
        )],
    );
    settle(&mut w.be, &mut host);
    let a_token = host.held[0].1.token;
    let a_addrs: Vec<u64> = host.held[0].1.segments.iter().map(|s| s.phys).collect();
    w.xen.destroy_domain(a.domid());
    w.xen
        .dom0()
        .xenstore()
        .rm(TxId::NONE, &backend_dir(be_id, a.domid()))
        .unwrap();
    settle(&mut w.be, &mut host);
    assert_eq!(w.be.devices().count(), 1, "A's controller is gone");
    assert_eq!(host.held.len(), 1, "the cancel failed: A's read still runs");
    assert_eq!(
        w.be.bounce_frames_held(),
        2,
        "its frames stay out of use until it finishes"
    );

    // B reads meanwhile: its buffer must not be where A's transfer may still write.
    let bbuf = buffer(&b_dom, be_id, 0, &[0x22; 8192], false);
    send(
        &b_dom,
        &mut bfront,
        &[with_buffer(
            urb(1, 1, 0, 1, Direction::In, TransferType::Bulk),
            &bbuf,
        )],
    );
    settle(&mut w.be, &mut host);
    let b_token = host.held.iter().find(|(d, _)| *d == 2).unwrap().1.token;
    let b_addrs: Vec<u64> = host
        .held
        .iter()
        .find(|(d, _)| *d == 2)
        .unwrap()
        .1
        .segments
        .iter()
        .map(|s| s.phys)
        .collect();
    assert!(
        b_addrs.iter().all(|p| !a_addrs.contains(p)),
        "B's transfer got frames A's may still write: {a_addrs:x?} {b_addrs:x?}"
    );

    // The device finally writes A's read, late; then answers B's.
    host.finish_late(a_token, 0xee);
    settle(&mut w.be, &mut host);
    assert!(
        abuf.read().iter().all(|&x| x == 0x11),
        "the late DMA reached A's page after A gave it back"
    );
    assert_eq!(w.be.bounce_frames_held(), 2, "only B's frames are in use");
    host.finish_late(b_token, 0x33);
    settle(&mut w.be, &mut host);
    let answers = responses(&mut bfront);
    assert_eq!(answers.len(), 1);
    assert_eq!(answers[0].status, USBIF_STATUS_OK);
    assert!(
        bbuf.read().iter().all(|&x| x == 0x33),
        "B got its own data, nothing of A's"
    );
    assert_eq!(w.be.bounce_frames_held(), 0);
    assert_eq!(w.be.hypervisor().mappings(), 2, "B's rings only");
}

#[test]
fn a_slow_device_keeps_only_its_own_guest_waiting() {
    // A's device takes its time over every standard request the host makes for it.
    let mut host = Model {
        slow: vec![1],
        ..Model::default()
    };
    let Pair {
        mut w,
        be_id,
        a,
        b: b_dom,
        mut afront,
        mut bfront,
    } = pair(&mut host, &[3]);

    // A asks for a configuration, an alternate setting and a cleared halt; B reads.
    let a_reqs = [
        control(1, 1, 0, [0x00, 9, 1, 0, 0, 0, 0, 0]),
        control(2, 1, 0, [0x01, 11, 1, 0, 0, 0, 0, 0]),
        control(3, 1, 0, [0x02, 1, 0, 0, 0x81, 0, 0, 0]),
    ];
    send(&a, &mut afront, &a_reqs);
    let bbuf = buffer(&b_dom, be_id, 0, &[0; 512], false);
    send(
        &b_dom,
        &mut bfront,
        &[with_buffer(
            urb(7, 1, 0, 1, Direction::In, TransferType::Bulk),
            &bbuf,
        )],
    );
    settle(&mut w.be, &mut host);
    assert_eq!(
        host.ops,
        [
            "reset 1",
            "reset 2",
            "set_configuration 1 1",
            "set_interface 1 0 1",
            "clear_halt 1 0x81"
        ],
        "the host was asked for all three without waiting for the device"
    );
    let b_got: Vec<(u16, i32, u32)> = responses(&mut bfront)
        .iter()
        .map(|r| (r.id, r.status, r.actual_length as u32))
        .collect();
    assert_eq!(b_got, [(7, USBIF_STATUS_OK, 512)], "B was served meanwhile");
    assert!(responses(&mut afront).is_empty(), "A waits for its device");
    assert_eq!(w.be.in_flight(), 3);

    // A gives up on the alternate setting: cancelled like a transfer, the unlink after it.
    let mut unlink = urb(8, 1, 0, 0, Direction::Out, TransferType::Control);
    unlink.pipe |= USBIF_PIPE_UNLINK;
    unlink.u[0] = 2;
    send(&a, &mut afront, &[unlink]);
    settle(&mut w.be, &mut host);
    let got: Vec<(u16, i32)> = responses(&mut afront)
        .iter()
        .map(|r| (r.id, r.status))
        .collect();
    assert_eq!(got, [(2, USBIF_STATUS_SHUTDOWN), (8, USBIF_STATUS_OK)]);

    // The device answers the other two at last.
    let tokens: Vec<u64> = host.held.iter().map(|(_, t)| t.token).collect();
    for token in tokens {
        host.finish_late(token, 0);
    }
    settle(&mut w.be, &mut host);
    let got: Vec<(u16, i32)> = responses(&mut afront)
        .iter()
        .map(|r| (r.id, r.status))
        .collect();
    assert_eq!(got, [(1, USBIF_STATUS_OK), (3, USBIF_STATUS_OK)]);
    assert_eq!(w.be.in_flight(), 0);
}
