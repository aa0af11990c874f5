//! The lifecycle against `xen::sim`: a toolstack (dom0) and a frontend behaving as libxl and
//! Linux xen-hcd do.

use testkit::main_loop;
use testkit::model_host::*;
use testkit::raw_frontend::*;
use testkit::sim_host::BLOCK_SIZE;
use usb::mass_storage::read_write_10_cbw;
use usb::{Direction, Speed, TransferType};
use usbback::host::{self, DeviceInfo, HostEvent, TransferError, UsbHost};
use usbback::*;
use xen::abi::usbif::*;
use xen::abi::xs_wire::XsdError;
use xen::abi::{DomId, GrantRef};
use xen::hypervisor::EventChannels;
use xen::page::{LocalPage, SharedPage};
use xen::pvusb::Pipe;
use xen::sim::{Domain, SimXsTransport, Xen};
use xen::xenbus::{self, XenbusError, XenbusState};
use xen::xenstore::{TxId, XsError};
use zerocopy::FromZeros;

mod device_isolation;
mod frontend_isolation;
mod grant_copies;
mod grant_maps;
mod hostile;
mod indirect;
mod log_capture;
mod multi_page_ring;
mod persistent_grants;
mod simulated_devices;
mod urb_path;

/// A Xen with usbdom's backend in one domain and a frontend domain, and the backend's host.
struct Machine {
    xen: Xen,
    be: Backend<Domain, SimXsTransport>,
    fe: Domain,
    host: host::Absent,
}

fn machine(ports: u8) -> Machine {
    let xen = Xen::new();
    let be_dom = xen.create_domain();
    let fe = xen.create_domain();
    let be = Backend::new(be_dom.clone(), be_dom.xenstore(), be_dom.domid()).unwrap();
    toolstack_add(&xen, be_dom.domid(), fe.domid(), ports);
    Machine {
        xen,
        be,
        fe,
        host: host::Absent,
    }
}

fn state_of(xen: &Xen, dir: &str) -> Result<XenbusState, XenbusError> {
    xenbus::read_state(&mut xen.dom0().xenstore(), TxId::NONE, dir)
}

fn pump(w: &mut Machine) {
    w.be.poll_xenstore(&mut w.host).unwrap();
    let mut ports = Vec::new();
    w.be.hypervisor().take_pending(&mut |p| ports.push(p));
    for p in ports {
        w.be.handle_event(p, &mut w.host);
    }
    w.be.serve_busy(&mut w.host);
}

#[test]
fn reaches_initwait_then_connects_and_answers_urbs() {
    let mut w = machine(8);
    pump(&mut w);
    let (be, fe) = (DomId(1), w.fe.domid());
    assert_eq!(
        state_of(&w.xen, &backend_dir(be, fe)).unwrap(),
        XenbusState::InitWait
    );

    let mut front = RawFrontend::connect(&w.fe, be, None);
    pump(&mut w);
    assert_eq!(
        state_of(&w.xen, &backend_dir(be, fe)).unwrap(),
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
    let mut w = machine(8);
    pump(&mut w);
    let (be, fe) = (DomId(1), w.fe.domid());
    let front = RawFrontend::connect(&w.fe, be, None);
    pump(&mut w);
    toolstack_remove(&w.xen, be, fe);
    pump(&mut w);
    for g in &front.grants {
        assert!(!w.fe.grant_in_use(*g), "grant {g} released");
    }
    assert_eq!(
        w.xen
            .dom0()
            .xenstore()
            .read(TxId::NONE, &backend_dir(be, fe)),
        Err(XsError::Xs(XsdError::Enoent))
    );
    assert_eq!(w.be.devices().count(), 0);
}

#[test]
fn a_closing_frontend_is_followed_and_can_reconnect() {
    let mut w = machine(4);
    pump(&mut w);
    let (be, fe) = (DomId(1), w.fe.domid());
    let front = RawFrontend::connect(&w.fe, be, None);
    pump(&mut w);
    let mut fx = w.fe.xenstore();
    xenbus::switch_state(&mut fx, &frontend_dir(fe), XenbusState::Closing).unwrap();
    pump(&mut w);
    assert_eq!(
        state_of(&w.xen, &backend_dir(be, fe)).unwrap(),
        XenbusState::Closed
    );
    assert!(!w.fe.grant_in_use(front.grants[0]));
    // online is still 1: the device stays, and a re-initialising frontend gets InitWait.
    xenbus::switch_state(&mut fx, &frontend_dir(fe), XenbusState::Initialising).unwrap();
    pump(&mut w);
    assert_eq!(
        state_of(&w.xen, &backend_dir(be, fe)).unwrap(),
        XenbusState::InitWait
    );
    RawFrontend::connect(&w.fe, be, None);
    pump(&mut w);
    assert_eq!(
        state_of(&w.xen, &backend_dir(be, fe)).unwrap(),
        XenbusState::Connected
    );
}

#[test]
fn bad_ring_details_are_refused_without_harm() {
    let mut w = machine(8);
    pump(&mut w);
    let (be, fe) = (DomId(1), w.fe.domid());
    RawFrontend::connect(&w.fe, be, Some("not-a-number"));
    pump(&mut w);
    assert_eq!(
        state_of(&w.xen, &backend_dir(be, fe)).unwrap(),
        XenbusState::Closing
    );
    // A grant the frontend never made: the map fails and nothing stays mapped.
    let mut w = machine(8);
    pump(&mut w);
    let front = RawFrontend::connect(&w.fe, be, Some("4000"));
    pump(&mut w);
    assert_eq!(
        state_of(&w.xen, &backend_dir(be, fe)).unwrap(),
        XenbusState::Closing
    );
    assert!(
        !w.fe.grant_in_use(front.grants[1]),
        "the conn ring was unmapped again"
    );
}

#[test]
fn a_flooding_frontend_is_disconnected_alone() {
    let mut w = machine(8);
    pump(&mut w);
    let (be, fe) = (DomId(1), w.fe.domid());
    let front = RawFrontend::connect(&w.fe, be, None);
    pump(&mut w);
    // The frontend claims 17 requests on a 16-entry ring.
    xen::page::SharedPage::store_u32(&front.urb_page, 0, 17);
    w.fe.clone().send(front.port).unwrap();
    pump(&mut w);
    assert_eq!(
        state_of(&w.xen, &backend_dir(be, fe)).unwrap(),
        XenbusState::Closed
    );
    assert!(!w.fe.grant_in_use(front.grants[0]));
}

#[test]
fn a_config_the_protocol_forbids_is_refused() {
    let mut w = machine(32);
    pump(&mut w);
    assert_eq!(w.be.devices().count(), 0, "num-ports above 31 is refused");
    assert_eq!(
        state_of(&w.xen, &backend_dir(DomId(1), w.fe.domid())).unwrap(),
        XenbusState::Initialising
    );
}

/// Runs the backend until nothing moves: xenstore, event channels, the host's events.
fn settle<U: UsbHost<LocalPage>>(be: &mut Backend<Domain, SimXsTransport>, host: &mut U) {
    for _ in 0..4 {
        main_loop::turn(be, host);
        while be.has_work() {
            be.serve_busy(host);
        }
    }
}

/// A machine whose frontend connected, with a model host instead of none.
struct ConnectedFrontend {
    w: Machine,
    host: Model,
    front: RawFrontend,
    be: DomId,
    fe: DomId,
}

/// A connected frontend with 8 ports and a model host holding a high-speed device at 1-1.
fn connected_frontend() -> ConnectedFrontend {
    connected_frontend_with(UrbRing::OnePage(None))
}

/// [`connected_frontend`] with its URB ring as `urb_ring` says.
fn connected_frontend_with(urb_ring: UrbRing<'_>) -> ConnectedFrontend {
    connected_frontend_promising(urb_ring, false)
}

/// [`connected_frontend_with`], that also promised `feature-persistent` when `persistent`.
fn connected_frontend_promising(urb_ring: UrbRing<'_>, persistent: bool) -> ConnectedFrontend {
    let mut w = machine(8);
    if persistent {
        let key = format!("{}/feature-persistent", frontend_dir(w.fe.domid()));
        w.fe.xenstore().write(TxId::NONE, &key, b"1").unwrap();
    }
    let mut host = Model::default();
    host.plug(info(1, "1-1", Speed::High, 0, &[8]));
    settle(&mut w.be, &mut host);
    let (be, fe) = (DomId(1), w.fe.domid());
    let front = RawFrontend::connect_with(&w.fe, be, urb_ring);
    settle(&mut w.be, &mut host);
    ConnectedFrontend {
        w,
        host,
        front,
        be,
        fe,
    }
}
