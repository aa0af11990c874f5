//! The lifecycle against `xen::sim`: a toolstack (dom0) and a frontend behaving as libxl and
//! Linux xen-hcd do.

use super::*;
use xen::abi::xs_wire::XsdError;
use xen::hypervisor::EventChannels;
use xen::page::LocalPage;
use xen::pvusb::ControllerNodes;
use xen::pvusb::{Direction, Pipe, TransferType};
use xen::ring::FrontRing;
use xen::sim::{Domain, SimXsTransport, Xen};
use zerocopy::FromZeros;

struct World {
    xen: Xen,
    be: Backend<Domain, SimXsTransport>,
    fe: Domain,
    host: host::Absent,
}

fn bdir(be: DomId, fe: DomId) -> String {
    format!("/local/domain/{be}/backend/vusb/{fe}/0")
}

fn fdir(fe: DomId) -> String {
    format!("/local/domain/{fe}/device/vusb/0")
}

/// What libxl writes for a `type=pv` usbctrl, with its permissions.
fn toolstack_add(xen: &Xen, be: DomId, fe: DomId, ports: u8) {
    let nodes = ControllerNodes {
        frontend: fe,
        backend: be,
        devid: 0,
        usb_ver: 2,
        ports,
    };
    xen.dom0()
        .xenstore()
        .transaction(3, |xs, tx| nodes.write(xs, tx))
        .unwrap();
}

fn world(ports: u8) -> World {
    let xen = Xen::new();
    let be_dom = xen.create_domain();
    let fe = xen.create_domain();
    let be = Backend::new(be_dom.clone(), be_dom.xenstore(), be_dom.domid()).unwrap();
    toolstack_add(&xen, be_dom.domid(), fe.domid(), ports);
    World {
        xen,
        be,
        fe,
        host: host::Absent,
    }
}

struct Front {
    urb: FrontRing<LocalPage, UsbifUrbRequest, UsbifUrbResponse>,
    port: EvtchnPort,
    grants: Vec<GrantRef>,
}

/// The frontend's connect step (xen-hcd's `xenhcd_backend_changed` on InitWait).
fn frontend_connect(fe: &Domain, be: DomId, urb_ref_override: Option<&str>) -> Front {
    let (urb_gfn, urb_page) = fe.alloc_page();
    let (conn_gfn, conn_page) = fe.alloc_page();
    let urb_ref = fe.grant_access(be, urb_gfn, false).unwrap();
    let conn_ref = fe.grant_access(be, conn_gfn, false).unwrap();
    let port = fe.clone().alloc_unbound(be).unwrap();
    let urb = FrontRing::init(urb_page);
    let mut conn = FrontRing::<_, UsbifConnRequest, UsbifConnResponse>::init(conn_page);
    let mut xs = fe.xenstore();
    let f = fdir(fe.domid());
    let urb_text = urb_ref_override
        .map(String::from)
        .unwrap_or(urb_ref.to_string());
    xs.write(
        TxId::NONE,
        &format!("{f}/urb-ring-ref"),
        urb_text.as_bytes(),
    )
    .unwrap();
    xs.write(
        TxId::NONE,
        &format!("{f}/conn-ring-ref"),
        conn_ref.to_string().as_bytes(),
    )
    .unwrap();
    xs.write(
        TxId::NONE,
        &format!("{f}/event-channel"),
        port.to_string().as_bytes(),
    )
    .unwrap();
    for id in 0..512 {
        conn.push_request(&UsbifConnRequest { id }).unwrap();
    }
    conn.push_requests_and_check_notify();
    xenbus::switch_state(&mut xs, &f, XenbusState::Connected).unwrap();
    Front {
        urb,
        port,
        grants: vec![urb_ref, conn_ref],
    }
}

fn state_of(xen: &Xen, dir: &str) -> Result<XenbusState, XenbusError> {
    xenbus::read_state(&mut xen.dom0().xenstore(), TxId::NONE, dir)
}

fn pump(w: &mut World) {
    w.be.poll_xenstore(&mut w.host).unwrap();
    let mut ports = Vec::new();
    w.be.hypervisor().take_pending(&mut |p| ports.push(p));
    for p in ports {
        w.be.handle_event(p, &mut w.host);
    }
}

#[test]
fn reaches_initwait_then_connects_and_answers_urbs() {
    let mut w = world(8);
    pump(&mut w);
    let (be, fe) = (DomId(1), w.fe.domid());
    assert_eq!(
        state_of(&w.xen, &bdir(be, fe)).unwrap(),
        XenbusState::InitWait
    );

    let mut front = frontend_connect(&w.fe, be, None);
    pump(&mut w);
    assert_eq!(
        state_of(&w.xen, &bdir(be, fe)).unwrap(),
        XenbusState::Connected
    );
    assert!(w.fe.grant_in_use(front.grants[0]), "the urb ring is mapped");

    // A GET_DESCRIPTOR to port 1 and a garbage request: both answered, nothing hangs.
    let mut req = UsbifUrbRequest::new_zeroed();
    req.id = 3;
    req.pipe = Pipe {
        port: 1,
        unlink: false,
        direction: Direction::In,
        device: 0,
        endpoint: 0,
        transfer_type: TransferType::Control,
    }
    .encode();
    front.urb.push_request(&req).unwrap();
    let mut bad = req;
    bad.id = 4;
    bad.pipe |= 1 << 20;
    front.urb.push_request(&bad).unwrap();
    if front.urb.push_requests_and_check_notify() {
        w.fe.clone().send(front.port).unwrap();
    }
    pump(&mut w);
    let a = front.urb.next_response().unwrap().unwrap();
    let b = front.urb.next_response().unwrap().unwrap();
    assert_eq!((a.id, a.status), (3, USBIF_STATUS_NODEV));
    assert_eq!((b.id, b.status), (4, USBIF_STATUS_INVAL));
    let mut woke = Vec::new();
    w.fe.clone().take_pending(&mut |p| woke.push(p));
    assert_eq!(woke, [front.port], "the frontend was notified");
}

#[test]
fn toolstack_removal_unmaps_closes_and_deletes_the_directory() {
    let mut w = world(8);
    pump(&mut w);
    let (be, fe) = (DomId(1), w.fe.domid());
    let front = frontend_connect(&w.fe, be, None);
    pump(&mut w);
    // libxl: online=0, state=Closing.
    let mut d0 = w.xen.dom0().xenstore();
    d0.write(TxId::NONE, &format!("{}/online", bdir(be, fe)), b"0")
        .unwrap();
    xenbus::switch_state(&mut d0, &bdir(be, fe), XenbusState::Closing).unwrap();
    pump(&mut w);
    for g in &front.grants {
        assert!(!w.fe.grant_in_use(*g), "grant {g} released");
    }
    assert_eq!(
        d0.read(TxId::NONE, &bdir(be, fe)),
        Err(XsError::Xs(XsdError::Enoent))
    );
    assert_eq!(w.be.devices().count(), 0);
}

#[test]
fn a_closing_frontend_is_followed_and_can_reconnect() {
    let mut w = world(4);
    pump(&mut w);
    let (be, fe) = (DomId(1), w.fe.domid());
    let front = frontend_connect(&w.fe, be, None);
    pump(&mut w);
    let mut fx = w.fe.xenstore();
    xenbus::switch_state(&mut fx, &fdir(fe), XenbusState::Closing).unwrap();
    pump(&mut w);
    assert_eq!(
        state_of(&w.xen, &bdir(be, fe)).unwrap(),
        XenbusState::Closed
    );
    assert!(!w.fe.grant_in_use(front.grants[0]));
    // online is still 1: the device stays, and a re-initialising frontend gets InitWait.
    xenbus::switch_state(&mut fx, &fdir(fe), XenbusState::Initialising).unwrap();
    pump(&mut w);
    assert_eq!(
        state_of(&w.xen, &bdir(be, fe)).unwrap(),
        XenbusState::InitWait
    );
    frontend_connect(&w.fe, be, None);
    pump(&mut w);
    assert_eq!(
        state_of(&w.xen, &bdir(be, fe)).unwrap(),
        XenbusState::Connected
    );
}

#[test]
fn bad_ring_details_are_refused_without_harm() {
    let mut w = world(8);
    pump(&mut w);
    let (be, fe) = (DomId(1), w.fe.domid());
    frontend_connect(&w.fe, be, Some("not-a-number"));
    pump(&mut w);
    assert_eq!(
        state_of(&w.xen, &bdir(be, fe)).unwrap(),
        XenbusState::Closing
    );
    // A grant the frontend never made: the map fails and nothing stays mapped.
    let mut w = world(8);
    pump(&mut w);
    let front = frontend_connect(&w.fe, be, Some("4000"));
    pump(&mut w);
    assert_eq!(
        state_of(&w.xen, &bdir(be, fe)).unwrap(),
        XenbusState::Closing
    );
    assert!(
        !w.fe.grant_in_use(front.grants[1]),
        "the conn ring was unmapped again"
    );
}

#[test]
fn a_flooding_frontend_is_disconnected_alone() {
    let mut w = world(8);
    pump(&mut w);
    let (be, fe) = (DomId(1), w.fe.domid());
    let front = frontend_connect(&w.fe, be, None);
    pump(&mut w);
    // The frontend claims 17 requests on a 16-entry ring.
    xen::page::SharedPage::store_u32(front.urb.page(), 0, 17);
    w.fe.clone().send(front.port).unwrap();
    pump(&mut w);
    assert_eq!(
        state_of(&w.xen, &bdir(be, fe)).unwrap(),
        XenbusState::Closed
    );
    assert!(!w.fe.grant_in_use(front.grants[0]));
}

#[test]
fn a_config_the_protocol_forbids_is_refused() {
    let mut w = world(32);
    pump(&mut w);
    assert_eq!(w.be.devices().count(), 0, "num-ports above 31 is refused");
    assert_eq!(
        state_of(&w.xen, &bdir(DomId(1), w.fe.domid())).unwrap(),
        XenbusState::Initialising
    );
}
