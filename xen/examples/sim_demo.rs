//! `cargo xtask run` today: the PVUSB connection of one user domain to a backend domain,
//! played out on `xen::sim` with the real xen-layer code on both sides.
//!
//! dom0 writes the device directories as libxl does; the backend and the frontend follow the
//! xenbus rules, share two rings through grants and one event channel, and exchange a URB.
//! There is no USB host behind the backend yet (the xHCI driver comes later), so the URB is
//! answered `USBIF_STATUS_NODEV`. Then dom0 removes the device and both sides tear down.
//! Every step is checked; a broken step panics, so this also runs as a test.

use log::info;
use usb::{Direction, TransferType};
use xen::abi::usbif::*;
use xen::abi::{DomId, EvtchnPort, GrantRef};
use xen::hypervisor::{EventChannels, GrantMapper, GrantMapping, MapRequest};
use xen::page::LocalPage;
use xen::pvusb::{self, ControllerNodes, Pipe, UrbRequest, CONN_RING_SIZE};
use xen::ring::{BackRing, FrontRing};
use xen::sim::{Domain, Xen};
use xen::xenbus::{self, BackendAction, FrontendAction, XenbusState};
use xen::xenstore::TxId;
use zerocopy::FromZeros;

struct Logger;

impl log::Log for Logger {
    fn enabled(&self, _: &log::Metadata) -> bool {
        true
    }
    fn log(&self, record: &log::Record) {
        println!("{}", record.args());
    }
    fn flush(&self) {}
}

static LOGGER: Logger = Logger;

type UrbBack = BackRing<LocalPage, UsbifUrbRequest, UsbifUrbResponse>;
type ConnBack = BackRing<LocalPage, UsbifConnRequest, UsbifConnResponse>;

fn backend_dir(be: DomId, fe: DomId) -> String {
    format!("/local/domain/{be}/backend/vusb/{fe}/0")
}

fn frontend_dir(fe: DomId) -> String {
    format!("/local/domain/{fe}/device/vusb/0")
}

/// dom0's part: the directories libxl writes for a `type=pv` usbctrl, in one transaction.
fn toolstack_add(dom0: &Domain, be: DomId, fe: DomId) {
    let nodes = ControllerNodes {
        frontend: fe,
        backend: be,
        devid: 0,
        usb_ver: 2,
        ports: 8,
    };
    dom0.xenstore()
        .transaction(3, |xs, tx| nodes.write(xs, tx))
        .expect("toolstack writes the device");
    info!("event=toolstack_add_vusb backend={be} frontend={fe} devid=0");
}

struct Frontend {
    dom: Domain,
    urb: FrontRing<LocalPage, UsbifUrbRequest, UsbifUrbResponse>,
    port: EvtchnPort,
    data_gref: GrantRef,
    grants: [GrantRef; 3],
}

/// The frontend's connect step, as Linux xen-hcd does it.
fn frontend_connect(fe: &Domain, be: DomId) -> Frontend {
    let mut xs = fe.xenstore();
    let fdir = frontend_dir(fe.domid());
    let bdir = xs
        .read_string(TxId::NONE, &format!("{fdir}/backend"))
        .unwrap();
    let num_ports =
        xenbus::read_u32(&mut xs, TxId::NONE, &bdir, pvusb::NUM_PORTS_KEY, 1..=31).unwrap();
    let usb_ver = xenbus::read_u32(&mut xs, TxId::NONE, &bdir, pvusb::USB_VER_KEY, 1..=2).unwrap();
    let be_state = xenbus::read_state(&mut xs, TxId::NONE, &bdir).unwrap();
    assert_eq!(
        xenbus::frontend_action(XenbusState::Initialising, be_state),
        FrontendAction::Connect
    );

    let (urb_gfn, urb_page) = fe.alloc_page();
    let (conn_gfn, conn_page) = fe.alloc_page();
    let urb_ref = fe.grant_access(be, urb_gfn, false).unwrap();
    let conn_ref = fe.grant_access(be, conn_gfn, false).unwrap();
    let mut evt = fe.clone();
    let port = evt.alloc_unbound(be).unwrap();
    let urb = FrontRing::init(urb_page);
    let mut conn = FrontRing::<_, UsbifConnRequest, UsbifConnResponse>::init(conn_page);
    xs.transaction(3, |xs, tx| {
        xs.write(
            tx,
            &format!("{fdir}/urb-ring-ref"),
            urb_ref.to_string().as_bytes(),
        )?;
        xs.write(
            tx,
            &format!("{fdir}/conn-ring-ref"),
            conn_ref.to_string().as_bytes(),
        )?;
        xs.write(
            tx,
            &format!("{fdir}/event-channel"),
            port.to_string().as_bytes(),
        )
    })
    .unwrap();
    // Lend the backend every conn-ring slot for port events.
    for id in 0..CONN_RING_SIZE as u16 {
        conn.push_request(&UsbifConnRequest { id }).unwrap();
    }
    if conn.push_requests_and_check_notify() {
        evt.send(port).unwrap();
    }
    xenbus::switch_state(&mut xs, &fdir, XenbusState::Connected).unwrap();
    info!(
        "event=frontend_connected domid={} ports={num_ports} usb_ver={usb_ver} urb_ring_ref={urb_ref} conn_ring_ref={conn_ref} evtchn={port}",
        fe.domid()
    );
    let (data_gfn, _) = fe.alloc_page();
    let data_gref = fe.grant_access(be, data_gfn, false).unwrap();
    Frontend {
        dom: fe.clone(),
        urb,
        port,
        data_gref,
        grants: [urb_ref, conn_ref, data_gref],
    }
}

struct Backend {
    dom: Domain,
    rings: Vec<GrantMapping<LocalPage>>,
    urb: UrbBack,
    conn: ConnBack,
    port: EvtchnPort,
}

/// The backend's connect step: map both rings, bind the channel, switch to Connected.
fn backend_connect(be: &Domain, fe: DomId) -> Backend {
    let mut xs = be.xenstore();
    let bdir = backend_dir(be.domid(), fe);
    let fdir = xs
        .read_string(TxId::NONE, &format!("{bdir}/frontend"))
        .unwrap();
    let fe_state = xenbus::read_state(&mut xs, TxId::NONE, &fdir).unwrap();
    assert_eq!(
        xenbus::backend_action(XenbusState::InitWait, fe_state),
        BackendAction::Connect
    );
    let read_ref = |xs: &mut _, key| {
        GrantRef(xenbus::read_u32(xs, TxId::NONE, &fdir, key, 0..=u32::MAX).unwrap())
    };
    let urb_ref = read_ref(&mut xs, pvusb::URB_RING_REF_KEY);
    let conn_ref = read_ref(&mut xs, pvusb::CONN_RING_REF_KEY);
    let remote_port = EvtchnPort(
        xenbus::read_u32(
            &mut xs,
            TxId::NONE,
            &fdir,
            pvusb::EVENT_CHANNEL_KEY,
            1..=4095,
        )
        .unwrap(),
    );

    let mut dom = be.clone();
    let requests = [
        MapRequest {
            dom: fe,
            gref: urb_ref,
            readonly: false,
        },
        MapRequest {
            dom: fe,
            gref: conn_ref,
            readonly: false,
        },
    ];
    let rings: Vec<_> = dom
        .map(&requests)
        .unwrap()
        .into_iter()
        .map(|r| r.expect("ring maps"))
        .collect();
    let urb = BackRing::new(rings[0].page.clone());
    let conn = BackRing::new(rings[1].page.clone());
    let port = dom.bind_interdomain(fe, remote_port).unwrap();
    xenbus::switch_state(&mut xs, &bdir, XenbusState::Connected).unwrap();
    info!("event=backend_connected frontend={fe} evtchn={port} urb_ring_ref={urb_ref} conn_ring_ref={conn_ref}");
    Backend {
        dom,
        rings,
        urb,
        conn,
        port,
    }
}

fn main() {
    log::set_logger(&LOGGER).expect("first logger");
    log::set_max_level(log::LevelFilter::Info);

    let xen = Xen::new();
    let dom0 = xen.dom0();
    let be = xen.create_domain();
    let fe = xen.create_domain();
    info!(
        "event=domains dom0=0 backend={} frontend={}",
        be.domid(),
        fe.domid()
    );

    // The backend watches its vusb directory before anything exists.
    let mut be_xs = be.xenstore();
    let watch = format!("/local/domain/{}/backend/vusb", be.domid());
    be_xs.watch(&watch, "vusb").unwrap();

    toolstack_add(&dom0, be.domid(), fe.domid());

    // Backend: the watch reports the new device; read its configuration, go to InitWait.
    be_xs.poll().unwrap();
    let mut fired = 0;
    while let Some(ev) = be_xs.next_event() {
        assert_eq!(ev.token, "vusb");
        fired += 1;
    }
    assert!(
        fired >= 2,
        "registration and the device add both fire the watch"
    );
    let bdir = backend_dir(be.domid(), fe.domid());
    let num_ports =
        xenbus::read_u32(&mut be_xs, TxId::NONE, &bdir, pvusb::NUM_PORTS_KEY, 1..=31).unwrap();
    xenbus::switch_state(&mut be_xs, &bdir, XenbusState::InitWait).unwrap();
    info!(
        "event=backend_initwait frontend={} ports={num_ports}",
        fe.domid()
    );

    let mut front = frontend_connect(&fe, be.domid());
    let mut back = backend_connect(&be, fe.domid());

    // Backend: the channel is pending after binding; drain the conn ring's lent slots.
    let mut woke = Vec::new();
    back.dom.take_pending(&mut |p| woke.push(p));
    assert_eq!(woke, [back.port]);
    assert_eq!(back.conn.unconsumed_requests(), Ok(CONN_RING_SIZE));

    // Frontend: a GET_DESCRIPTOR(DEVICE) to port 1, address 0, into a granted page.
    let pipe = Pipe {
        port: 1,
        unlink: false,
        direction: Direction::In,
        device: 0,
        endpoint: 0,
        transfer_type: TransferType::Control,
    };
    let mut req = UsbifUrbRequest::new_zeroed();
    req.id = 0;
    req.pipe = pipe.encode();
    req.u = [0x80, 6, 0, 1, 0, 0, 18, 0];
    req.buffer_length = 18;
    req.nr_buffer_segs = 1;
    req.seg[0] = UsbifRequestSegment {
        gref: front.data_gref,
        offset: 0,
        length: 18,
    };
    front.urb.push_request(&req).unwrap();
    if front.urb.push_requests_and_check_notify() {
        front.dom.clone().send(front.port).unwrap();
    }

    // Backend: copy, check, answer.
    back.dom.take_pending(&mut |_| {});
    let raw = back.urb.next_request().unwrap().expect("a request");
    let checked = UrbRequest::decode(&raw, num_ports as u8).expect("a well-formed request");
    let UrbRequest::Submit(submit) = checked else {
        panic!("not an unlink")
    };
    assert_eq!(submit.pipe, pipe);
    info!(
        "event=urb_refused frontend={} id={} port={} reason=no_usb_host status={USBIF_STATUS_NODEV}",
        fe.domid(),
        submit.id,
        submit.pipe.port
    );
    let rsp = UsbifUrbResponse {
        id: submit.id,
        start_frame: 0,
        status: USBIF_STATUS_NODEV,
        actual_length: 0,
        error_count: 0,
    };
    back.urb.push_response(&rsp).unwrap();
    if back.urb.push_responses_and_check_notify() {
        back.dom.send(back.port).unwrap();
    }

    // Frontend: the response arrives, the grant is free again.
    let mut woke = Vec::new();
    front.dom.clone().take_pending(&mut |p| woke.push(p));
    assert_eq!(woke, [front.port]);
    let got = front.urb.next_response().unwrap().expect("a response");
    assert_eq!((got.id, got.status), (0, USBIF_STATUS_NODEV));
    assert!(!front.dom.grant_in_use(front.data_gref));
    info!(
        "event=frontend_urb_done id={} status={}",
        got.id, got.status
    );

    // dom0 removes the device as libxl does: online=0, state=Closing.
    let mut d0 = dom0.xenstore();
    d0.write(TxId::NONE, &format!("{bdir}/online"), b"0")
        .unwrap();
    xenbus::switch_state(&mut d0, &bdir, XenbusState::Closing).unwrap();
    info!(
        "event=toolstack_remove_vusb backend={} frontend={}",
        be.domid(),
        fe.domid()
    );

    // Backend: unmap, close, Closed, and delete its directory (online=0).
    let state = xenbus::read_state(&mut be_xs, TxId::NONE, &bdir).unwrap();
    assert_eq!(state, XenbusState::Closing);
    back.dom.unmap(back.rings.drain(..)).unwrap();
    back.dom.close(back.port).unwrap();
    xenbus::switch_state(&mut be_xs, &bdir, XenbusState::Closed).unwrap();
    be_xs.rm(TxId::NONE, &bdir).unwrap();
    info!("event=backend_closed frontend={}", fe.domid());
    let fdir = frontend_dir(fe.domid());
    let mut fe_xs = fe.xenstore();
    assert_eq!(
        xenbus::frontend_action(XenbusState::Connected, XenbusState::Closing),
        FrontendAction::Close
    );
    xenbus::switch_state(&mut fe_xs, &fdir, XenbusState::Closed).unwrap();
    // The backend released every grant, so the frontend can revoke them all.
    for gref in front.grants {
        front
            .dom
            .end_access(gref)
            .expect("grant released by the backend");
    }
    info!("event=demo_done");
}

#[test]
fn demo_runs() {
    main();
}
