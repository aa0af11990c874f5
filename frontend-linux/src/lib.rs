//! A PVUSB frontend that speaks the protocol exactly as Linux's `xen-hcd`
//! (`drivers/usb/host/xen-hcd.c`) does, so the backend can be tested, measured and shown
//! against the behaviour it must serve, without a Linux guest.
//!
//! What it copies from xen-hcd:
//! - **xenstore**: probe reads `num-ports` and `usb-ver` from the backend directory; when the
//!   backend is InitWait, Initialised or Connected and we are Initialising, it grants one page
//!   per ring, allocates one event channel, writes `urb-ring-ref`, `conn-ring-ref` and
//!   `event-channel` in one transaction (retried on `EAGAIN`), lends the backend all 512
//!   conn-ring slots (ids 0..511) and switches straight to Connected. On backend Closing (or
//!   Closed) it gives back every URB with `-ESHUTDOWN`, ends its grants and switches to
//!   Closed.
//! - **URBs**: one grant per page the buffer touches (read-only for OUT), ISO descriptor pages
//!   after the buffer's, at most 16 requests in flight under 16 shadow ids reused last freed
//!   first; on a full ring URBs wait in a queue that [`Frontend::poll`] drains (Linux's 5 ms
//!   timer). An unlink is a request of its own (`pipe | UNLINK`, `unlink_id`) and two
//!   responses are expected: the original id's gives the URB back with `-ECONNRESET`, the
//!   unlink id's only frees the id.
//! - **Checks on responses**, each one fatal for good ([`ProtocolError`]): a producer index
//!   more than a ring ahead, an id of 16 or more, a response to a submit id not in flight, a
//!   grant the backend still holds when its response arrives, a conn response for a port
//!   outside 1..=num-ports or with a speed above 3. After one of them the frontend ignores its
//!   rings and refuses URBs, as xen-hcd does with `info->error`.
//!
//! Where it differs, on purpose:
//! - A producer index that runs ahead of the requests (but less than a ring) is also an
//!   index error; xen-hcd would read stale slots and fail on their ids instead.
//! - Unlinks that found the ring full are sent once slots free up; xen-hcd leaves them queued
//!   until the controller stops.
//! - A duplicate response to an unlink id is logged and dropped; xen-hcd would put the id on
//!   its free list twice.
//! - URBs of 64 KiB or more are refused instead of having their length truncated to u16.
//! - Grants the backend still holds at teardown are retried on every poll instead of leaked.
//! - IN data is copied out of the granted pages into the completion (xen-hcd leaves it in
//!   the URB's pages), unless the URB says `discard_in_data`.
#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]
#![warn(missing_docs)]

extern crate alloc;

pub mod attack;
mod submit;
#[cfg(test)]
mod tests;
mod urb;

pub use urb::{errno, translate_status, Completion, Urb, UrbHandle};

use alloc::boxed::Box;
use alloc::collections::VecDeque;
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

use log::{info, warn};
use usb::{Direction, TransferType};
use xen::abi::usbif::*;
use xen::abi::xs_wire::XsdError;
use xen::abi::{DomId, EvtchnPort, Gfn, GrantRef, PAGE_SIZE};
use xen::hypervisor::{Errno, EventChannels, GrantTable};
use xen::page::SharedPage;
use xen::pvusb::{self, UsbIsoPacketDescriptor, CONN_RING_SIZE, URB_RING_SIZE};
use xen::ring::{FrontRing, RingError};
use xen::xenbus::{self, FrontendAction, XenbusError, XenbusState};
use xen::xenstore::{TxId, XenStore, XsError, XsTransport};
use zerocopy::{FromZeros, IntoBytes};

/// Shadow ids: one per URB-ring slot (`XENUSB_URB_RING_SIZE`).
const SHADOWS: usize = URB_RING_SIZE as usize;
/// Bytes of one ISO packet descriptor in the granted array.
const ISO_DESCRIPTOR_SIZE: usize = core::mem::size_of::<UsbIsoPacketDescriptor>();
/// The xenstore watch token of the backend's state and of our own directory.
const WATCH_TOKEN: &str = "xenhcd";

/// A response the frontend will not accept; xen-hcd's `xenhcd_set_error` messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProtocolError {
    /// "Illegal index on urb-ring": the backend's `rsp_prod` is impossible.
    UrbRingIndex {
        /// The producer index it published.
        rsp_prod: u32,
        /// Our consumer index.
        rsp_cons: u32,
    },
    /// "Illegal data on urb-ring": a response id of 16 or more.
    UrbRingData {
        /// The id.
        id: u16,
    },
    /// "Illegal request id": a response to a submit id that is not in flight.
    IllegalRequestId {
        /// The id.
        id: u16,
    },
    /// "backend didn't release grant": a grant of the request was still mapped or in use
    /// when its response arrived.
    GrantNotReleased {
        /// The request id.
        id: u16,
        /// The grant still held.
        gref: GrantRef,
    },
    /// "Illegal index on conn-ring".
    ConnRingIndex {
        /// The producer index it published.
        rsp_prod: u32,
        /// Our consumer index.
        rsp_cons: u32,
    },
    /// "Illegal data on conn-ring": a port outside 1..=num-ports or a speed above 3.
    ConnRingData {
        /// The port number.
        portnum: u8,
        /// The speed.
        speed: u8,
    },
}

impl core::fmt::Display for ProtocolError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            ProtocolError::UrbRingIndex { rsp_prod, rsp_cons } => {
                write!(
                    f,
                    "reason=illegal_urb_ring_index rsp_prod={rsp_prod} rsp_cons={rsp_cons}"
                )
            }
            ProtocolError::UrbRingData { id } => write!(f, "reason=illegal_urb_ring_data id={id}"),
            ProtocolError::IllegalRequestId { id } => {
                write!(f, "reason=illegal_request_id id={id}")
            }
            ProtocolError::GrantNotReleased { id, gref } => {
                write!(
                    f,
                    "reason=backend_did_not_release_grant id={id} gref={gref}"
                )
            }
            ProtocolError::ConnRingIndex { rsp_prod, rsp_cons } => write!(
                f,
                "reason=illegal_conn_ring_index rsp_prod={rsp_prod} rsp_cons={rsp_cons}"
            ),
            ProtocolError::ConnRingData { portnum, speed } => write!(
                f,
                "reason=illegal_conn_ring_data portnum={portnum} speed={speed}"
            ),
        }
    }
}

/// Why a call failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Error {
    /// xenstore failed, or a key the frontend needs holds a bad value (probe, connect).
    Xenbus(XenbusError),
    /// Our frontend directory was not in state Initialising at probe: Linux does not probe it.
    NotInitialising(XenbusState),
    /// A grant, page or event channel operation failed.
    Hypervisor(Errno),
    /// Not connected (yet, or any more): Linux has no controller to take the URB.
    NotConnected,
    /// A response was invalid earlier; like xen-hcd (`-ESHUTDOWN`), nothing is taken any more.
    Failed(ProtocolError),
    /// The URB needs more than 16 segments, or 64 KiB or more (`-E2BIG`).
    TooBig,
    /// The URB is malformed: an unlink pipe, or a page offset beyond the page.
    Invalid,
    /// Unlink of an URB that is not outstanding.
    UnknownUrb,
    /// The URB is already being unlinked (`-EBUSY`).
    Busy,
}

impl From<XenbusError> for Error {
    fn from(e: XenbusError) -> Self {
        Error::Xenbus(e)
    }
}

impl From<XsError> for Error {
    fn from(e: XsError) -> Self {
        Error::Xenbus(XenbusError::Store(e))
    }
}

impl From<Errno> for Error {
    fn from(e: Errno) -> Self {
        Error::Hypervisor(e)
    }
}

impl core::fmt::Display for Error {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Error::Xenbus(e) => write!(f, "{e}"),
            Error::NotInitialising(s) => write!(f, "reason=not_initialising state={s:?}"),
            Error::Hypervisor(e) => write!(f, "reason=hypervisor error={e}"),
            Error::NotConnected => write!(f, "reason=not_connected"),
            Error::Failed(e) => write!(f, "reason=failed_earlier {e}"),
            Error::TooBig => write!(f, "reason=too_big"),
            Error::Invalid => write!(f, "reason=invalid_urb"),
            Error::UnknownUrb => write!(f, "reason=unknown_urb"),
            Error::Busy => write!(f, "reason=already_unlinking"),
        }
    }
}

/// A port's connection changed (a conn-ring response with a new speed).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PortEvent {
    /// Root-hub port, 1..=num-ports.
    pub port: u8,
    /// `USBIF_SPEED_*`: 0 is a disconnect.
    pub speed: u8,
}

/// Counters since creation.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// URBs given back, whatever their status.
    pub completed: u64,
    /// URBs given back with a non-zero status.
    pub errors: u64,
    /// Submissions and unlinks that found the URB ring full and were queued.
    pub ring_full: u64,
    /// Bytes transferred (sum of actual lengths).
    pub bytes: u64,
}

/// A submitted URB, from its request until its response.
struct InFlight<P> {
    handle: UrbHandle,
    /// The request as sent: its segments are the grants to end.
    req: UsbifUrbRequest,
    /// Buffer pages, then ISO descriptor pages.
    pages: Vec<(Gfn, P)>,
    direction: Direction,
    buffer_length: usize,
    page_offset: usize,
    iso_packets: usize,
    /// The caller unlinked it: it is given back with `-ECONNRESET`.
    unlinked: bool,
    /// [`Urb::discard_in_data`].
    discard_in_data: bool,
}

/// xen-hcd's `usb_shadow`: what each of the 16 request ids is doing.
enum Shadow<P> {
    /// Free; remembers whether its last use was an unlink (xen-hcd keeps the old pipe, and
    /// so takes a late response to a free unlink id as legal).
    Free { last_unlink: bool },
    /// A submit in flight.
    Submit(Box<InFlight<P>>),
    /// An unlink in flight.
    Unlink,
}

/// An URB waiting for a free ring slot.
struct Queued {
    handle: UrbHandle,
    urb: Urb,
}

/// The rings and channel of a connected frontend.
struct Connection<P> {
    urb: FrontRing<P, UsbifUrbRequest, UsbifUrbResponse>,
    conn: FrontRing<P, UsbifConnRequest, UsbifConnResponse>,
    urb_ring_ref: GrantRef,
    conn_ring_ref: GrantRef,
    port: EvtchnPort,
}

/// One PVUSB frontend device (`device/vusb/<devid>`) of domain `domid`.
pub struct Frontend<G: GrantTable + EventChannels, T: XsTransport> {
    platform: G,
    xs: XenStore<T>,
    nodename: String,
    otherend: String,
    backend_id: DomId,
    num_ports: u8,
    usb_ver: u8,
    state: XenbusState,
    conn: Option<Connection<G::Page>>,
    shadow: Vec<Shadow<G::Page>>,
    /// Free ids, last freed on top (xen-hcd's `shadow_free` list).
    free_ids: Vec<u16>,
    pending_submit: VecDeque<Queued>,
    pending_unlink: VecDeque<UrbHandle>,
    completed: VecDeque<Completion>,
    port_events: VecDeque<PortEvent>,
    port_speed: [u8; USBIF_MAX_PORTNR as usize],
    error: Option<ProtocolError>,
    stats: Stats,
    /// Data pages to reuse, so a long run does not allocate a page per URB.
    page_pool: Vec<(Gfn, G::Page)>,
    /// Grants the backend still held when we ended them; retried on every poll.
    deferred_grants: Vec<GrantRef>,
    next_handle: u64,
}

fn read_state_or_unknown<T: XsTransport>(xs: &mut XenStore<T>, dir: &str) -> XenbusState {
    // xenbus_read_driver_state: a state that cannot be read (gone, unreadable, garbage) is
    // Unknown, which xen-hcd ignores.
    xenbus::read_state(xs, TxId::NONE, dir).unwrap_or(XenbusState::Unknown)
}

/// What xenbus and `xenhcd_probe` read of a new device before granting anything.
pub(crate) struct Probe {
    /// `/local/domain/<domid>/device/vusb/<devid>`.
    pub nodename: String,
    /// The backend's directory.
    pub otherend: String,
    pub backend_id: DomId,
    pub num_ports: u8,
    pub usb_ver: u8,
}

/// Probes `/local/domain/<domid>/device/vusb/<devid>`: `backend` and `backend-id`, our
/// state, which must be Initialising, the backend's `num-ports` (1..=31) and `usb-ver` (1
/// or 2).
pub(crate) fn probe<T: XsTransport>(
    xs: &mut XenStore<T>,
    domid: DomId,
    devid: u32,
) -> Result<Probe, Error> {
    let nodename = format!("/local/domain/{domid}/device/vusb/{devid}");
    let otherend = xs.read_string(TxId::NONE, &format!("{nodename}/backend"))?;
    let backend_id =
        xenbus::read_u32(xs, TxId::NONE, &nodename, pvusb::BACKEND_ID_KEY, 0..=0x7fef)?;
    let state = xenbus::read_state(xs, TxId::NONE, &nodename)?;
    if state != XenbusState::Initialising {
        return Err(Error::NotInitialising(state));
    }
    let num_ports = xenbus::read_u32(
        xs,
        TxId::NONE,
        &otherend,
        pvusb::NUM_PORTS_KEY,
        1..=USBIF_MAX_PORTNR,
    )?;
    let usb_ver = xenbus::read_u32(xs, TxId::NONE, &otherend, pvusb::USB_VER_KEY, 1..=2)?;
    Ok(Probe {
        nodename,
        otherend,
        // The ranges above make these exact.
        backend_id: DomId(backend_id as u16),
        num_ports: num_ports as u8,
        usb_ver: usb_ver as u8,
    })
}

/// `xenhcd_connect`'s transaction: the rings' grants and the event channel, under `dir`.
pub(crate) fn publish_rings<T: XsTransport>(
    xs: &mut XenStore<T>,
    dir: &str,
    urb_ring_ref: GrantRef,
    conn_ring_ref: GrantRef,
    port: EvtchnPort,
) -> Result<(), XsError> {
    xs.transaction(u32::MAX, |xs, tx| {
        xs.write(
            tx,
            &format!("{dir}/{}", pvusb::URB_RING_REF_KEY),
            format!("{urb_ring_ref}").as_bytes(),
        )?;
        xs.write(
            tx,
            &format!("{dir}/{}", pvusb::CONN_RING_REF_KEY),
            format!("{conn_ring_ref}").as_bytes(),
        )?;
        xs.write(
            tx,
            &format!("{dir}/{}", pvusb::EVENT_CHANNEL_KEY),
            format!("{port}").as_bytes(),
        )
    })
}

/// Pages a buffer of `len` bytes touches when it starts `offset` bytes into its first page
/// (`xenhcd_count_pages`).
fn count_pages(offset: usize, len: usize) -> usize {
    (offset + len).div_ceil(PAGE_SIZE) - offset / PAGE_SIZE
}

impl<G, T> Frontend<G, T>
where
    G: GrantTable + EventChannels,
    T: XsTransport,
{
    /// Probes `/local/domain/<domid>/device/vusb/<devid>` as xenbus and `xenhcd_probe` do:
    /// reads `backend` and `backend-id`, requires our state to be Initialising, reads the
    /// backend's `num-ports` (1..=31) and `usb-ver` (1 or 2), and watches the backend's
    /// state. Nothing is granted until [`poll`](Self::poll) sees the backend ready.
    pub fn new(platform: G, mut xs: XenStore<T>, domid: DomId, devid: u32) -> Result<Self, Error> {
        let Probe {
            nodename,
            otherend,
            backend_id,
            num_ports,
            usb_ver,
        } = probe(&mut xs, domid, devid)?;
        xs.watch(&format!("{otherend}/state"), WATCH_TOKEN)?;
        xs.watch(&nodename, WATCH_TOKEN)?;
        info!(
            "event=xenhcd_probe nodename={nodename} backend={otherend} num_ports={num_ports} usb_ver={usb_ver}"
        );
        Ok(Frontend {
            platform,
            xs,
            nodename,
            otherend,
            backend_id,
            num_ports,
            usb_ver,
            state: XenbusState::Initialising,
            conn: None,
            shadow: (0..SHADOWS)
                .map(|_| Shadow::Free { last_unlink: false })
                .collect(),
            free_ids: (0..SHADOWS as u16).rev().collect(),
            pending_submit: VecDeque::new(),
            pending_unlink: VecDeque::new(),
            completed: VecDeque::new(),
            port_events: VecDeque::new(),
            port_speed: [USBIF_SPEED_NONE; USBIF_MAX_PORTNR as usize],
            error: None,
            stats: Stats::default(),
            page_pool: Vec::new(),
            deferred_grants: Vec::new(),
            next_handle: 0,
        })
    }

    /// Does everything that is due: follows xenstore (connect, close), handles a notification
    /// on our event channel (responses, port events), sends URBs that waited for a ring slot,
    /// and retries grants the backend held at teardown.
    ///
    /// It takes every pending event of the platform: a caller whose platform has other
    /// channels calls [`poll_xenstore`](Self::poll_xenstore),
    /// [`handle_event`](Self::handle_event) and [`kick`](Self::kick) itself.
    pub fn poll(&mut self) -> Result<(), Error> {
        self.poll_xenstore()?;
        let mut fired = false;
        let port = self.conn.as_ref().map(|c| c.port);
        self.platform
            .take_pending(&mut |p| fired |= Some(p) == port);
        if fired {
            self.handle_event();
        }
        self.kick();
        Ok(())
    }

    /// What xen-hcd's watchdog timer does: sends URBs (and unlinks) that waited for a ring
    /// slot; also retries grants the backend still held at teardown.
    pub fn kick(&mut self) {
        self.kick_pending();
        self.retry_deferred_grants();
    }

    /// Follows xenstore only: the backend's state (`xenhcd_backend_changed`) and the removal
    /// of our directory.
    pub fn poll_xenstore(&mut self) -> Result<(), Error> {
        self.xs.poll()?;
        let mut fired = false;
        while self.xs.next_event().is_some() {
            fired = true;
        }
        if !fired {
            return Ok(());
        }
        if self.state != XenbusState::Closed
            && self
                .xs
                .read(TxId::NONE, &format!("{}/state", self.nodename))
                == Err(XsError::Xs(XsdError::Enoent))
        {
            // The toolstack removed the device (xenhcd_remove): no state to write any more.
            info!("event=xenhcd_removed nodename={}", self.nodename);
            self.shut_down();
            self.state = XenbusState::Closed;
            return Ok(());
        }
        let backend = read_state_or_unknown(&mut self.xs, &self.otherend);
        match xenbus::frontend_action(self.state, backend) {
            FrontendAction::Connect => self.connect(),
            FrontendAction::Close => {
                info!(
                    "event=xenhcd_backend_closing nodename={} backend_state={backend:?}",
                    self.nodename
                );
                self.shut_down();
                xenbus::switch_state(&mut self.xs, &self.nodename, XenbusState::Closed)?;
                self.state = XenbusState::Closed;
                Ok(())
            }
            FrontendAction::None => Ok(()),
        }
    }

    /// `xenhcd_connect`: rings, channel, one transaction, the conn ring lent, Connected.
    fn connect(&mut self) -> Result<(), Error> {
        let be = self.backend_id;
        let (urb_gfn, urb_page) = self.platform.alloc_page()?;
        let (conn_gfn, conn_page) = self.platform.alloc_page()?;
        let urb_ring_ref = self.platform.grant_access(be, urb_gfn, false)?;
        let conn_ring_ref = match self.platform.grant_access(be, conn_gfn, false) {
            Ok(r) => r,
            Err(e) => {
                self.end_grant(urb_ring_ref);
                return Err(e.into());
            }
        };
        let port = match self.platform.alloc_unbound(be) {
            Ok(p) => p,
            Err(e) => {
                self.end_grant(urb_ring_ref);
                self.end_grant(conn_ring_ref);
                return Err(e.into());
            }
        };
        let mut c = Connection {
            urb: FrontRing::init(urb_page),
            conn: FrontRing::init(conn_page),
            urb_ring_ref,
            conn_ring_ref,
            port,
        };
        let dir = self.nodename.clone();
        if let Err(e) = publish_rings(&mut self.xs, &dir, urb_ring_ref, conn_ring_ref, port) {
            warn!("event=xenhcd_connect_failed nodename={dir} error={e}");
            self.conn = Some(c);
            self.destroy_rings();
            // xenbus_dev_fatal: the device goes to Closing.
            xenbus::switch_state(&mut self.xs, &dir, XenbusState::Closing)?;
            self.state = XenbusState::Closing;
            return Err(e.into());
        }
        for id in 0..CONN_RING_SIZE as u16 {
            c.conn
                .push_request(&UsbifConnRequest { id })
                .expect("a fresh conn ring has a slot per id");
        }
        let notify = c.conn.push_requests_and_check_notify();
        self.conn = Some(c);
        if notify {
            // The backend has not bound the channel yet, so this is a no-op in Xen, as it is
            // for xen-hcd; the backend scans the ring once it connects.
            self.platform.send(port)?;
        }
        xenbus::switch_state(&mut self.xs, &dir, XenbusState::Connected)?;
        self.state = XenbusState::Connected;
        info!(
            "event=xenhcd_connected nodename={dir} urb_ring_ref={urb_ring_ref} conn_ring_ref={conn_ring_ref} evtchn={port}"
        );
        Ok(())
    }

    /// `xenhcd_stop` and `xenhcd_destroy_rings`: every URB back with `-ESHUTDOWN` (or
    /// `-ECONNRESET` if unlinked), all grants ended, the channel closed.
    fn shut_down(&mut self) {
        let mut ids: Vec<usize> = (0..SHADOWS)
            .filter(|&i| matches!(self.shadow[i], Shadow::Submit(_)))
            .collect();
        ids.sort_by_key(|&i| match &self.shadow[i] {
            Shadow::Submit(f) => f.handle,
            _ => UrbHandle(0),
        });
        for id in ids {
            let Shadow::Submit(f) =
                core::mem::replace(&mut self.shadow[id], Shadow::Free { last_unlink: false })
            else {
                continue;
            };
            // xen-hcd checks the grants here too; the backend has had its Closing to let go.
            self.gnttab_done(id as u16, &f);
            let status = if f.unlinked {
                -errno::ECONNRESET
            } else {
                -errno::ESHUTDOWN
            };
            self.give_back(Completion::without_data(f.handle, status));
        }
        for id in 0..SHADOWS {
            self.shadow[id] = Shadow::Free { last_unlink: false };
        }
        self.free_ids = (0..SHADOWS as u16).rev().collect();
        while let Some(q) = self.pending_submit.pop_front() {
            self.give_back(Completion::without_data(q.handle, -errno::ESHUTDOWN));
        }
        self.pending_unlink.clear();
        self.destroy_rings();
    }

    fn destroy_rings(&mut self) {
        if let Some(c) = self.conn.take() {
            if let Err(e) = self.platform.close(c.port) {
                warn!("event=xenhcd_evtchn_close_failed port={} error={e}", c.port);
            }
            self.end_grant(c.urb_ring_ref);
            self.end_grant(c.conn_ring_ref);
        }
    }

    /// Ends a grant we no longer need; one the backend still holds is retried later.
    fn end_grant(&mut self, gref: GrantRef) {
        match self.platform.end_access(gref) {
            Ok(()) => {}
            Err(Errno::EBUSY) => self.deferred_grants.push(gref),
            Err(e) => warn!("event=xenhcd_end_access_failed gref={gref} error={e}"),
        }
    }

    fn retry_deferred_grants(&mut self) {
        let platform = &mut self.platform;
        self.deferred_grants
            .retain(|&g| platform.end_access(g) == Err(Errno::EBUSY));
    }

    /// Handles a notification (`xenhcd_int`): nothing at all after a protocol error;
    /// otherwise both rings until neither has more.
    pub fn handle_event(&mut self) {
        while self.error.is_none() && self.conn.is_some() {
            let more_urb = self.urb_request_done();
            let more_conn = self.conn_notify();
            if !(more_urb || more_conn) {
                break;
            }
        }
    }

    fn set_error(&mut self, e: ProtocolError) {
        warn!("event=xenhcd_error nodename={} {e}", self.nodename);
        self.error = Some(e);
    }

    /// `xenhcd_urb_request_done`: consumes URB responses; true if more arrived meanwhile.
    fn urb_request_done(&mut self) -> bool {
        loop {
            let Some(c) = self.conn.as_mut() else {
                return false;
            };
            let rsp = match c.urb.next_response() {
                Ok(Some(rsp)) => rsp,
                Ok(None) => break,
                Err(e) => {
                    self.set_error(overrun(e, true));
                    return false;
                }
            };
            let id = rsp.id;
            if usize::from(id) >= SHADOWS {
                self.set_error(ProtocolError::UrbRingData { id });
                return false;
            }
            let slot = &mut self.shadow[usize::from(id)];
            match core::mem::replace(slot, Shadow::Free { last_unlink: false }) {
                Shadow::Submit(f) => {
                    if !self.gnttab_done(id, &f) {
                        return false;
                    }
                    self.res_to_urb(&rsp, *f);
                }
                Shadow::Unlink => self.shadow[usize::from(id)] = Shadow::Free { last_unlink: true },
                Shadow::Free { last_unlink: true } => {
                    self.shadow[usize::from(id)] = Shadow::Free { last_unlink: true };
                    warn!(
                        "event=xenhcd_duplicate_unlink_response nodename={} id={id}",
                        self.nodename
                    );
                    continue;
                }
                Shadow::Free { last_unlink: false } => {
                    self.set_error(ProtocolError::IllegalRequestId { id });
                    return false;
                }
            }
            self.free_ids.push(id);
        }
        let Some(c) = self.conn.as_mut() else {
            return false;
        };
        match c.urb.final_check_for_responses() {
            Ok(more) => more,
            Err(e) => {
                self.set_error(overrun(e, true));
                false
            }
        }
    }

    /// `xenhcd_gnttab_done`: ends every grant of the request; one the backend still holds is
    /// the protocol error. Pages come back to the pool only when all their grants ended.
    fn gnttab_done(&mut self, id: u16, f: &InFlight<G::Page>) -> bool {
        let nr = usize::from(f.req.nr_buffer_segs) + iso_desc_segs(&f.req);
        let mut released = true;
        for seg in &f.req.seg[..nr] {
            // gnttab_try_end_foreign_access: refused while the backend maps or copies.
            if self.platform.grant_in_use(seg.gref) || self.platform.end_access(seg.gref).is_err() {
                self.deferred_grants.push(seg.gref);
                if released && self.error.is_none() {
                    self.set_error(ProtocolError::GrantNotReleased { id, gref: seg.gref });
                }
                released = false;
            }
        }
        if released {
            self.page_pool.extend(f.pages.iter().cloned());
        }
        released
    }

    /// `xenhcd_res_to_urb` and `xenhcd_giveback_urb`.
    fn res_to_urb(&mut self, rsp: &UsbifUrbResponse, f: InFlight<G::Page>) {
        let actual = usize::try_from(rsp.actual_length.max(0))
            .unwrap_or(0)
            .min(f.buffer_length);
        let status = if f.unlinked {
            -errno::ECONNRESET
        } else {
            translate_status(rsp.status)
        };
        let data = if f.direction == Direction::In && !f.discard_in_data {
            read_buffer(&f.pages, f.page_offset, actual)
        } else {
            Vec::new()
        };
        let buffer_pages = usize::from(f.req.nr_buffer_segs);
        let iso_packets = (0..f.iso_packets)
            .map(|i| {
                let mut d = UsbIsoPacketDescriptor::new_zeroed();
                let at = i * ISO_DESCRIPTOR_SIZE;
                f.pages[buffer_pages + at / PAGE_SIZE]
                    .1
                    .read(at % PAGE_SIZE, d.as_mut_bytes());
                d
            })
            .collect();
        self.pending_unlink.retain(|&h| h != f.handle);
        self.give_back(Completion {
            handle: f.handle,
            status,
            actual_length: actual as u32,
            data,
            start_frame: rsp.start_frame,
            error_count: rsp.error_count,
            iso_packets,
        });
    }

    fn give_back(&mut self, c: Completion) {
        self.stats.completed += 1;
        if c.status != 0 {
            self.stats.errors += 1;
        }
        self.stats.bytes += u64::from(c.actual_length);
        self.completed.push_back(c);
    }

    /// `xenhcd_conn_notify`: port changes, each slot lent again with its id.
    fn conn_notify(&mut self) -> bool {
        let num_ports = self.num_ports;
        loop {
            let Some(c) = self.conn.as_mut() else {
                return false;
            };
            let rsp = match c.conn.next_response() {
                Ok(Some(rsp)) => rsp,
                Ok(None) => break,
                Err(e) => {
                    self.set_error(overrun(e, false));
                    return false;
                }
            };
            let (portnum, speed) = (rsp.portnum, rsp.speed);
            if portnum < 1 || portnum > num_ports {
                self.set_error(ProtocolError::ConnRingData { portnum, speed });
                return false;
            }
            let current = &mut self.port_speed[usize::from(portnum - 1)];
            if *current != speed {
                if speed > USBIF_SPEED_HIGH {
                    self.set_error(ProtocolError::ConnRingData { portnum, speed });
                    return false;
                }
                *current = speed;
                info!(
                    "event=xenhcd_port_change nodename={} port={portnum} speed={speed}",
                    self.nodename
                );
                self.port_events.push_back(PortEvent {
                    port: portnum,
                    speed,
                });
            }
            c.conn
                .push_request(&UsbifConnRequest { id: rsp.id })
                .expect("the consumed response freed a slot");
        }
        let Some(c) = self.conn.as_mut() else {
            return false;
        };
        let more = c.conn.final_check_for_responses();
        let (notify, port) = (c.conn.push_requests_and_check_notify(), c.port);
        if notify {
            let _ = self.platform.send(port);
        }
        match more {
            Ok(more) => more,
            Err(e) => {
                self.set_error(overrun(e, false));
                false
            }
        }
    }

    /// The oldest URB given back, if any.
    pub fn take_completed(&mut self) -> Option<Completion> {
        self.completed.pop_front()
    }

    /// The oldest port change, if any.
    pub fn take_port_event(&mut self) -> Option<PortEvent> {
        self.port_events.pop_front()
    }

    /// The speed the backend last reported for `port` (`USBIF_SPEED_*`); None outside
    /// 1..=num-ports.
    pub fn port_speed(&self, port: u8) -> Option<u8> {
        (1..=self.num_ports)
            .contains(&port)
            .then(|| self.port_speed[usize::from(port - 1)])
    }

    /// The protocol error that stopped this frontend, if one did.
    pub fn error(&self) -> Option<ProtocolError> {
        self.error
    }

    /// Our xenbus state as we last wrote it.
    pub fn state(&self) -> XenbusState {
        self.state
    }

    /// Counters.
    pub fn stats(&self) -> Stats {
        self.stats
    }

    /// `num-ports` as read at probe.
    pub fn num_ports(&self) -> u8 {
        self.num_ports
    }

    /// `usb-ver` as read at probe.
    pub fn usb_ver(&self) -> u8 {
        self.usb_ver
    }

    /// URBs sent and not yet answered.
    pub fn in_flight(&self) -> usize {
        self.shadow
            .iter()
            .filter(|s| matches!(s, Shadow::Submit(_)))
            .count()
    }

    /// URBs waiting for a ring slot.
    pub fn queued(&self) -> usize {
        self.pending_submit.len()
    }

    /// Every grant we still hold: rings, in-flight buffers, and grants the backend kept at
    /// teardown. Empty once closed and released.
    pub fn grants(&self) -> Vec<GrantRef> {
        let rings = self
            .conn
            .iter()
            .flat_map(|c| [c.urb_ring_ref, c.conn_ring_ref]);
        let urbs = self.shadow.iter().flat_map(|s| match s {
            Shadow::Submit(f) => {
                let nr = usize::from(f.req.nr_buffer_segs) + iso_desc_segs(&f.req);
                f.req.seg[..nr].iter().map(|s| s.gref).collect()
            }
            _ => Vec::new(),
        });
        rings
            .chain(urbs)
            .chain(self.deferred_grants.iter().copied())
            .collect()
    }

    /// The URB ring's shared page, for tests that write raw requests.
    pub fn urb_ring_page(&self) -> Option<&G::Page> {
        self.conn.as_ref().map(|c| c.urb.page())
    }

    /// The conn ring's shared page.
    pub fn conn_ring_page(&self) -> Option<&G::Page> {
        self.conn.as_ref().map(|c| c.conn.page())
    }

    /// The grant references of the URB and conn rings.
    pub fn ring_refs(&self) -> Option<(GrantRef, GrantRef)> {
        self.conn
            .as_ref()
            .map(|c| (c.urb_ring_ref, c.conn_ring_ref))
    }

    /// Our end of the event channel.
    pub fn event_channel(&self) -> Option<EvtchnPort> {
        self.conn.as_ref().map(|c| c.port)
    }

    /// The platform (grants and event channels), e.g. to grant pages for raw requests.
    pub fn platform(&mut self) -> &mut G {
        &mut self.platform
    }

    /// The xenstore connection.
    pub fn xenstore(&mut self) -> &mut XenStore<T> {
        &mut self.xs
    }

    /// Our directory, `/local/domain/<domid>/device/vusb/<devid>`.
    pub fn nodename(&self) -> &str {
        &self.nodename
    }

    /// The backend's directory, as our `backend` key names it.
    pub fn backend_path(&self) -> &str {
        &self.otherend
    }

    /// The backend's domain.
    pub fn backend_id(&self) -> DomId {
        self.backend_id
    }
}

fn overrun(e: RingError, urb_ring: bool) -> ProtocolError {
    let (rsp_prod, rsp_cons) = match e {
        RingError::Overrun { prod, cons } => (prod, cons),
        RingError::Full => (0, 0),
    };
    if urb_ring {
        ProtocolError::UrbRingIndex { rsp_prod, rsp_cons }
    } else {
        ProtocolError::ConnRingIndex { rsp_prod, rsp_cons }
    }
}

/// ISO descriptor segments of a request we built (0 for other types).
fn iso_desc_segs(req: &UsbifUrbRequest) -> usize {
    let ty = (req.pipe >> USBIF_PIPE_TYPE_SHIFT) & USBIF_PIPE_TYPE_MASK;
    if ty == USBIF_PIPE_TYPE_ISOC {
        usize::from(u16::from_le_bytes([req.u[6], req.u[7]]))
    } else {
        0
    }
}

/// The first `len` bytes of a buffer that starts `offset` bytes into the first of `pages`.
fn read_buffer<P: SharedPage>(pages: &[(Gfn, P)], offset: usize, len: usize) -> Vec<u8> {
    let mut data = alloc::vec![0; len];
    let mut done = 0;
    while done < len {
        let at = offset + done;
        let bytes = (PAGE_SIZE - at % PAGE_SIZE).min(len - done);
        pages[at / PAGE_SIZE]
            .1
            .read(at % PAGE_SIZE, &mut data[done..done + bytes]);
        done += bytes;
    }
    data
}
