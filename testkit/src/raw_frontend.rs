//! A PVUSB frontend whose requests a test writes by hand, on `xen::sim`: the toolstack's
//! part (libxl's nodes for a `type=pv` usbctrl) and xen-hcd's connect step, nothing more.
//! What it sends and how it reads the answers is the test's (or the benchmark's) business,
//! so it can send what no driver would.

use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec;
use alloc::vec::Vec;

use usb::{request_type, Direction, TransferType};
use xen::abi::usbif::{
    UsbifConnRequest, UsbifConnResponse, UsbifRequestSegment, UsbifUrbRequest, UsbifUrbResponse,
};
use xen::abi::{DomId, EvtchnPort, GrantRef, PAGE_SIZE};
use xen::hypervisor::EventChannels;
use xen::page::{LocalPage, PageSpan, SharedPage};
use xen::pvusb::{
    urb_ring_ref_key, ControllerNodes, Pipe, ASSIGN_DIR, CONN_RING_REF_KEY, EVENT_CHANNEL_KEY,
    PORT_STATUS_DIR, RING_PAGE_ORDER_KEY, URB_RING_REF_KEY,
};
use xen::ring::FrontRing;
use xen::sim::{Domain, Xen};
use xen::xenbus::{self, XenbusState};
use xen::xenstore::TxId;
use zerocopy::{FromZeros, IntoBytes};

/// Requests put on the conn ring at connect: xen-hcd's count, more than any port count.
const CONN_REQUESTS: u16 = 512;

/// The backend directory of frontend `fe`'s controller 0 served by `be`.
pub fn backend_dir(be: DomId, fe: DomId) -> String {
    format!("/local/domain/{be}/backend/vusb/{fe}/0")
}

/// The frontend directory of `fe`'s controller 0.
pub fn frontend_dir(fe: DomId) -> String {
    format!("/local/domain/{fe}/device/vusb/0")
}

/// What libxl writes for a `type=pv` usbctrl of `ports` USB 2 ports, with its permissions;
/// returns the nodes written.
pub fn toolstack_add(xen: &Xen, be: DomId, fe: DomId, ports: u8) -> ControllerNodes {
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
        .expect("the toolstack's transaction");
    nodes
}

/// A connected frontend's rings and event channel.
pub struct RawFrontend {
    /// The URB ring, over one page or a multi-page ring's pages.
    pub urb: FrontRing<PageSpan<LocalPage>, UsbifUrbRequest, UsbifUrbResponse>,
    /// The URB ring's first page, for a test that writes the ring by hand.
    pub urb_page: LocalPage,
    /// The conn ring, with [`CONN_REQUESTS`] requests posted.
    pub conn: FrontRing<LocalPage, UsbifConnRequest, UsbifConnResponse>,
    /// The event channel the backend binds.
    pub port: EvtchnPort,
    /// The rings' grants.
    pub grants: Vec<GrantRef>,
}

/// How the URB ring's grant references are written.
#[derive(Clone, Copy, Debug)]
pub enum UrbRing<'a> {
    /// One page, as `urb-ring-ref`; `Some` replaces the reference as written, for a test of
    /// what the backend does with a bad one.
    OnePage(Option<&'a str>),
    /// 2^order pages, as `ring-page-order` and `urb-ring-ref0`, …; `bad_ref` writes page
    /// `bad_ref.0`'s reference as `bad_ref.1`.
    Pages {
        /// `ring-page-order`.
        order: u32,
        /// A page whose reference is written wrong, and what is written.
        bad_ref: Option<(u32, &'a str)>,
    },
}

impl RawFrontend {
    /// xen-hcd's connect step (`xenhcd_backend_changed` on InitWait) with a one-page URB ring:
    /// see [`RawFrontend::connect_with`].
    pub fn connect(fe: &Domain, be: DomId, urb_ring_ref: Option<&str>) -> RawFrontend {
        RawFrontend::connect_with(fe, be, UrbRing::OnePage(urb_ring_ref))
    }

    /// The connect step: grants the rings' pages to `be`, allocates the event channel, posts
    /// the conn ring's requests, writes the ring details (the URB ring's as `urb_ring` says)
    /// and switches to Connected.
    pub fn connect_with(fe: &Domain, be: DomId, urb_ring: UrbRing<'_>) -> RawFrontend {
        let pages = match urb_ring {
            UrbRing::OnePage(_) => 1,
            UrbRing::Pages { order, .. } => 1u32 << order.min(8),
        };
        let mut grants = Vec::new();
        let mut urb_pages = Vec::new();
        for _ in 0..pages {
            let (gfn, page) = fe.alloc_page();
            grants.push(fe.grant_access(be, gfn, false).expect("grant"));
            urb_pages.push(page);
        }
        let (conn_gfn, conn_page) = fe.alloc_page();
        let conn_ref = fe.grant_access(be, conn_gfn, false).expect("grant");
        let port = fe.clone().alloc_unbound(be).expect("event channel");
        let urb_page = urb_pages[0].clone();
        let urb = FrontRing::init(PageSpan::new(urb_pages));
        let mut conn = FrontRing::<_, UsbifConnRequest, UsbifConnResponse>::init(conn_page);
        for id in 0..CONN_REQUESTS {
            conn.push_request(&UsbifConnRequest { id })
                .expect("the conn ring holds them");
        }
        conn.push_requests_and_check_notify();
        let dir = frontend_dir(fe.domid());
        let mut keys: Vec<(String, String)> = match urb_ring {
            UrbRing::OnePage(text) => alloc::vec![(
                URB_RING_REF_KEY.to_string(),
                text.map_or(grants[0].to_string(), String::from)
            )],
            UrbRing::Pages { order, bad_ref } => {
                let mut keys = alloc::vec![(RING_PAGE_ORDER_KEY.to_string(), order.to_string())];
                for (i, gref) in (0..).zip(&grants) {
                    let value = match bad_ref {
                        Some((at, text)) if at == i => text.to_string(),
                        _ => gref.to_string(),
                    };
                    keys.push((urb_ring_ref_key(i), value));
                }
                keys
            }
        };
        keys.push((CONN_RING_REF_KEY.to_string(), conn_ref.to_string()));
        keys.push((EVENT_CHANNEL_KEY.to_string(), port.to_string()));
        let mut xs = fe.xenstore();
        for (key, value) in keys {
            xs.write(TxId::NONE, &format!("{dir}/{key}"), value.as_bytes())
                .expect("the frontend's own directory");
        }
        xenbus::switch_state(&mut xs, &dir, XenbusState::Connected).expect("state");
        grants.push(conn_ref);
        RawFrontend {
            urb,
            urb_page,
            conn,
            port,
            grants,
        }
    }
}

/// What libxl does to remove `fe`'s controller: `online` 0, then the backend's state
/// Closing.
pub fn toolstack_remove(xen: &Xen, be: DomId, fe: DomId) {
    let dir = backend_dir(be, fe);
    let mut d0 = xen.dom0().xenstore();
    d0.write(TxId::NONE, &format!("{dir}/online"), b"0")
        .expect("dom0 writes anywhere");
    xenbus::switch_state(&mut d0, &dir, XenbusState::Closing).expect("dom0 writes anywhere");
}

/// Key `key` of the backend directory of `fe`'s controller ("" when absent): what the
/// backend offers there.
pub fn backend_key(xen: &Xen, be: DomId, fe: DomId, key: &str) -> String {
    let path = format!("{}/{key}", backend_dir(be, fe));
    xen.dom0()
        .xenstore()
        .read_string(TxId::NONE, &path)
        .unwrap_or_default()
}

/// Assigns host device `busid` to port `port` of `fe`'s controller, as `usbctl` does.
pub fn assign(xen: &Xen, be: DomId, fe: DomId, port: u8, busid: &str) {
    let key = format!("{}/{ASSIGN_DIR}/{port}", backend_dir(be, fe));
    xen.dom0()
        .xenstore()
        .write(TxId::NONE, &key, busid.as_bytes())
        .expect("dom0 writes anywhere");
}

/// What the backend published for port `port` of `fe`'s controller ("" when nothing).
pub fn port_status(xen: &Xen, be: DomId, fe: DomId, port: u8) -> String {
    let key = format!("{}/{PORT_STATUS_DIR}/{port}", backend_dir(be, fe));
    xen.dom0()
        .xenstore()
        .read_string(TxId::NONE, &key)
        .unwrap_or_default()
}

/// A buffer in frontend pages granted to the backend, and its request segments.
pub struct Buffer {
    /// The pages, one per segment.
    pub pages: Vec<LocalPage>,
    /// The segments, as a request carries them.
    pub segs: Vec<UsbifRequestSegment>,
}

/// `data` at `offset` in fresh pages of `fe`, granted to `be` (read-only for OUT, as Linux
/// grants).
pub fn buffer(fe: &Domain, be: DomId, offset: usize, data: &[u8], readonly: bool) -> Buffer {
    let mut pages = Vec::new();
    let mut segs = Vec::new();
    let (mut at, mut off) = (0, offset);
    while at < data.len() {
        let (gfn, page) = fe.alloc_page();
        let n = (PAGE_SIZE - off).min(data.len() - at);
        page.write(off, &data[at..at + n]);
        let gref = fe.grant_access(be, gfn, readonly).expect("grant");
        segs.push(UsbifRequestSegment {
            gref,
            offset: off as u16,
            length: n as u16,
        });
        pages.push(page);
        at += n;
        off = 0;
    }
    Buffer { pages, segs }
}

impl Buffer {
    /// Its bytes now.
    pub fn read(&self) -> Vec<u8> {
        let mut out = Vec::new();
        for (p, s) in self.pages.iter().zip(&self.segs) {
            let mut b = vec![0u8; usize::from(s.length)];
            p.read(usize::from(s.offset), &mut b);
            out.extend(b);
        }
        out
    }

    /// Whether the backend let go of every grant of it.
    pub fn released(&self, fe: &Domain) -> bool {
        self.segs.iter().all(|s| !fe.grant_in_use(s.gref))
    }
}

/// A request `id` without data for `endpoint` of device `device` on port `port`.
pub fn urb(
    id: u16,
    port: u8,
    device: u8,
    endpoint: u8,
    direction: Direction,
    transfer_type: TransferType,
) -> UsbifUrbRequest {
    let mut r = UsbifUrbRequest::new_zeroed();
    r.id = id;
    r.pipe = Pipe {
        port,
        unlink: false,
        direction,
        device,
        endpoint,
        transfer_type,
    }
    .encode();
    r
}

/// `r` with `b` as its buffer.
pub fn with_buffer(mut r: UsbifUrbRequest, b: &Buffer) -> UsbifUrbRequest {
    r.nr_buffer_segs = b.segs.len() as u16;
    r.buffer_length = b.segs.iter().map(|s| s.length).sum();
    for (i, s) in b.segs.iter().enumerate() {
        r.seg[i] = *s;
    }
    r
}

/// The indirect page listing `data`'s segments (`docs/pvusb-features.md`), in a fresh page
/// of `fe` granted read-only to `be`.
pub fn indirect_list(fe: &Domain, be: DomId, data: &Buffer) -> Buffer {
    buffer(fe, be, 0, data.segs.as_bytes(), true)
}

/// `r` (a bulk request) as an indirect request for `data`, whose segments `list` lists.
pub fn with_indirect(mut r: UsbifUrbRequest, list: &Buffer, data: &Buffer) -> UsbifUrbRequest {
    let total: u32 = data.segs.iter().map(|s| u32::from(s.length)).sum();
    let pages: Vec<GrantRef> = list.segs.iter().map(|s| s.gref).collect();
    xen::pvusb::encode_indirect(&mut r, &pages, data.segs.len() as u16, total);
    r
}

/// A control request `id` to endpoint 0 with SETUP packet `setup`.
pub fn control(id: u16, port: u8, device: u8, setup: [u8; 8]) -> UsbifUrbRequest {
    let direction = if setup[0] & request_type::DEVICE_TO_HOST != 0 {
        Direction::In
    } else {
        Direction::Out
    };
    let mut r = urb(id, port, device, 0, direction, TransferType::Control);
    r.u = setup;
    r
}

/// GET_DESCRIPTOR(DEVICE), 18 bytes.
pub const GET_DEVICE: [u8; 8] = [0x80, 6, 0, 1, 0, 0, 18, 0];

/// Puts `reqs` on `front`'s URB ring and notifies the backend if it asks to be.
pub fn send(fe: &Domain, front: &mut RawFrontend, reqs: &[UsbifUrbRequest]) {
    for r in reqs {
        front.urb.push_request(r).expect("room on the URB ring");
    }
    if front.urb.push_requests_and_check_notify() {
        fe.clone().send(front.port).expect("the backend's channel");
    }
}

/// The URB responses waiting on `front`'s ring.
pub fn responses(front: &mut RawFrontend) -> Vec<UsbifUrbResponse> {
    let mut out = Vec::new();
    while let Some(r) = front.urb.next_response().expect("a sane ring") {
        out.push(r);
    }
    out
}

/// The port changes waiting on `front`'s conn ring as (port, speed), each request given back.
pub fn port_changes(front: &mut RawFrontend) -> Vec<(u8, u8)> {
    let mut out = Vec::new();
    while let Some(r) = front.conn.next_response().expect("a sane ring") {
        out.push((r.portnum, r.speed));
        front
            .conn
            .push_request(&UsbifConnRequest { id: r.id })
            .expect("the slot it answered");
    }
    front.conn.push_requests_and_check_notify();
    out
}
