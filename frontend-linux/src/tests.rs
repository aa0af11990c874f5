//! The frontend on `xen::sim`: against usbback's real `Backend`, and against a scripted
//! backend that answers exactly what each test needs, including what xen-hcd refuses.

use super::*;
use testkit::raw_frontend::{assign, toolstack_add, toolstack_remove};
use usb::IsoPacket;
use xen::abi::ring::SRING_RSP_PROD;
use xen::hypervisor::{GrantMapper, GrantMapping, MapRequest};
use xen::page::LocalPage;
use xen::pvusb::{self, ControllerNodes, Pipe};
use xen::ring::BackRing;
use xen::sim::{Domain, SimXsTransport, Xen};

type Fe = Frontend<Domain, SimXsTransport>;

fn frontend(dom: &Domain) -> Fe {
    Frontend::new(dom.clone(), dom.xenstore(), dom.domid(), 0).unwrap()
}

fn state_of(xen: &Xen, dir: &str) -> XenbusState {
    xenbus::read_state(&mut xen.dom0().xenstore(), TxId::NONE, dir).unwrap()
}

fn bulk(direction: Direction, buffer: Vec<u8>) -> Urb {
    Urb::new(
        Pipe {
            port: 1,
            unlink: false,
            direction,
            device: 2,
            endpoint: 1,
            transfer_type: TransferType::Bulk,
        },
        buffer,
    )
}

fn get_device_descriptor() -> Urb {
    Urb::control(1, 0, [0x80, 6, 0, 1, 0, 0, 18, 0], Vec::new())
}

fn drain(fe: &mut Fe) -> Vec<Completion> {
    core::iter::from_fn(|| fe.take_completed()).collect()
}

// ---------------------------------------------------------------------------------------
// Against usbback's Backend.

struct Real {
    xen: Xen,
    be: usbback::Backend<Domain, SimXsTransport>,
    fe_dom: Domain,
    fe: Fe,
    nodes: ControllerNodes,
}

fn real(ports: u8) -> Real {
    let xen = Xen::new();
    let be_dom = xen.create_domain();
    let fe_dom = xen.create_domain();
    let be = usbback::Backend::new(be_dom.clone(), be_dom.xenstore(), be_dom.domid()).unwrap();
    let nodes = toolstack_add(&xen, be_dom.domid(), fe_dom.domid(), ports);
    let fe = frontend(&fe_dom);
    Real {
        xen,
        be,
        fe_dom,
        fe,
        nodes,
    }
}

fn pump_backend(w: &mut Real) {
    w.be.poll_xenstore(&mut usbback::host::Absent).unwrap();
    let mut ports = Vec::new();
    w.be.hypervisor().take_pending(&mut |p| ports.push(p));
    for p in ports {
        w.be.handle_event(p, &mut usbback::host::Absent);
    }
    w.be.serve_busy(&mut usbback::host::Absent);
}

/// Both sides take turns until nothing changes any more.
fn settle(w: &mut Real) {
    for _ in 0..6 {
        pump_backend(w);
        w.fe.poll().unwrap();
    }
}

#[test]
fn connects_to_usbback_and_gets_nodev_translated() {
    let mut w = real(8);
    assert_eq!(w.fe.num_ports(), 8);
    assert_eq!(w.fe.usb_ver(), 2);
    assert_eq!(
        w.fe.submit(get_device_descriptor()),
        Err(Error::NotConnected)
    );
    settle(&mut w);
    assert_eq!(w.fe.state(), XenbusState::Connected);
    assert_eq!(
        state_of(&w.xen, &w.nodes.frontend_dir()),
        XenbusState::Connected
    );
    assert_eq!(
        state_of(&w.xen, &w.nodes.backend_dir()),
        XenbusState::Connected
    );
    let (urb_ref, conn_ref) = w.fe.ring_refs().unwrap();
    assert!(w.fe_dom.grant_in_use(urb_ref) && w.fe_dom.grant_in_use(conn_ref));

    let h = w.fe.submit(get_device_descriptor()).unwrap();
    assert_eq!(w.fe.in_flight(), 1);
    settle(&mut w);
    let done = drain(&mut w.fe);
    assert_eq!(done.len(), 1);
    assert_eq!(done[0].handle, h);
    assert_eq!(done[0].status, -errno::ENODEV);
    assert_eq!(done[0].actual_length, 0);
    assert!(done[0].data.is_empty());
    assert_eq!(w.fe.grants(), [urb_ref, conn_ref], "the data grant ended");
    assert_eq!(w.fe.error(), None);
    let stats = w.fe.stats();
    assert_eq!((stats.completed, stats.errors, stats.bytes), (1, 1, 0));
}

#[test]
fn a_full_ring_queues_and_everything_is_answered() {
    let mut w = real(8);
    settle(&mut w);
    let handles: Vec<_> = (0..40)
        .map(|i| {
            let mut urb = bulk(Direction::Out, vec![i as u8; 100 + i]);
            urb.page_offset = (i * 97 % 4096) as u16;
            w.fe.submit(urb).unwrap()
        })
        .collect();
    assert_eq!(w.fe.in_flight(), 16);
    assert_eq!(w.fe.queued(), 24);
    assert_eq!(w.fe.stats().ring_full, 24);
    settle(&mut w);
    let done = drain(&mut w.fe);
    assert_eq!(
        done.iter().map(|c| c.handle).collect::<Vec<_>>(),
        handles,
        "all answered, in order"
    );
    assert!(done.iter().all(|c| c.status == -errno::ENODEV));
    assert_eq!(w.fe.grants().len(), 2, "only the rings stay granted");
}

#[test]
fn backend_closing_gives_urbs_back_and_ends_every_grant() {
    let mut w = real(8);
    settle(&mut w);
    let in_flight: Vec<_> = (0..20)
        .map(|_| w.fe.submit(bulk(Direction::In, vec![0; 5000])).unwrap())
        .collect();
    let held = w.fe.grants();
    assert_eq!(held.len(), 2 + 16 * 2);
    // libxl removes the device: online=0, backend state Closing.
    toolstack_remove(&w.xen, w.nodes.backend, w.nodes.frontend);
    w.fe.poll().unwrap();
    assert_eq!(w.fe.state(), XenbusState::Closed);
    assert_eq!(
        state_of(&w.xen, &w.nodes.frontend_dir()),
        XenbusState::Closed
    );
    let done = drain(&mut w.fe);
    assert_eq!(done.iter().map(|c| c.handle).collect::<Vec<_>>(), in_flight);
    assert!(done.iter().all(|c| c.status == -errno::ESHUTDOWN));
    assert_eq!(
        w.fe.submit(get_device_descriptor()),
        Err(Error::NotConnected)
    );
    // The backend still maps the rings: those grants wait until it lets go.
    assert_eq!(w.fe.grants().len(), 2);
    settle(&mut w);
    assert!(w.fe.grants().is_empty());
    for g in held {
        assert!(!w.fe_dom.grant_in_use(g));
        assert_eq!(w.fe_dom.end_access(g), Err(Errno::EINVAL), "{g} ended");
    }
}

// ---------------------------------------------------------------------------------------
// Against a scripted backend.

struct Fake {
    dom: Domain,
    rings: Vec<GrantMapping<LocalPage>>,
    urb: BackRing<LocalPage, UsbifUrbRequest, UsbifUrbResponse>,
    conn: BackRing<LocalPage, UsbifConnRequest, UsbifConnResponse>,
    port: EvtchnPort,
    fe_dom: Domain,
    fe: Fe,
}

/// A connected frontend with 8 ports and a backend that does only what the test says.
fn fake() -> Fake {
    let xen = Xen::new();
    let dom = xen.create_domain();
    let fe_dom = xen.create_domain();
    let nodes = toolstack_add(&xen, dom.domid(), fe_dom.domid(), 8);
    xenbus::switch_state(
        &mut dom.xenstore(),
        &nodes.backend_dir(),
        XenbusState::InitWait,
    )
    .unwrap();
    // It asks for a four-page ring; this backend offers none (no `max-ring-page-order`),
    // so it gets xen-hcd's one page and writes `urb-ring-ref` as xen-hcd does.
    let mut fe = frontend(&fe_dom).with_ring_page_order(2);
    fe.poll().unwrap();
    assert_eq!(fe.state(), XenbusState::Connected);
    assert_eq!(fe.urb_ring_size(), Some(16));

    let mut xs = dom.xenstore();
    let fdir = nodes.frontend_dir();
    let read = |xs: &mut XenStore<SimXsTransport>, key| {
        xenbus::read_u32(xs, TxId::NONE, &fdir, key, 0..=u32::MAX).unwrap()
    };
    let urb_ref = GrantRef(read(&mut xs, pvusb::URB_RING_REF_KEY));
    let conn_ref = GrantRef(read(&mut xs, pvusb::CONN_RING_REF_KEY));
    let remote_port = EvtchnPort(read(&mut xs, pvusb::EVENT_CHANNEL_KEY));
    assert_eq!(fe.ring_refs(), Some((urb_ref, conn_ref)));
    assert_eq!(fe.event_channel(), Some(remote_port));
    let mut mapper = dom.clone();
    let rings: Vec<_> = mapper
        .map(&[urb_ref, conn_ref].map(|gref| MapRequest {
            dom: fe_dom.domid(),
            gref,
            readonly: false,
        }))
        .unwrap()
        .into_iter()
        .map(|r| r.unwrap())
        .collect();
    let port = mapper
        .bind_interdomain(fe_dom.domid(), remote_port)
        .unwrap();
    xenbus::switch_state(&mut xs, &nodes.backend_dir(), XenbusState::Connected).unwrap();
    Fake {
        urb: BackRing::new(rings[0].page.clone()),
        conn: BackRing::new(rings[1].page.clone()),
        dom,
        rings,
        port,
        fe_dom,
        fe,
    }
}

impl Fake {
    fn request(&mut self) -> UsbifUrbRequest {
        self.urb.next_request().unwrap().expect("a request")
    }

    fn respond(&mut self, rsp: UsbifUrbResponse) {
        self.urb.push_response(&rsp).unwrap();
        self.urb.push_responses_and_check_notify();
        self.dom.send(self.port).unwrap();
        self.fe.poll().unwrap();
    }

    fn connect_port(&mut self, portnum: u8, speed: u8) {
        let req = self.conn.next_request().unwrap().expect("a lent slot");
        let rsp = UsbifConnResponse {
            id: req.id,
            portnum,
            speed,
        };
        self.conn.push_response(&rsp).unwrap();
        self.conn.push_responses_and_check_notify();
        self.dom.send(self.port).unwrap();
        self.fe.poll().unwrap();
    }

    fn map(&mut self, seg: &UsbifRequestSegment, readonly: bool) -> GrantMapping<LocalPage> {
        let mut results = self
            .dom
            .map(&[MapRequest {
                dom: self.fe_dom.domid(),
                gref: seg.gref,
                readonly,
            }])
            .unwrap();
        results.pop().unwrap().expect("maps")
    }

    /// The frontend is stopped for good: it refuses URBs and ignores the rings.
    fn assert_stopped(&mut self, e: ProtocolError) {
        assert_eq!(self.fe.error(), Some(e));
        assert_eq!(
            self.fe.submit(get_device_descriptor()),
            Err(Error::Failed(e))
        );
        self.dom.send(self.port).unwrap();
        self.fe.poll().unwrap();
        assert_eq!(self.fe.error(), Some(e));
    }
}

fn ok(id: u16, actual_length: i32) -> UsbifUrbResponse {
    UsbifUrbResponse {
        id,
        start_frame: 0,
        status: USBIF_STATUS_OK,
        actual_length,
        error_count: 0,
    }
}

#[test]
fn connect_writes_the_keys_and_lends_512_conn_slots() {
    let mut f = fake();
    assert_eq!(f.conn.unconsumed_requests(), Ok(512));
    let ids: Vec<u16> = (0..512)
        .map(|_| f.conn.next_request().unwrap().unwrap().id)
        .collect();
    assert_eq!(ids, (0..512).collect::<Vec<u16>>());
    let (urb_ref, conn_ref) = f.fe.ring_refs().unwrap();
    assert!(f.fe_dom.grant_in_use(urb_ref) && f.fe_dom.grant_in_use(conn_ref));
}

#[test]
fn port_changes_are_tracked_and_each_slot_is_lent_again() {
    let mut f = fake();
    f.connect_port(3, USBIF_SPEED_HIGH);
    assert_eq!(f.fe.port_speed(3), Some(USBIF_SPEED_HIGH));
    assert_eq!(
        f.fe.take_port_event(),
        Some(PortEvent { port: 3, speed: 3 })
    );
    // The same speed again is no change; NONE is an unplug.
    f.connect_port(3, USBIF_SPEED_HIGH);
    assert_eq!(f.fe.take_port_event(), None);
    f.connect_port(3, USBIF_SPEED_NONE);
    assert_eq!(
        f.fe.take_port_event(),
        Some(PortEvent { port: 3, speed: 0 })
    );
    assert_eq!(f.fe.port_speed(9), None);
    // Three slots used, three lent again with their ids.
    assert_eq!(f.conn.unconsumed_requests(), Ok(512));
    let ids: Vec<u16> = (0..512)
        .map(|_| f.conn.next_request().unwrap().unwrap().id)
        .collect();
    assert_eq!(&ids[509..], [0, 1, 2]);
}

#[test]
fn segments_follow_the_pages_the_buffer_touches() {
    let mut f = fake();
    let data: Vec<u8> = (0..5000).map(|i| i as u8).collect();
    let mut urb = bulk(Direction::Out, data.clone());
    urb.page_offset = 4000;
    urb.short_not_ok = true;
    f.fe.submit(urb).unwrap();
    let req = f.request();
    assert_eq!(req.nr_buffer_segs, 3);
    assert_eq!(req.buffer_length, 5000);
    assert_eq!(req.transfer_flags, USBIF_SHORT_NOT_OK);
    let segs: Vec<(u16, u16)> = req.seg[..3].iter().map(|s| (s.offset, s.length)).collect();
    assert_eq!(segs, [(4000, 96), (0, 4096), (0, 808)]);
    // OUT grants are read-only; their bytes are the buffer's.
    let mut sent = Vec::new();
    for seg in &req.seg[..3] {
        let refused = f.dom.map(&[MapRequest {
            dom: f.fe_dom.domid(),
            gref: seg.gref,
            readonly: false,
        }]);
        assert!(refused.unwrap()[0].is_err(), "writable mapping refused");
        let m = f.map(seg, true);
        let mut bytes = vec![0; usize::from(seg.length)];
        m.page.read(usize::from(seg.offset), &mut bytes);
        sent.extend(bytes);
        f.dom.unmap([m]).unwrap();
    }
    assert_eq!(sent, data);
    f.respond(ok(req.id, 5000));
    let done = drain(&mut f.fe);
    assert_eq!((done[0].status, done[0].actual_length), (0, 5000));
    assert!(done[0].data.is_empty());
}

#[test]
fn in_data_comes_back_and_the_length_is_clamped() {
    let mut f = fake();
    let mut urb = bulk(Direction::In, vec![0; 300]);
    urb.page_offset = 4090;
    f.fe.submit(urb).unwrap();
    let req = f.request();
    assert_eq!(req.nr_buffer_segs, 2);
    for (k, seg) in req.seg[..2].iter().enumerate() {
        let m = f.map(seg, false);
        m.page.write(
            usize::from(seg.offset),
            &vec![0xa0 + k as u8; usize::from(seg.length)],
        );
        f.dom.unmap([m]).unwrap();
    }
    f.respond(ok(req.id, 100_000));
    let done = drain(&mut f.fe);
    assert_eq!(done[0].actual_length, 300);
    assert_eq!(&done[0].data[..6], [0xa0; 6]);
    assert_eq!(&done[0].data[6..], [0xa1; 294]);
    assert_eq!(f.fe.stats().bytes, 300);

    // Asked not to: the length and status come back, the data does not.
    let mut urb = bulk(Direction::In, vec![0; 300]);
    urb.discard_in_data = true;
    f.fe.submit(urb).unwrap();
    let req = f.request();
    f.respond(ok(req.id, 200));
    let done = drain(&mut f.fe);
    assert_eq!((done[0].status, done[0].actual_length), (0, 200));
    assert!(done[0].data.is_empty());

    f.fe.submit(bulk(Direction::In, vec![0; 10])).unwrap();
    let req = f.request();
    f.respond(UsbifUrbResponse {
        status: -121,
        ..ok(req.id, -5)
    });
    let done = drain(&mut f.fe);
    assert_eq!(
        (done[0].status, done[0].actual_length),
        (-errno::ESHUTDOWN, 0)
    );
}

#[test]
fn iso_descriptors_follow_the_buffer_and_come_back() {
    let mut f = fake();
    let pipe = Pipe {
        port: 2,
        unlink: false,
        direction: Direction::In,
        device: 3,
        endpoint: 1,
        transfer_type: TransferType::Isochronous,
    };
    let mut urb = Urb::new(pipe, vec![0; 3 * 192]);
    urb.interval = 1;
    urb.start_frame = 40;
    urb.iso_packets = (0..3)
        .map(|i| IsoPacket {
            offset: i * 192,
            length: 192,
        })
        .collect();
    f.fe.submit(urb).unwrap();
    let req = f.request();
    assert_eq!(req.nr_buffer_segs, 1);
    assert_eq!(
        req.u,
        [1, 0, 40, 0, 3, 0, 1, 0],
        "interval, start, packets, desc segs"
    );
    assert_eq!((req.seg[1].offset, req.seg[1].length), (0, 48));
    let m = f.map(&req.seg[1], false);
    let mut d = [UsbIsoPacketDescriptor::new_zeroed(); 3];
    m.page.read(0, d.as_mut_bytes());
    assert_eq!((d[2].offset, d[2].length), (384, 192));
    for p in &mut d {
        p.actual_length = 100;
    }
    d[1].status = -errno::EPROTO;
    m.page.write(0, d.as_bytes());
    f.dom.unmap([m]).unwrap();
    f.respond(UsbifUrbResponse {
        start_frame: 41,
        error_count: 1,
        ..ok(req.id, 200)
    });
    let done = drain(&mut f.fe);
    assert_eq!((done[0].start_frame, done[0].error_count), (41, 1));
    assert_eq!(done[0].iso_packets, d);
}

#[test]
fn unlink_sends_its_own_request_and_handles_both_responses() {
    let mut f = fake();
    let h = f.fe.submit(get_device_descriptor()).unwrap();
    let keep = f.fe.submit(get_device_descriptor()).unwrap();
    f.fe.unlink(h).unwrap();
    assert_eq!(f.fe.unlink(h), Err(Error::Busy));
    let original = f.request();
    let _other = f.request();
    let unlink = f.request();
    assert_eq!(unlink.pipe, original.pipe | USBIF_PIPE_UNLINK);
    assert_eq!(u16::from_le_bytes([unlink.u[0], unlink.u[1]]), original.id);
    assert_ne!(unlink.id, original.id);
    assert_eq!(unlink.nr_buffer_segs, 0);
    // The original's answer gives the URB back; the backend's status does not count.
    f.respond(UsbifUrbResponse {
        status: USBIF_STATUS_SHUTDOWN,
        ..ok(original.id, 0)
    });
    let done = drain(&mut f.fe);
    assert_eq!((done[0].handle, done[0].status), (h, -errno::ECONNRESET));
    f.respond(ok(unlink.id, 0));
    assert!(drain(&mut f.fe).is_empty());
    assert_eq!(f.fe.error(), None);
    assert_eq!(f.fe.in_flight(), 1);
    assert_eq!(f.fe.unlink(h), Err(Error::UnknownUrb));
    assert_eq!(f.fe.take_completed(), None, "{keep} still in flight");
}

#[test]
fn unlink_of_a_queued_urb_never_reaches_the_ring() {
    let mut f = fake();
    let handles: Vec<_> = (0..17)
        .map(|_| f.fe.submit(get_device_descriptor()).unwrap())
        .collect();
    f.fe.unlink(handles[16]).unwrap();
    let done = drain(&mut f.fe);
    assert_eq!(
        (done[0].handle, done[0].status),
        (handles[16], -errno::ECONNRESET)
    );
    assert_eq!(f.urb.unconsumed_requests(), Ok(16));
}

#[test]
fn a_response_id_of_16_stops_the_frontend() {
    let mut f = fake();
    f.fe.submit(get_device_descriptor()).unwrap();
    f.request();
    f.respond(ok(16, 0));
    f.assert_stopped(ProtocolError::UrbRingData { id: 16 });
}

#[test]
fn a_response_to_an_id_not_in_flight_stops_the_frontend() {
    let mut f = fake();
    f.fe.submit(get_device_descriptor()).unwrap();
    let req = f.request();
    f.respond(ok(req.id + 5, 0));
    f.assert_stopped(ProtocolError::IllegalRequestId { id: req.id + 5 });
    assert!(drain(&mut f.fe).is_empty());
}

#[test]
fn a_producer_index_beyond_the_ring_stops_the_frontend() {
    let mut f = fake();
    f.fe.submit(get_device_descriptor()).unwrap();
    f.rings[0].page.store_u32(SRING_RSP_PROD, 17);
    f.dom.send(f.port).unwrap();
    f.fe.poll().unwrap();
    f.assert_stopped(ProtocolError::UrbRingIndex {
        rsp_prod: 17,
        rsp_cons: 0,
    });
}

#[test]
fn a_grant_still_mapped_at_the_response_stops_the_frontend() {
    let mut f = fake();
    f.fe.submit(get_device_descriptor()).unwrap();
    let req = f.request();
    let kept = f.map(&req.seg[0], false);
    f.respond(ok(req.id, 18));
    f.assert_stopped(ProtocolError::GrantNotReleased {
        id: req.id,
        gref: req.seg[0].gref,
    });
    assert!(drain(&mut f.fe).is_empty(), "the URB is not given back");
    // Once the backend lets go, the grant is ended after all.
    assert!(f.fe.grants().contains(&req.seg[0].gref));
    f.dom.unmap([kept]).unwrap();
    f.fe.poll().unwrap();
    assert!(!f.fe.grants().contains(&req.seg[0].gref));
}

#[test]
fn a_conn_response_for_a_port_out_of_range_stops_the_frontend() {
    let mut f = fake();
    f.connect_port(9, USBIF_SPEED_FULL);
    f.assert_stopped(ProtocolError::ConnRingData {
        portnum: 9,
        speed: 2,
    });
    let mut f = fake();
    f.connect_port(0, USBIF_SPEED_FULL);
    assert_eq!(
        f.fe.error(),
        Some(ProtocolError::ConnRingData {
            portnum: 0,
            speed: 2
        })
    );
}

#[test]
fn a_conn_speed_above_high_stops_the_frontend() {
    let mut f = fake();
    f.connect_port(1, 4);
    f.assert_stopped(ProtocolError::ConnRingData {
        portnum: 1,
        speed: 4,
    });
    assert_eq!(f.fe.port_speed(1), Some(USBIF_SPEED_NONE));
    assert_eq!(f.fe.take_port_event(), None);
}

#[test]
fn a_conn_producer_index_beyond_the_ring_stops_the_frontend() {
    let mut f = fake();
    f.rings[1].page.store_u32(SRING_RSP_PROD, 513);
    f.dom.send(f.port).unwrap();
    f.fe.poll().unwrap();
    f.assert_stopped(ProtocolError::ConnRingIndex {
        rsp_prod: 513,
        rsp_cons: 0,
    });
}

#[test]
fn urbs_over_16_segments_or_64_kib_are_refused() {
    let mut f = fake();
    assert_eq!(
        f.fe.submit(bulk(Direction::Out, vec![0; 65536])),
        Err(Error::TooBig)
    );
    let mut urb = bulk(Direction::In, vec![0; 16 * 4096]);
    urb.buffer.truncate(65535);
    urb.page_offset = 2;
    assert_eq!(f.fe.submit(urb), Err(Error::TooBig), "17 pages");
    let mut urb = bulk(Direction::In, vec![0; 65535]);
    urb.page_offset = 1;
    assert!(f.fe.submit(urb).is_ok(), "16 pages");
}

/// A backend and a frontend domain whose 8-port controller says `usb-ver` = `usb_ver`.
fn controller_of_version(usb_ver: &[u8]) -> (Xen, Domain, Domain, ControllerNodes) {
    let xen = Xen::new();
    let be = xen.create_domain();
    let fe = xen.create_domain();
    let nodes = toolstack_add(&xen, be.domid(), fe.domid(), 8);
    let key = format!("{}/usb-ver", nodes.backend_dir());
    xen.dom0()
        .xenstore()
        .write(TxId::NONE, &key, usb_ver)
        .unwrap();
    (xen, be, fe, nodes)
}

#[test]
fn probe_needs_valid_backend_keys() {
    let (_xen, _be, fe, _nodes) = controller_of_version(b"4");
    assert!(matches!(
        Frontend::new(fe.clone(), fe.xenstore(), fe.domid(), 0),
        Err(Error::Xenbus(XenbusError::BadValue { .. }))
    ));
}

#[test]
fn on_a_usb3_controller_a_superspeed_stick_comes_as_superspeed_through_usbback() {
    let (xen, be, fe_dom, nodes) = controller_of_version(b"3");
    let fe = Frontend::new(fe_dom.clone(), fe_dom.xenstore(), fe_dom.domid(), 0).unwrap();
    assert_eq!(fe.usb_ver(), 3);
    // Through usbback: a SuperSpeed stick on the USB 3 controller comes as SuperSpeed.
    use testkit::sim_host::{MassStorage, SimHost};
    let mut backend = usbback::Backend::new(be.clone(), be.xenstore(), be.domid()).unwrap();
    let mut host: SimHost<LocalPage> = SimHost::new();
    host.plug(Box::new(MassStorage::new(64)), "2-1", usb::Speed::Super);
    assign(&xen, nodes.backend, nodes.frontend, 1, "2-1");
    let mut fe = fe;
    for _ in 0..4 {
        testkit::main_loop::turn(&mut backend, &mut host);
        fe.poll().unwrap();
    }
    assert_eq!(fe.state(), XenbusState::Connected);
    assert_eq!(fe.port_speed(1), Some(pvusb::USBIF_SPEED_SUPER));
    assert_eq!(fe.error(), None);
}

#[test]
fn removal_of_the_device_directory_shuts_the_frontend_down() {
    let mut w = real(8);
    settle(&mut w);
    let h = w.fe.submit(bulk(Direction::Out, vec![7; 10])).unwrap();
    w.xen
        .dom0()
        .xenstore()
        .rm(TxId::NONE, &w.nodes.frontend_dir())
        .unwrap();
    w.fe.poll().unwrap();
    assert_eq!(w.fe.state(), XenbusState::Closed);
    let done = drain(&mut w.fe);
    assert_eq!((done[0].handle, done[0].status), (h, -errno::ESHUTDOWN));
}

#[test]
fn many_frontends_share_one_backend() {
    let xen = Xen::new();
    let be_dom = xen.create_domain();
    let mut be = usbback::Backend::new(be_dom.clone(), be_dom.xenstore(), be_dom.domid()).unwrap();
    let mut fes: Vec<Fe> = (0..4)
        .map(|_| {
            let dom = xen.create_domain();
            toolstack_add(&xen, be_dom.domid(), dom.domid(), 4);
            frontend(&dom)
        })
        .collect();
    let round = |be: &mut usbback::Backend<Domain, SimXsTransport>, fes: &mut [Fe]| {
        be.poll_xenstore(&mut usbback::host::Absent).unwrap();
        let mut ports = Vec::new();
        be.hypervisor().take_pending(&mut |p| ports.push(p));
        for p in ports {
            be.handle_event(p, &mut usbback::host::Absent);
        }
        be.serve_busy(&mut usbback::host::Absent);
        for fe in fes.iter_mut() {
            fe.poll().unwrap();
        }
    };
    for _ in 0..3 {
        round(&mut be, &mut fes);
    }
    for fe in &mut fes {
        assert_eq!(fe.state(), XenbusState::Connected);
        for _ in 0..20 {
            fe.submit(get_device_descriptor()).unwrap();
        }
    }
    for _ in 0..4 {
        round(&mut be, &mut fes);
    }
    for fe in &mut fes {
        assert_eq!(fe.stats().completed, 20);
        assert_eq!(fe.error(), None);
    }
}

mod through_usbback;
